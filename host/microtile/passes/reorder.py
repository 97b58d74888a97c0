"""Graph pass: the operator order of a branchy graph (residual blocks, parallel
branches) that minimises the peak of live activation bytes.

An exact search over the graph's topological orders by dynamic programming on the set
of operators already run (the live bytes depend only on that set). Ties on the peak are
broken by the live bytes summed over the steps (in-place layers then find their input at
its last reader more often); per state only the best (peak, sum) prefix is kept, so the
peak is exact and the sum a heuristic. A graph with more states than MAX_STATES keeps its
order. Sizes are the planner's aligned bytes, so the
peak here is a lower bound of the arena the planner can reach for that order.
"""
from __future__ import annotations

from microtile.importer.ir import Graph, Operator
from microtile.passes.pipeline import copy_graph
from microtile.passes.planner import _aligned

MAX_STATES = 20000


def live_peak(graph: Graph, ops: list[Operator]) -> int:
    """Max over steps of the bytes of tensors alive at that step (inputs and outputs
    of the graph included)."""
    return live_profile(graph, ops)[0]


def live_profile(graph: Graph, ops: list[Operator]) -> tuple[int, int]:
    """(peak, sum over steps) of the live bytes."""
    size = _sizes(graph)
    last = {}
    for step, op in enumerate(ops):
        for i in op.inputs:
            if i in size:
                last[i] = step
    for i in graph.outputs:
        last[i] = len(ops)
    live = {i for i in graph.inputs if i in size}
    peak, total = sum(size[i] for i in live), 0
    for step, op in enumerate(ops):
        live |= {o for o in op.outputs if o in size}
        now = sum(size[i] for i in live)
        peak, total = max(peak, now), total + now
        live = {i for i in live if last.get(i, -1) > step}
    return peak, total


def _sizes(graph: Graph) -> dict[int, int]:
    return {t.index: _aligned(t.nbytes) for t in graph.tensors if not t.is_constant}


def reorder(graph: Graph) -> Graph:
    ops = graph.operators
    n = len(ops)
    size = _sizes(graph)
    producer = {o: k for k, op in enumerate(ops) for o in op.outputs}
    deps = [{producer[i] for i in op.inputs if i in producer} for op in ops]
    if all(deps[k] <= set(range(k)) and (k == 0 or k - 1 in deps[k]) for k in range(n)):
        return graph  # a chain: one order only
    readers: dict[int, set[int]] = {}
    for k, op in enumerate(ops):
        for i in op.inputs:
            if i in size:
                readers.setdefault(i, set()).add(k)
    keep = set(graph.outputs)
    tensors = {i for i in size if i in producer or i in graph.inputs}

    def live_after(done: frozenset) -> int:
        total = 0
        for i in tensors:
            made = i not in producer or producer[i] in done
            if made and (i in keep or not readers.get(i, set()) <= done):
                total += size[i]
        return total

    # best[done] = (peak so far, live bytes summed so far, order) over orders running exactly the ops in done
    start = frozenset()
    best = {start: (live_after(start), 0, [])}
    frontier = [start]
    for _ in range(n):
        nxt: dict[frozenset, tuple[int, int, list[int]]] = {}
        for done in frontier:
            peak, total, order = best[done]
            base = live_after(done)
            for k in range(n):
                if k in done or not deps[k] <= done:
                    continue
                after = done | {k}
                # during op k: what was live, plus its outputs
                during = base + sum(size[o] for o in ops[k].outputs if o in size)
                cand = (max(peak, during, live_after(after)), total + during, order + [k])
                if after not in nxt or cand[:2] < nxt[after][:2]:
                    nxt[after] = cand
        if len(nxt) > MAX_STATES:
            return graph
        best.update(nxt)
        frontier = list(nxt)
    full = frozenset(range(n))
    order = best[full][2]
    new_ops = [ops[k] for k in order]
    if live_profile(graph, new_ops) >= live_profile(graph, ops):
        return graph
    return copy_graph(graph, operators=new_ops)

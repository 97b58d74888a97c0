"""The arena plan: tensors that are alive at the same time never share bytes."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from microtile.importer.ir import Graph, Operator, Tensor
from microtile.passes.planner import plan_memory


def _chain_graph(sizes: list[int], skips: list[tuple[int, int]]) -> Graph:
    """A chain of ops, some also reading an earlier tensor (residual-style)."""
    tensors = [Tensor(i, f"t{i}", (s,), "int8") for i, s in enumerate(sizes)]
    ops = []
    for i in range(1, len(sizes)):
        extra = [a for a, b in skips if b == i and a < i - 1]
        ops.append(Operator(i - 1, "ADD", [i - 1, *extra], [i]))
    return Graph("chain", tensors, ops, [0], [len(sizes) - 1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=2, max_size=12), st.data())
def test_live_tensors_never_overlap(sizes, data):
    n = len(sizes)
    skips = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=4))
    g = _chain_graph(sizes, skips)
    plan = plan_memory(g, g.operators, g.inputs, g.outputs)
    ids = list(plan.offsets)
    for a in ids:
        assert plan.offsets[a] % 8 == 0
        assert plan.offsets[a] + plan.sizes[a] <= plan.arena_size
        for b in ids:
            if a >= b:
                continue
            la, lb = plan.lifetimes[a], plan.lifetimes[b]
            if la[1] < lb[0] or lb[1] < la[0]:
                continue
            ra = range(plan.offsets[a], plan.offsets[a] + plan.sizes[a])
            rb = range(plan.offsets[b], plan.offsets[b] + plan.sizes[b])
            assert not set(ra) & set(rb), (a, b, plan)
    # Never worse than giving every tensor its own bytes, never better than the largest op's in+out.
    assert plan.arena_size <= sum(plan.sizes.values())
    assert plan.arena_size >= max(plan.sizes[i] + plan.sizes[i + 1] for i in range(n - 1))


def test_chain_reuses_memory():
    g = _chain_graph([1000, 1000, 1000, 1000], [])
    plan = plan_memory(g, g.operators, g.inputs, g.outputs)
    assert plan.arena_size == 2000

"""Static activation-arena planning.

Every non-constant tensor of the device program, and every layer's kernel scratch
(im2col panels, band copies), is a buffer with a size and a lifetime (first write ..
last read, in schedule order). Two buffers may share bytes only if their lifetimes do
not overlap, or if an accepted alias says so: an alias fixes one buffer's offset
relative to another's (RESHAPE output = its input, an in-place ADD or conv written over
its input, a CONCATENATION input placed inside the output). Aliased buffers form a
group that is placed as one unit.

Two placers: a greedy one (largest group first, lowest offset that fits, like TFLM's
GreedyMemoryPlanner, tried in a few orders) and an exact one (OR-Tools CP-SAT, minimum
arena) under a time limit, which falls back to the greedy plan when it finds nothing
better in time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from microtile.importer.ir import Graph, Operator

ALIGN = 8  # bytes; keeps word loads aligned for every kernel
# CP-SAT's search budget in its deterministic time units (about seconds), before the
# greedy plan is kept: one worker and a fixed seed, so a model plans to the same
# offsets on every machine and load (two workers racing gave IC equal arenas at other
# offsets, other code alignment in flash, and estimated cycles 1.4 % apart)
EXACT_TIME_LIMIT = 5.0
WALL_TIME_CAP = 60.0  # seconds: a guard only, far above what the deterministic budget takes
# alias kinds whose member is written over its base (the rest share bytes read-only)
WRITES_OVER = ("add", "conv_2d", "depthwise_conv_2d", "fused")


@dataclass(frozen=True)
class Alias:
    """offset[member] = offset[base] + delta; ``overlap`` lets the two share bytes while
    both are alive (an in-place kernel), otherwise their bytes must still be disjoint."""
    member: object
    base: object
    delta: int
    kind: str  # "reshape", "add", "concat", "conv", "depthwise", ...
    overlap: bool = True


@dataclass
class MemoryPlan:
    offsets: dict[int, int]  # tensor index -> byte offset in the arena
    sizes: dict[int, int]  # tensor index -> bytes (aligned)
    lifetimes: dict[int, tuple[int, int]]  # tensor index -> (first step, last step)
    arena_size: int
    scratch: dict[int, tuple[int, int]] = field(default_factory=dict)  # step -> (offset, bytes)
    aliases: list[Alias] = field(default_factory=list)  # the accepted ones
    method: str = "greedy"  # "greedy", "exact" (proved optimal) or "exact-feasible" (time limit hit)
    layer_bound: int = 0  # max over layers of the bytes alive at that step without any sharing

    def all_offsets(self) -> dict:
        return {**self.offsets, **{("scratch", s): o for s, (o, _) in self.scratch.items()}}


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def tensor_lifetimes(graph: Graph, ops: list[Operator], inputs: list[int], outputs: list[int]) -> dict[int, tuple[int, int]]:
    """Step -1 is before the first operator (inputs written); len(ops) is after the
    last (outputs read)."""
    life: dict[int, list[int]] = {i: [-1, -1] for i in inputs}
    for step, op in enumerate(ops):
        for i in op.inputs:
            if i >= 0 and not graph.tensor(i).is_constant:
                life.setdefault(i, [step, step])[1] = step
        for i in op.outputs:
            life.setdefault(i, [step, step])
            life[i][1] = max(life[i][1], step)
    for i in outputs:
        life.setdefault(i, [-1, -1])[1] = len(ops)
    return {i: (a, b) for i, (a, b) in life.items()}


def _live_together(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return not (a[1] < b[0] or b[1] < a[0])


def layer_bound(graph: Graph, ops: list[Operator], inputs: list[int], outputs: list[int]) -> int:
    """The layer-by-layer bound: the largest sum of a layer's input and output tensors
    (every non-constant tensor a layer reads or writes, aligned), what a planner reaches
    without running any layer in place."""
    best = sum(_aligned(graph.tensor(i).nbytes) for i in set(inputs))
    for op in ops:
        ts = {i for i in op.inputs + op.outputs if i >= 0 and not graph.tensor(i).is_constant}
        best = max(best, sum(_aligned(graph.tensor(i).nbytes) for i in ts))
    return best


class _Groups:
    """Buffers tied by accepted aliases: key -> (group id, offset relative to the group)."""

    def __init__(self, keys, sizes: dict, lifetimes: dict):
        self.sizes, self.lifetimes = sizes, lifetimes
        self.of = {k: (k, 0) for k in keys}
        self.members = {k: [k] for k in keys}
        self.allowed: set[frozenset] = set()

    def _valid(self, members: dict) -> bool:
        ks = list(members)
        for x in range(len(ks)):
            for y in range(x + 1, len(ks)):
                a, b = ks[x], ks[y]
                if not _live_together(self.lifetimes[a], self.lifetimes[b]):
                    continue
                ra, rb = members[a], members[b]
                if ra < rb + self.sizes[b] and rb < ra + self.sizes[a] and frozenset((a, b)) not in self.allowed:
                    return False
        return True

    def add(self, alias: Alias) -> bool:
        """Merge the two groups if the result keeps every live pair apart (except the
        pairs an in-place alias allows); False leaves everything as it was."""
        if alias.member not in self.of or alias.base not in self.of or alias.delta % ALIGN:
            return False
        if alias.kind in WRITES_OVER and self.lifetimes[alias.base][1] != self.lifetimes[alias.member][0]:
            return False  # a layer may write over its input only where the input's lifetime ends
        gm, rm = self.of[alias.member]
        gb, rb = self.of[alias.base]
        pair = frozenset((alias.member, alias.base))
        if gm == gb:
            return rm == rb + alias.delta and (not alias.overlap or self._allow(pair, gm))
        shift = rb + alias.delta - rm  # moves the member's group into the base group's frame
        merged = {k: self.of[k][1] for k in self.members[gb]}
        merged.update({k: self.of[k][1] + shift for k in self.members[gm]})
        if alias.overlap:
            self.allowed.add(pair)
        if not self._valid(merged):
            self.allowed.discard(pair)
            return False
        low = min(merged.values())
        for k, r in merged.items():
            self.of[k] = (gb, r - low)
        self.members[gb] = list(merged)
        del self.members[gm]
        return True

    def _allow(self, pair: frozenset, g) -> bool:
        self.allowed.add(pair)
        if self._valid({k: self.of[k][1] for k in self.members[g]}):
            return True
        self.allowed.discard(pair)
        return False

    def span(self, g) -> int:
        return max(self.of[k][1] + self.sizes[k] for k in self.members[g])


def _greedy(groups: _Groups, order: list) -> dict:
    """Place whole groups, in the given order, at the lowest base where no member
    collides with a placed buffer it lives together with."""
    sizes, life = groups.sizes, groups.lifetimes
    offsets: dict = {}
    for g in order:
        members = groups.members[g]
        rel = {k: groups.of[k][1] for k in members}
        others = [(offsets[j], offsets[j] + sizes[j], j) for j in offsets]
        candidates = {0}
        for start, end, j in others:
            for k in members:
                if _live_together(life[k], life[j]) and end - rel[k] >= 0:
                    candidates.add(end - rel[k])
        for base in sorted(candidates):
            if all(not (_live_together(life[k], life[j]) and base + rel[k] < end and start < base + rel[k] + sizes[k])
                   for k in members for start, end, j in others):
                break
        for k in members:
            offsets[k] = base + rel[k]
    return offsets


def _arena(offsets: dict, sizes: dict) -> int:
    return max((offsets[k] + sizes[k] for k in offsets), default=0)


def _exact(groups: _Groups, upper: int, time_limit: float) -> tuple[dict | None, bool]:
    """CP-SAT: one base per group (in ALIGN units), every two buffers of different groups
    that live together kept apart, the arena minimised. (offsets or None, proved optimal)."""
    from ortools.sat.python import cp_model

    sizes, life = groups.sizes, groups.lifetimes
    model = cp_model.CpModel()
    unit = upper // ALIGN
    base = {}
    peak = model.NewIntVar(0, unit, "peak")
    for g in groups.members:
        span = _aligned(groups.span(g)) // ALIGN
        base[g] = model.NewIntVar(0, max(0, unit - span), f"b{len(base)}")
        model.Add(base[g] + span <= peak)
    keys = list(groups.of)
    for x in range(len(keys)):
        for y in range(x + 1, len(keys)):
            a, b = keys[x], keys[y]
            ga, gb = groups.of[a][0], groups.of[b][0]
            if ga == gb or not _live_together(life[a], life[b]):
                continue
            ra, rb = groups.of[a][1] // ALIGN, groups.of[b][1] // ALIGN
            sa, sb = sizes[a] // ALIGN, sizes[b] // ALIGN
            below = model.NewBoolVar("")
            model.Add(base[ga] + ra + sa <= base[gb] + rb).OnlyEnforceIf(below)
            model.Add(base[gb] + rb + sb <= base[ga] + ra).OnlyEnforceIf(below.Not())
    model.Minimize(peak)
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit
    solver.parameters.max_time_in_seconds = max(WALL_TIME_CAP, 4 * time_limit)
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, False
    offsets = {}
    for g, ms in groups.members.items():
        for k in ms:
            offsets[k] = solver.Value(base[g]) * ALIGN + groups.of[k][1]
    return offsets, status == cp_model.OPTIMAL


def plan_memory(graph: Graph, ops: list[Operator], inputs: list[int], outputs: list[int],
                scratch: dict[int, int] | None = None, aliases: list[Alias] = (),
                exact: bool = False, time_limit: float = EXACT_TIME_LIMIT, virtual: set[int] = frozenset(),
                extend: dict[int, int] | None = None) -> MemoryPlan:
    """``scratch``: step -> bytes of kernel working memory that layer needs (alive at
    that step only). ``virtual`` tensors take no bytes; ``extend`` keeps a tensor live
    until a later step. ``aliases`` are tried in order; those that would let two live
    buffers share bytes they may not share are dropped (``plan.aliases`` keeps the rest)."""
    lifetimes = tensor_lifetimes(graph, ops, inputs, outputs)
    for i, step in (extend or {}).items():  # read later than its operators say (a fused layer)
        lifetimes[i] = (lifetimes[i][0], max(lifetimes[i][1], step))
    # virtual: never materialised (the middle of a fused pair): no bytes
    sizes: dict = {i: 0 if i in virtual else _aligned(graph.tensor(i).nbytes) for i in lifetimes}
    life: dict = dict(lifetimes)
    for step, n in (scratch or {}).items():
        if n > 0:
            sizes[("scratch", step)] = _aligned(n)
            life[("scratch", step)] = (step, step)
    groups = _Groups(list(sizes), sizes, life)
    accepted = [a for a in aliases if groups.add(a)]

    def first(g):
        return min(life[k][0] for k in groups.members[g])

    orders = [
        sorted(groups.members, key=lambda g: (-groups.span(g), first(g), str(g))),  # TFLM's order
        sorted(groups.members, key=lambda g: (first(g), -groups.span(g), str(g))),  # by first use
        sorted(groups.members, key=lambda g: (-groups.span(g) * (1 + max(life[k][1] for k in groups.members[g])
                                                                 - first(g)), str(g))),  # by size x lifetime
    ]
    best = min((_greedy(groups, o) for o in orders), key=lambda offs: _arena(offs, sizes))
    method = "greedy"
    if exact and len(groups.members) > 1:
        found, optimal = _exact(groups, _arena(best, sizes), time_limit)
        if found is not None and _arena(found, sizes) <= _arena(best, sizes):
            best, method = found, ("exact" if optimal else "exact-feasible")
    tensors = {k: v for k, v in best.items() if not isinstance(k, tuple)}
    steps = {k[1]: (v, sizes[k]) for k, v in best.items() if isinstance(k, tuple)}
    return MemoryPlan(tensors, {k: sizes[k] for k in tensors}, lifetimes, _arena(best, sizes), steps, accepted,
                      method, layer_bound(graph, ops, inputs, outputs))

"""Static activation-arena planning.

Every non-constant tensor of the device program gets a byte offset in one arena.
Two tensors may share bytes only if their lifetimes (first write .. last read, in
schedule order) do not overlap. The plan here is greedy (largest tensor first, lowest
offset that fits), like TFLM's GreedyMemoryPlanner.
"""
from __future__ import annotations

from dataclasses import dataclass

from microtile.importer.ir import Graph, Operator

ALIGN = 8  # bytes; keeps word loads aligned for every kernel


@dataclass
class MemoryPlan:
    offsets: dict[int, int]  # tensor index -> byte offset in the arena
    sizes: dict[int, int]  # tensor index -> bytes (aligned)
    lifetimes: dict[int, tuple[int, int]]  # tensor index -> (first step, last step)
    arena_size: int


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


def plan_memory(graph: Graph, ops: list[Operator], inputs: list[int], outputs: list[int]) -> MemoryPlan:
    lifetimes = tensor_lifetimes(graph, ops, inputs, outputs)
    sizes = {i: _aligned(graph.tensor(i).nbytes) for i in lifetimes}
    order = sorted(lifetimes, key=lambda i: (-sizes[i], lifetimes[i][0], i))
    placed: list[int] = []
    offsets: dict[int, int] = {}
    for i in order:
        first, last = lifetimes[i]
        busy = sorted(
            (offsets[j], offsets[j] + sizes[j]) for j in placed
            if not (lifetimes[j][1] < first or last < lifetimes[j][0])
        )
        offset = 0
        for start, end in busy:
            if offset + sizes[i] <= start:
                break
            offset = max(offset, end)
        offsets[i] = offset
        placed.append(i)
    arena = max((offsets[i] + sizes[i] for i in offsets), default=0)
    return MemoryPlan(offsets, sizes, lifetimes, arena)

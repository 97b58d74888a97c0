"""Graph pass: fused depthwise tiling (FDT, arXiv 2303.17878).

A path is a chain of layers that keeps channels apart: it starts at a CONV_2D or
FULLY_CONNECTED, passes through layers that work on each channel alone (depthwise
conv with depth multiplier 1, unary activations, pooling, MEAN over H and W, PAD and
RESHAPE that keep the channel axis last) and ends at a CONV_2D or FULLY_CONNECTED.
Split into P partitions of the channels, partition p runs the start layer on output
channels [c0, c1) (sliced weights, bias and per-channel scales: an ordinary layer),
the middle layers on those channels only, and the end layer's share of its sums over
input channels [c0, c1) added into one int32 accumulator (ops/partial.py); one
requantisation at the end gives the end layer's output. Integer sums are exact, so the
result is bit-exact with TFLM on the original model, and no tensor of the path is ever
whole: the peak is about the start input + two partition tensors + the accumulator.

P is the divisor of the channel count (2..MAX_PARTS) with the lowest live-bytes peak
(ties: the fewest partitions), in partitions a multiple of CHANNEL_GROUP wide where the
channels allow; a path is applied only where it lowers the peak of the whole graph.
Its predicted extra instructions (path_cost, on the layers' cost models) go to the RAM
search, which weighs them. The partitions run in order, start to end, where the path
started.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from microtile.importer.ir import Graph, Operator, Quant, Tensor
from microtile.passes.pipeline import copy_graph
from microtile.passes.planner import _aligned, tensor_lifetimes

ENDS = ("CONV_2D", "FULLY_CONNECTED")  # also the starts
UNARY = ("RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "QUANTIZE")
POOLS = ("AVERAGE_POOL_2D", "MAX_POOL_2D")
MAX_PARTS = 16
# The optimised kernels work on channels in groups of 4 (a remainder runs scalar: QEMU,
# fdt_head, 96 channels in 16 partitions of 6 took 4.96 M instructions, in 12 of 8 3.34 M):
# partitions are a multiple of this wide where the channel count allows.
CHANNEL_GROUP = 4
# Predicted extra instructions beyond the layers' own cost models: per extra partition,
# the start layer's input packed again (QEMU, fdt_head: ~30,000 per extra 1x1 conv call
# over a 6,400 B input) and a call per sliced layer; per partition, the accumulator's
# read-modify-write.
REPACK_BYTE = 5
CALL = 500
ACC_RMW = 4


@dataclass
class Path:
    start: Operator
    middle: list[Operator]
    end: Operator
    channels: int

    @property
    def ops(self) -> list[Operator]:
        return [self.start, *self.middle, self.end]

    def describe(self) -> str:
        return " -> ".join(f"#{op.index} {op.opcode}" for op in self.ops)


def _readers(graph: Graph) -> dict[int, list[Operator]]:
    readers: dict[int, list[Operator]] = {}
    for op in graph.operators:
        for i in op.inputs:
            if i >= 0:
                readers.setdefault(i, []).append(op)
    return readers


def _int8(t: Tensor) -> bool:
    return t.dtype == "int8" and t.quant is not None and t.quant.scale.size == 1


def _as_end(op: Operator, graph: Graph, channels: int) -> str | None:
    """Why op cannot end a path over ``channels`` channels (None: it can)."""
    x, f, y = graph.tensor(op.inputs[0]), graph.tensor(op.inputs[1]), graph.tensor(op.outputs[0])
    if "microtile_prune" in op.options:
        return "a pruned layer (passes/approx.py)"
    if not f.is_constant or not _int8(y):
        return "not constant int8 weights and an int8 output"
    depth = f.shape[3] if op.opcode == "CONV_2D" else f.shape[1]
    if x.shape[-1] != channels or depth != channels:
        return f"reads {depth} channels per pixel, not the path's {channels}"
    return None


def _as_middle(op: Operator, graph: Graph, channels: int) -> str | None:
    """Why op cannot pass a path's partitions on (None: it can)."""
    x, y = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    if op.opcode == "DEPTHWISE_CONV_2D" and graph.tensor(op.inputs[1]).shape[3] != x.shape[-1]:
        return "has a depth multiplier other than 1"
    if not (_int8(x) and _int8(y)) or y.shape[-1] != channels or x.shape[-1] != channels:
        return "keeps no channels on the last axis of int8 tensors"
    if op.opcode == "DEPTHWISE_CONV_2D":
        return "a pruned layer (passes/approx.py)" if "microtile_prune" in op.options else None
    if op.opcode in UNARY or op.opcode in POOLS or op.opcode == "RESHAPE":
        return None
    if op.opcode == "MEAN":
        axes = np.asarray(graph.tensor(op.inputs[1]).data).reshape(-1) % len(x.shape)
        return "reduces the channel axis" if len(x.shape) - 1 in axes else None
    if op.opcode in ("PAD", "PADV2"):
        pads = np.asarray(graph.tensor(op.inputs[1]).data).reshape(-1, 2)
        return "pads the channel axis" if pads[-1].any() else None
    return "is not a layer partitions pass through (depthwise, unary activation, pool, MEAN, PAD, RESHAPE)"


def discover(graph: Graph) -> tuple[list[Path], dict[int, str]]:
    """The paths of the graph, and why each other CONV_2D / FULLY_CONNECTED starts none
    (operator index -> one line)."""
    readers = _readers(graph)
    outputs = set(graph.outputs)
    paths, rejected = [], {}
    for start in graph.operators:
        if start.opcode not in ENDS or "fdt" in start.options:
            continue
        t = start.outputs[0]
        channels = graph.tensor(t).shape[-1]
        middle: list[Operator] = []
        why = "a pruned layer (passes/approx.py)" if "microtile_prune" in start.options else None
        while why is None:
            users = readers.get(t, [])
            if t in outputs or len(users) != 1:
                why = f"tensor {graph.tensor(t).name!r} is " + ("a graph output" if t in outputs else
                                                               f"read by {len(users)} operators")
                break
            op = users[0]
            if op.inputs[0] != t:
                why = f"#{op.index} {op.opcode} reads it as input {op.inputs.index(t)}, not as its data input"
            elif op.opcode in ENDS:
                why = _as_end(op, graph, channels)
                if why is None:
                    paths.append(Path(start, middle, op, channels))
                    break
                why = f"ends at #{op.index} {op.opcode}, which {why}"
            else:
                reason = _as_middle(op, graph, channels)
                if reason is not None:
                    why = f"#{op.index} {op.opcode} {reason}"
                else:
                    middle.append(op)
                    t = op.outputs[0]
        if why is not None:
            rejected[start.index] = why
    return paths, rejected


# ---------------------------------------------------------------- the rewrite

class _Builder:
    """New tensors and operators of a rewrite (appended: the graph's indices stay valid)."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.tensors = list(graph.tensors)
        self.next_op = max((op.index for op in graph.operators), default=-1) + 1

    def tensor(self, like: Tensor, suffix: str, **changes) -> int:
        index = len(self.tensors)
        self.tensors.append(replace(like, index=index, name=f"{like.name}/{suffix}", **changes))
        return index

    def constant(self, like: Tensor, suffix: str, data: np.ndarray, channels: slice | None = None,
                 plain: bool = False) -> int:
        """A slice of a constant, its per-channel quantisation sliced with it (``channels``),
        or (plain) a new unquantised one named after it."""
        quant = None if plain else like.quant
        if quant is not None and quant.scale.size > 1 and channels is not None:
            quant = Quant(quant.scale[channels], quant.zero_point[channels], quant.axis)
        return self.tensor(like, suffix, shape=tuple(data.shape), dtype=data.dtype.name,
                           data=np.ascontiguousarray(data), quant=quant)

    def op(self, opcode: str, inputs: list[int], outputs: list[int], options: dict) -> Operator:
        self.next_op += 1
        return Operator(self.next_op - 1, opcode, inputs, outputs, options)


def _slice_layer(b: _Builder, op: Operator, x: int, part: slice, tag: dict, by_output: bool) -> tuple[Operator, int]:
    """op on channels ``part`` of its output (x: the partition's input); returns the
    sliced operator and its output tensor."""
    g = b.graph
    y = g.tensor(op.outputs[0])
    n = part.stop - part.start
    inputs = [x]
    for k, i in enumerate(op.inputs[1:], start=1):
        t = g.tensor(i) if i >= 0 else None
        if t is None or not t.is_constant:
            inputs.append(i)
        elif by_output and k == 1:  # conv OHWI / FC [out, in] weights: output channels on axis 0
            inputs.append(b.constant(t, f"fdt{part.start}", t.data[part], channels=part))
        elif op.opcode == "DEPTHWISE_CONV_2D" and k == 1:  # 1HWC: channels last
            inputs.append(b.constant(t, f"fdt{part.start}", t.data[..., part], channels=part))
        elif k == 2 and op.opcode in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"):  # bias
            inputs.append(b.constant(t, f"fdt{part.start}", t.data[part], channels=part))
        elif op.opcode == "RESHAPE" and k == 1:  # the new shape, channels last
            inputs.append(b.constant(t, f"fdt{part.start}", np.asarray(y.shape[:-1] + (n,), dtype=t.dtype)))
        else:  # PAD paddings, MEAN axes: the same for every partition
            inputs.append(i)
    options = {**op.options, "fdt": tag}
    if op.opcode == "RESHAPE" and "new_shape" in options:
        options["new_shape"] = list(y.shape[:-1] + (n,))
    out = b.tensor(y, f"fdt{part.start}", shape=tuple(y.shape[:-1]) + (n,))
    return b.op(op.opcode, inputs, [out], options), out


def _end_constants(path: Path, graph: Graph) -> tuple[np.ndarray, np.ndarray, dict]:
    """The end layer's multipliers, shifts and the options its partial ops share."""
    from microtile.ops import fused_activation_range, kernel_for

    end = path.end
    p = kernel_for(end).params(end, graph)
    y = graph.tensor(end.outputs[0])
    lo, hi = fused_activation_range(end, y)
    if end.opcode == "CONV_2D":
        shared = {k: v for k, v in end.options.items() if k != "fused_activation_function"}
        shared["in_off"] = -p["in_zp"]
    else:
        shared = {"in_off": p["in_off"], "w_off": p["w_off"]}
    req = {"out_zp": y.zero_point, "act_min": int(lo), "act_max": int(hi)}
    return np.asarray(p["mult"], dtype=np.int32), np.asarray(p["shift"], dtype=np.int32), {**shared, "requant": req}


def partition_ops(path: Path, graph: Graph, parts: int, b: _Builder) -> list[Operator]:
    """The operators replacing the path, split into ``parts`` partitions."""
    end = path.end
    mult, shift, shared = _end_constants(path, graph)
    req = shared.pop("requant")
    y = graph.tensor(end.outputs[0])
    w = graph.tensor(end.inputs[1])
    bias = end.inputs[2] if len(end.inputs) > 2 else -1
    step = path.channels // parts
    ops: list[Operator] = []
    acc = bias
    for k in range(parts):
        part = slice(k * step, (k + 1) * step)
        tag = {"path": path.start.index, "of": path.start.index, "part": k, "parts": parts}
        op, t = _slice_layer(b, path.start, path.start.inputs[0], part, tag, by_output=True)
        ops.append(op)
        for m in path.middle:
            op, t = _slice_layer(b, m, t, part, {**tag, "of": m.index}, by_output=False)
            ops.append(op)
        wk = b.constant(w, f"fdt{part.start}", w.data[..., part])  # input channels on the last axis
        out = b.tensor(y, f"acc{k}", dtype="int32", quant=None)
        opcode = "MT_PARTIAL_CONV" if end.opcode == "CONV_2D" else "MT_PARTIAL_FC"
        ops.append(b.op(opcode, [t, wk, acc], [out], {**shared, "first": k == 0, "fdt": {**tag, "of": end.index}}))
        acc = out
    m, s = (b.constant(w, name, v, plain=True) for name, v in (("fdt_mult", mult), ("fdt_shift", shift)))
    ops.append(b.op("MT_REQUANT_ACC", [acc, m, s], [end.outputs[0]],
                    {**req, "fdt": {"path": path.start.index, "of": end.index, "part": parts, "parts": parts,
                                    "extra": 0.0}}))
    return ops


def apply_path(graph: Graph, path: Path, parts: int) -> Graph:
    """A new graph with the path split into ``parts`` partitions (run where it started)."""
    if parts < 1 or path.channels % parts:
        raise ValueError(f"{parts} partitions do not divide {path.channels} channels")
    b = _Builder(graph)
    new = partition_ops(path, graph, parts, b)
    on_path = {id(op) for op in path.ops}
    ops: list[Operator] = []
    for op in graph.operators:
        if op is path.start:
            ops.extend(new)
        elif id(op) not in on_path:
            ops.append(op)
    return copy_graph(graph, tensors=b.tensors, operators=ops)


# ---------------------------------------------------------------- choosing paths and partitions

# the in-place techniques live_profile allows for: opcode -> RamConfig field
IN_PLACE = {"CONV_2D": "conv_inplace", "DEPTHWISE_CONV_2D": "depthwise_inplace", "ADD": "add_inplace"}


def live_profile(graph: Graph, config=None) -> list[int]:
    """Bytes alive at each step (the planner's lifetimes and aligned sizes). With a
    RamConfig, roughly what its in-place techniques leave (passes/inplace.py): a layer
    written over an input that ends there costs the larger of the two, not their sum; a
    1x1 conv fused with the depthwise reading it has no middle tensor. Splitting a path
    takes those chances from its layers, so FDT must beat them, not the plain peak."""
    ops = graph.operators
    life = tensor_lifetimes(graph, ops, graph.inputs, graph.outputs)
    size = {i: _aligned(graph.tensor(i).nbytes) for i in life}
    profile = [0] * (len(ops) + 2)  # index step + 1: step -1 is the inputs, len(ops) the outputs
    for i, (a, b) in life.items():
        for s in range(a + 1, b + 2):
            profile[s] += size[i]
    if config is None:
        return profile
    readers = _readers(graph)
    kept = set(graph.outputs) | (set() if config.input_inplace else set(graph.inputs))
    for step, op in enumerate(ops):
        x, y = (op.inputs[0] if op.inputs else -1), op.outputs[0]
        if x not in life or y not in life:
            continue
        prev = ops[step - 1] if step else None
        if config.fuse and op.opcode == "DEPTHWISE_CONV_2D" and prev is not None and prev.outputs[0] == x \
                and prev.opcode == "CONV_2D" and graph.tensor(prev.inputs[1]).shape[1:3] == (1, 1) \
                and len(readers[x]) == 1 and x not in kept:
            profile[step] -= size[x]
            profile[step + 1] -= size[x]
        elif getattr(config, IN_PLACE.get(op.opcode, ""), False) and life[x][1] == step and x not in kept:
            profile[step + 1] -= min(size[x], size[y])
    return profile


def _score(profile: list[int]) -> tuple[int, int]:
    """(peak, steps at the peak): fewer steps at the same peak lets another path lower it."""
    peak = max(profile)
    return peak, profile.count(peak)


def predicted_instructions(graph: Graph, ops: list[Operator]) -> float:
    """The layers' cost models (ram_search.baseline_instructions, no board)."""
    from types import SimpleNamespace

    from microtile.passes.ram_search import baseline_instructions

    return baseline_instructions(SimpleNamespace(graph=graph, device_ops=ops), None)


def path_cost(graph: Graph, path: Path, new: Graph, parts: int) -> float:
    """Predicted instructions the path's partitions add to the path run whole."""
    mine = [op for op in new.operators if op.options.get("fdt", {}).get("path") == path.start.index]
    start_in = graph.tensor(path.start.inputs[0]).nbytes
    acc = graph.tensor(path.end.outputs[0]).size
    return (predicted_instructions(new, mine) - predicted_instructions(graph, path.ops)
            + (parts - 1) * (REPACK_BYTE * start_in + CALL * len(path.ops)) + parts * ACC_RMW * acc)


def extra_instructions(graph: Graph) -> float:
    """The predicted instructions the graph's FDT paths add (ram_search weighs them)."""
    return sum(op.options["fdt"]["extra"] for op in graph.operators if op.opcode == "MT_REQUANT_ACC")


def partition_counts(channels: int, max_parts: int = MAX_PARTS) -> list[int]:
    """P in 2..max_parts dividing the channels, into partitions a whole number of channel
    groups wide where the channels allow."""
    counts = [p for p in range(2, min(max_parts, channels) + 1) if channels % p == 0]
    grouped = [p for p in counts if channels // p % CHANNEL_GROUP == 0]
    return grouped or counts


def fdt(graph: Graph, config=None, max_parts: int = MAX_PARTS) -> Graph:
    """Apply, one at a time, the path and partition count that lower the graph's peak
    most (fewer partitions break ties), until none does; the graph itself when none
    lowers its peak. ``config``: the RamConfig whose in-place techniques to allow for."""
    current, profile = graph, live_profile(graph, config)
    while True:
        score = _score(profile)
        at = {id(op): step for step, op in enumerate(current.operators)}
        best = None  # ((peak, steps at it), partitions, graph, path, profile)
        for path in discover(current)[0]:
            first, last = at[id(path.start)], at[id(path.end)]
            if max(profile[first + 1:last + 2]) < score[0]:
                continue  # the peak is elsewhere: splitting this path cannot lower it
            for parts in partition_counts(path.channels, max_parts):
                cand = apply_path(current, path, parts)
                cand_profile = live_profile(cand, config)
                key = _score(cand_profile)
                if key < score and (best is None or (key, parts) < best[:2]):
                    best = (key, parts, cand, path, cand_profile)
        if best is None:
            break
        _, parts, cand, path, profile = best
        requant = next(op for op in cand.operators
                       if op.opcode == "MT_REQUANT_ACC" and op.options["fdt"]["path"] == path.start.index)
        requant.options["fdt"]["extra"] = path_cost(current, path, cand, parts)  # its options are this rewrite's own
        current = cand
    return current if max(profile) < max(live_profile(graph, config)) else graph

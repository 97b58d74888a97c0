"""Structured channel pruning (issue 10): remove whole channels of a tensor between a
producer (CONV_2D / FULLY_CONNECTED) and its matmul-shaped consumers.

A channel c of the producer's output is removed from every op on the way: the
producer's output channel c (weight row, bias, per-channel scale), channel c of each
per-channel op in between (depthwise with multiplier 1, activations, pooling, reshapes
that keep the channel as the last axis) and input channel c of each consumer. The
result is a smaller ordinary int8 network that the normal (specialised) kernels run.
Removing c is, bit for bit, the same network as zeroing the consumers' weights of c:
the consumer's kept input-channel weights are then refit by least squares to its exact
pre-activation accumulator on calibration activations (re-quantised to int8 with the
existing per-channel scales), the mean change folded into the bias, as
approx.compensated_weights / bias_correction do for masks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from microtile.errors import MicrotileError
from microtile.importer.ir import Graph, Operator, Quant

PER_CHANNEL = {"RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH", "AVERAGE_POOL_2D", "MAX_POOL_2D"}
MATMUL = ("CONV_2D", "FULLY_CONNECTED")


@dataclass
class Group:
    producer: int                 # op index of the CONV_2D / FULLY_CONNECTED producing the channels
    tensor: int                   # its output tensor
    channels: int
    chain: list[int] = field(default_factory=list)      # per-channel ops between, in graph order
    consumers: list[int] = field(default_factory=list)  # CONV_2D / FULLY_CONNECTED reading the channels

    @property
    def ops(self) -> set[int]:
        return {self.producer, *self.chain, *self.consumers}


def _readers(graph: Graph) -> dict[int, list[Operator]]:
    r: dict[int, list[Operator]] = {}
    for op in graph.operators:
        for i in op.inputs:
            if i >= 0:
                r.setdefault(i, []).append(op)
    return r


def find_groups(graph: Graph) -> list[Group]:
    """Every prunable channel group (module doc); anything else on the way (ADD,
    CONCATENATION, a layout-changing RESHAPE, a graph output, shared weights) skips it."""
    readers = _readers(graph)
    groups = []
    for op in graph.operators:
        if op.opcode in MATMUL:
            g = _follow(graph, op, readers)
            if g is not None:
                groups.append(g)
    return groups


def _own_constants(op: Operator, readers, first: int = 1) -> bool:
    return all(i < 0 or readers.get(i, []) == [op] for i in op.inputs[first:])


def _follow(graph: Graph, op: Operator, readers) -> Group | None:
    out = graph.tensor(op.outputs[0])
    w = graph.tensor(op.inputs[1])
    if len(op.outputs) != 1 or w.data is None or w.dtype != "int8" or out.dtype != "int8" \
            or not _own_constants(op, readers):
        return None
    c = int(out.shape[-1])
    if c < 2 or int(w.shape[0]) != c:
        return None
    group = Group(op.index, op.outputs[0], c)
    frontier = [op.outputs[0]]
    while frontier:
        t = frontier.pop()
        tt = graph.tensor(t)
        if t in graph.outputs or not readers.get(t) or int(tt.shape[-1]) != c \
                or (tt.quant is not None and tt.quant.per_channel):
            return None
        for r in readers[t]:
            if r.inputs[0] != t or t in r.inputs[1:] or len(r.outputs) != 1:
                return None
            if r.opcode in MATMUL:
                rw = graph.tensor(r.inputs[1])
                in_ch = rw.shape[-1] if r.opcode == "CONV_2D" else rw.shape[1]
                if rw.data is None or rw.dtype != "int8" or int(in_ch) != c or not _own_constants(r, readers):
                    return None
                if r.opcode == "FULLY_CONNECTED" and int(np.prod(tt.shape[1:])) != c:
                    return None  # an FC over a flattened image: its input mixes pixels and channels
                group.consumers.append(r.index)
                continue
            if r.opcode == "DEPTHWISE_CONV_2D":
                rw = graph.tensor(r.inputs[1])
                if r.options.get("depth_multiplier", 1) != 1 or rw.data is None or int(rw.shape[-1]) != c \
                        or not _own_constants(r, readers):
                    return None
            elif r.opcode == "RESHAPE":
                if int(graph.tensor(r.outputs[0]).shape[-1]) != c or not _own_constants(r, readers):
                    return None
            elif r.opcode not in PER_CHANNEL:
                return None
            group.chain.append(r.index)
            frontier.append(r.outputs[0])
    if not group.consumers:
        return None
    pos = {o.index: i for i, o in enumerate(graph.operators)}
    group.chain.sort(key=pos.get)
    return group


# ---------------------------------------------------------------- the smaller network

def check_removed(group: Group, removed) -> np.ndarray:
    r = np.asarray(removed)
    if r.ndim != 1 or not all(type(v) in (int, np.int64) for v in r.tolist()) or \
            len(set(r.tolist())) != r.size or np.any((r < 0) | (r >= group.channels)) or r.size >= group.channels:
        raise MicrotileError(f"channel group of operator {group.producer}: removed channels must be distinct "
                             f"integers in [0, {group.channels}) leaving at least one")
    return r.astype(np.int64)


def prune_channels(graph: Graph, groups: list[Group], removed: dict[int, np.ndarray],
                   weights: dict[int, np.ndarray] | None = None,
                   bias_delta: dict[int, np.ndarray] | None = None) -> Graph:
    """A new graph with removed[producer] channels of each group taken out of every
    tensor, weight, bias and per-channel quantisation along it. weights: consumer op
    index -> its int8 weights in the original shape (refit, zero at the removed input
    channels); bias_delta: consumer op index -> int32 per output channel, added first."""
    out = copy.copy(graph)
    out.tensors = list(graph.tensors)
    out.operators = list(graph.operators)
    copied: set[int] = set()
    pos = {o.index: i for i, o in enumerate(out.operators)}

    def edit(i: int):
        if i not in copied:
            out.tensors[i] = copy.copy(out.tensors[i])
            copied.add(i)
        return out.tensors[i]

    for i, w in (weights or {}).items():
        t = edit(out.operators[pos[i]].inputs[1])
        t.data = np.asarray(w, dtype=np.int8).reshape(t.shape)
    for i, d in (bias_delta or {}).items():
        op = out.operators[pos[i]]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            t = edit(op.inputs[2])
            t.data = np.clip(t.data.astype(np.int64) + d, -2 ** 31, 2 ** 31 - 1).astype(np.int32)

    def take(i: int, axis: int, keep: np.ndarray) -> None:
        t = edit(i)
        axis %= len(t.shape)
        if t.data is not None:
            t.data = np.take(t.data, keep, axis=axis)
        t.shape = tuple(len(keep) if a == axis else int(s) for a, s in enumerate(t.shape))
        q = t.quant
        if q is not None and q.per_channel and q.axis == axis:
            t.quant = Quant(q.scale[keep], q.zero_point[keep], q.axis)

    for g in groups:
        r = removed.get(g.producer)
        if r is None or len(r) == 0:
            continue
        keep = np.setdiff1d(np.arange(g.channels), check_removed(g, r))
        p = out.operators[pos[g.producer]]
        take(p.inputs[1], 0, keep)
        if len(p.inputs) > 2 and p.inputs[2] >= 0:
            take(p.inputs[2], 0, keep)
        take(p.outputs[0], -1, keep)
        for i in g.chain:
            op = out.operators[pos[i]]
            if op.opcode == "DEPTHWISE_CONV_2D":
                take(op.inputs[1], -1, keep)
                if len(op.inputs) > 2 and op.inputs[2] >= 0:
                    take(op.inputs[2], 0, keep)
            elif op.opcode == "RESHAPE":
                op = copy.copy(op)
                op.options = dict(op.options)
                if "new_shape" in op.options:
                    op.options["new_shape"] = [*list(op.options["new_shape"])[:-1], len(keep)]
                out.operators[pos[i]] = op
                if len(op.inputs) > 1 and op.inputs[1] >= 0:
                    s = edit(op.inputs[1])
                    s.data = np.asarray(s.data).copy()
                    s.data.reshape(-1)[-1] = len(keep)
            take(op.outputs[0], -1, keep)
        for i in g.consumers:
            op = out.operators[pos[i]]
            take(op.inputs[1], -1 if op.opcode == "CONV_2D" else 1, keep)
    return out


# ---------------------------------------------------------------- significance and refit

@dataclass
class ConsumerFit:
    """A consumer's exact [N, K] weights and calibration statistics of its input."""
    op: int
    w2d: np.ndarray        # int8 [N, K]
    positions: np.ndarray  # [C, taps]: the K indices of each input channel
    gram: np.ndarray       # [K, K] of the centred input rows
    mean: np.ndarray       # [K] mean of x - zp
    weight: np.ndarray     # [N]: squared accumulator LSB in output LSBs, so errors add across channels


def consumer_fit(graph: Graph, op: Operator, x: np.ndarray, rows: int = 16384) -> ConsumerFit:
    from microtile.passes import approx

    w2d = approx.weight_matrix(op, graph)
    layer = approx.Layer(op, w2d, 1, 1, 1, False)
    sample = approx.sample_rows(layer, graph, x, rows=rows)
    mean = approx.input_statistics(op, graph, x)[0]
    dev = sample - sample.mean(axis=0)
    c = int(graph.tensor(op.inputs[0]).shape[-1])
    taps = w2d.shape[1] // c
    positions = np.arange(taps)[None, :] * c + np.arange(c)[:, None]  # OHWI: k = tap * C + c
    wq = graph.tensor(op.inputs[1]).quant
    ws = np.broadcast_to(np.asarray(wq.scale, dtype=np.float64), (w2d.shape[0],)) if wq is not None \
        else np.ones(w2d.shape[0])
    lsb = graph.tensor(op.inputs[0]).scale * ws / graph.tensor(op.outputs[0]).scale
    return ConsumerFit(op.index, w2d, positions, dev.T @ dev / dev.shape[0], mean, lsb ** 2)


def _solve(fit: ConsumerFit, kept_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(least-squares kept weights [N, |kept|], residual error per output channel)."""
    w = fit.w2d.astype(np.float64)
    g = fit.gram
    b = g[kept_k] @ w.T
    x = np.linalg.lstsq(g[np.ix_(kept_k, kept_k)], b, rcond=None)[0]
    total = np.einsum("nk,kj,nj->n", w, g, w)
    return x.T, total - (b * x).sum(axis=0)


def reconstruction_error(fits: list[ConsumerFit], keep: np.ndarray) -> float:
    """Weighted squared accumulator error (in output LSBs) of the refit consumers when
    only channels `keep` remain (rounding ignored)."""
    return float(sum((_solve(f, f.positions[keep].reshape(-1))[1] * f.weight).sum() for f in fits))


def elimination_order(fits: list[ConsumerFit], channels: int, count: int) -> list[int]:
    """Greedy backward elimination: the channel whose removal (with refit) adds the
    least reconstruction error, `count` times."""
    remaining = list(range(channels))
    order: list[int] = []
    for _ in range(count):
        errs = [reconstruction_error(fits, np.array([c for c in remaining if c != r])) for r in remaining]
        best = remaining[int(np.argmin(errs))]
        order.append(best)
        remaining.remove(best)
    return order


def refit(fit: ConsumerFit, removed) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights [N, K] with the removed input channels zeroed and the kept ones
    refit, int64 bias delta [N]); a channel whose rounded fit loses to plain zeroing
    keeps the zeroed exact weights."""
    keep = np.setdiff1d(np.arange(fit.positions.shape[0]), removed)
    kept_k = fit.positions[keep].reshape(-1)
    w = fit.w2d.astype(np.float64)
    plain = w.copy()
    plain[:, fit.positions[np.asarray(removed, dtype=np.int64)].reshape(-1)] = 0
    new = np.zeros_like(w)
    new[:, kept_k] = np.clip(np.rint(_solve(fit, kept_k)[0]), -127, 127)
    g = fit.gram
    err_new = np.einsum("nk,kj,nj->n", w - new, g, w - new)
    err_plain = np.einsum("nk,kj,nj->n", w - plain, g, w - plain)
    new[err_new > err_plain] = plain[err_new > err_plain]
    delta = np.rint(((w - new) * fit.mean).sum(axis=1)).astype(np.int64)
    return new.astype(np.int8), delta

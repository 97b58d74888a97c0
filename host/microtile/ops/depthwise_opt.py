"""Offline preparation of the optimised DEPTHWISE_CONV_2D kernel (firmware/include/mt_depthwise_opt.h).

The kernel reads one stream of int32 words (see the header for the layout): per group
of 4 channels the doubled bias, the doubled weights as halfword pairs (c0, c2) and
(c1, c3) per tap, and the fast-requantisation constants; then the channels left over
when the channel count is not a multiple of 4. Layers the fast path cannot take
(depth multiplier != 1, a non-negative shift, accumulators that could overflow) keep
the reference kernel, with the reason depthwise_fallback states; a layer with one
input channel (any depth multiplier) is a CONV_2D and runs as one.
"""
from __future__ import annotations

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.ops import EmitContext
from microtile.ops.requant_opt import fast_requant, fast_requant_problem, max_abs_input, pack16


def depthwise_stream(weights: np.ndarray, bias: np.ndarray, mult: np.ndarray, k: np.ndarray,
                     right: np.ndarray) -> np.ndarray:
    """weights (KH*KW, C) int, bias / mult / k / right (C,) -> the kernel's int32 stream."""
    taps, c_n = weights.shape
    w2 = 2 * weights.astype(np.int64)
    b2 = 2 * bias.astype(np.int64)
    words: list[np.ndarray] = []
    for g in range(c_n // 4):
        c = 4 * g
        words.append(b2[c:c + 4])
        pairs = np.stack([pack16(w2[:, c], w2[:, c + 2]), pack16(w2[:, c + 1], w2[:, c + 3])], axis=1)
        words.append(pairs.reshape(-1).astype(np.int64))
        words += [np.stack([mult[c:c + 4], k[c:c + 4]], axis=1).reshape(-1), right[c:c + 4]]
    for c in range(c_n & ~3, c_n):
        words.append(np.array([b2[c], mult[c], k[c], right[c]], dtype=np.int64))
        words.append(w2[:, c])
    flat = np.concatenate([np.asarray(w, dtype=np.int64) for w in words]) if words else np.zeros(0, np.int64)
    assert flat.min(initial=0) >= -(1 << 31) and flat.max(initial=0) < (1 << 32)
    return (flat & 0xFFFFFFFF).astype(np.uint32).view(np.int32)


def _weights_bias_bound(op: Operator, graph: Graph, p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (KH*KW, C), bias (C,), per-channel bound on |accumulator|)."""
    c_n, kh, kw = p["oc"], p["kh"], p["kw"]
    weights = np.asarray(graph.tensor(op.inputs[1]).data, dtype=np.int64).reshape(kh * kw, c_n)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        bias = np.asarray(graph.tensor(op.inputs[2]).data, dtype=np.int64).reshape(-1)
    else:
        bias = np.zeros(c_n, dtype=np.int64)
    bound = np.abs(bias) + max_abs_input(p["in_zp"]) * np.abs(weights).sum(axis=0)
    return weights, bias, bound


def depthwise_fallback(op: Operator, graph: Graph, p: dict) -> str | None:
    """Why the optimised depthwise kernel does not take this layer, or None."""
    if p["c"] == 1:
        return None  # one input channel: runs as the optimised CONV_2D (see conv.py)
    if p["dm"] != 1:
        return f"depth multiplier {p['dm']} with {p['c']} input channels (the optimised kernel takes 1)"
    _, _, bound = _weights_bias_bound(op, graph, p)
    return fast_requant_problem(p["shift"], p["out_zp"], bound)


def depthwise_fast_path(op: Operator, graph: Graph, p: dict) -> np.ndarray | None:
    """The kernel's int32 stream when the optimised depthwise kernel applies, else None."""
    if p["c"] == 1 or depthwise_fallback(op, graph, p) is not None:
        return None
    weights, bias, bound = _weights_bias_bound(op, graph, p)
    k, right = fast_requant(p["mult"], p["shift"], p["out_zp"], bound)
    return depthwise_stream(weights, bias, np.asarray(p["mult"], dtype=np.int64), k, right)


def emit_depthwise_opt(op: Operator, graph: Graph, ctx: EmitContext, p: dict) -> str | None:
    """The optimised call for DepthwiseConv2D.emit, or None to keep the reference kernel."""
    stream = depthwise_fast_path(op, graph, p)
    if stream is None:
        return None
    ctx.include("mt_depthwise_opt.h")
    data = ctx.const_array("dw_opt_data", stream)
    init = (f"{{{p['n']}, {p['h']}, {p['w']}, {p['c']}, {p['oh']}, {p['ow']}, {p['kh']}, {p['kw']}, "
            f"{p['sh']}, {p['sw']}, {p['ph']}, {p['pw']}, {-p['in_zp']}, {p['act'][0]}, {p['act'][1]}, {data}}}")
    params = ctx.static_struct("mt_depthwise_opt_params", "dw_opt_params", init)
    return f"mt_depthwise_s8_opt(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"

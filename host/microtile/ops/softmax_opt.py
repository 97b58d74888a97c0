"""Offline tables of the optimised SOFTMAX kernel (firmware/include/mt_softmax_opt.h).

TFLM's int8 softmax uses an element only through diff = x - max(row), an integer in
[-255, 0]. For each diff the host evaluates, with the same fixed-point arithmetic as
the reference (ops/fixedpoint.py, as softmax_int8 does), exp(diff) in Q0.31; entries
with diff < diff_min are 0 (they neither count in the sum nor produce anything but
-128). The kernel indexes the table by -diff and derives the Q12.19 rescale it sums
as (e + 2^11) >> 12 (softmax_tables checks that this is gemmlowp's Rescale), so one
1 KB table instead of two.
"""
from __future__ import annotations

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.importer.quant import wrap_int32
from microtile.ops import EmitContext
from microtile.ops import fixedpoint as fp

SCALED_DIFF_INTEGER_BITS = 5
ACCUMULATION_INTEGER_BITS = 12


def softmax_tables(multiplier: int, left_shift: int, diff_min: int) -> tuple[np.ndarray, np.ndarray]:
    """(exp_q31, exp_q12), each int32[256] indexed by -diff."""
    diff = -np.arange(256, dtype=np.int64)
    rescaled = fp.srdhm(wrap_int32(diff << left_shift), multiplier)
    exp = fp.exp_on_negative_values(rescaled, SCALED_DIFF_INTEGER_BITS)
    exp_accum = fp.rescale(exp, 0, ACCUMULATION_INTEGER_BITS)
    valid = diff >= diff_min
    exp_q31 = np.where(valid, exp, 0).astype(np.int64)
    exp_q12 = np.where(valid, exp_accum, 0).astype(np.int64)
    assert exp_q31.min() >= 0 and exp_q12.min() >= 0 and exp_q12.max() <= (1 << 19)
    assert np.array_equal((exp_q31 + (1 << 11)) >> 12, exp_q12)  # what the kernel computes
    return exp_q31.astype(np.int32), exp_q12.astype(np.int32)


def emit_softmax_opt(op: Operator, graph: Graph, ctx: EmitContext, multiplier: int, left_shift: int,
                     diff_min: int, outer: int, depth: int) -> str | None:
    """The optimised call for Softmax.emit (int8 output), or None for the reference kernel."""
    if graph.tensor(op.outputs[0]).dtype != "int8":
        return None
    exp_q31, _ = softmax_tables(multiplier, left_shift, diff_min)
    ctx.include("mt_softmax_opt.h")
    t31 = ctx.const_array("softmax_exp_q31", exp_q31)
    params = ctx.static_struct("mt_softmax_opt_params", f"softmax_opt{op.index}",
                               f"{{ {outer}, {depth}, {t31} }}")
    return f"mt_softmax_s8_opt(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"

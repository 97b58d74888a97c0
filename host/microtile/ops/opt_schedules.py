"""Schedules and cost model of the optimised depthwise, pooling, ADD and SOFTMAX kernels
(docs/kernels_vector.md), for ``microtile compile --explain``.

``explain_op(op, graph)`` returns the schedule text and the predicted instructions per
MAC (per element for ADD and pooling; per output element for SOFTMAX), or None when the
layer keeps the reference kernel. The constants count the instructions of the inner
loops as arm-none-eabi-gcc 12.2 -O2 emits them for Cortex-M4 (checked against QEMU
in tests/test_ops_opt.py).
"""
from __future__ import annotations

import numpy as np

from microtile.importer.ir import Graph, Operator

# Depthwise, per group of 4 output channels of one output pixel (channel group outer):
DW_TAP = 10         # LDR input word, LDR weight word, 4 SXTB16 (SXTAB16 for the input at borders), 4 SMLABB/SMLATT
DW_GROUP_FIXED = 4 + 4 + 28 + 4 + 4   # bias LDRDs, double the 4 sums, requantise 4 (3 LDR, SMMLAR/ADD/ASR/SSAT each), BFI x3 + STR, pixel loop
DW_CLAMP_SIDE = 2   # SSUB8 + SEL per clamped side of the activation range
DW_TAP_LOOP = 3     # per tap of a kernel that is not 3 wide (tap loop)
DW_SCALAR_TAP = 10  # per tap of a channel beyond a multiple of 4 (byte load, offset, multiply, loop)
DW_SCALAR_FIXED = 20
DW_GATHER = 5       # per input pixel and group when the group's plane is copied (in place: LDR/STR;
DW_GATHER_BYTES = 14  # depth multiplier > 1: 4 byte loads and stores + index arithmetic)

ADD_ELEMENT = 10    # UBFX x2, 2 table loads, ADD, SMMULR, ADD asr, ADD k, ASR, SSAT
ADD_WORD = 13       # 2 LDR, 3 BFI, STR, pointer increments, loop (per 4 elements)

POOL_AVG_TAP = 3    # LDR + 2 SXTAB16 per window pixel and 4 channels
POOL_MAX_TAP = 3    # LDR + SSUB8 + SEL
POOL_TAP_LOOP = 3   # per window pixel when the window is wider than 3 (a column loop) ...
POOL_ROW_LOOP = 1   # ... else per window row (gcc unrolls the short column loop)
POOL_AVG_GROUP = 4 * 7 + 3 + 1 + 3   # rounding + SDIV per channel, BFI, STR, loop
POOL_MAX_GROUP = 1 + 3
POOL_SCALAR_TAP = 8     # per window pixel of a channel beyond a multiple of 4
POOL_SCALAR_FIXED = 20
POOL_PIXEL = 20         # per output pixel: window clipping

# The planar depthwise kernel (mt_depthwise_planar_opt.h), instructions (fitted on
# KWS's 25 x 5 x 64 layer on QEMU: 2.795 per MAC; depthwise_opt.planar_channel_cost)
DWP_INSTRUCTIONS = {
    "pair": 39,     # 3 x (LDRD, SMLAD, SMLABB, PKHBT, SMLADX, SMLATB), bias, requantise 2, 2 STRB, loop
    "quad": 68,     # 2x2 outputs of two lines: 4 LDRD, 28 MAC and PKHBT, bias, requantise 4, 4 STRB, loop
    "odd": 44,      # the odd last output of a plane row, in C (a call)
    "line": 20,     # per plane row: the weights into registers, the loop's bounds
    "copy": 3.5,    # per input value copied into the plane: LDRSB, ADD, STRH (unrolled by 4)
    "channel": 70,
}

# Estimated cycles per instruction of these kernels on a Cortex-M4 behind flash wait
# states (loads of 2 cycles, taken branches, the weights' and tables' flash lines),
# fitted on the timing model (NUCLEO-L4R5ZI): predicted est. cycles = instructions x VECTOR_CPI.
VECTOR_CPI = 1.6

SOFTMAX_ELEMENT = 5 + 13   # max (SIMD), sum (load, subtract, table load, add) + output per element
SOFTMAX_ROW = 200          # fixed-point reciprocal and row set-up


def _clamp_sides(act: tuple[int, int]) -> int:
    return int(act[0] > -128) + int(act[1] < 127)


def explain_op(op: Operator, graph: Graph) -> dict | None:
    """The schedule text, predicted instructions and estimated cycles per MAC (or element)."""
    row = _explain_op(op, graph)
    if row is not None:
        row["predicted_cpm"] = round(row["predicted_ipm"] * VECTOR_CPI, 3)
    return row


def _explain_op(op: Operator, graph: Graph) -> dict | None:
    from microtile.ops import kernel_for

    kernel = kernel_for(op)
    if op.opcode == "DEPTHWISE_CONV_2D":
        from microtile.ops.depthwise_opt import depthwise_fast_path, planar_channel_cost, planar_choice

        p = kernel.params(op, graph)
        if depthwise_fast_path(op, graph, p) is None:
            return None
        planar = planar_choice(p)
        if planar is not None:
            per_channel = planar_channel_cost(p, planar, DWP_INSTRUCTIONS)
            text = ("planar: one channel at a time as a zero-padded int16 plane"
                    + (" (column-major: the output is taller than wide)" if planar["transposed"] else "")
                    + "; per output pair and filter row LDRD + SMLAD/SMLADX of tap pairs, weights in registers; "
                    "SMMLAR requantisation, SSAT")
            return {"schedule": text, "predicted_ipm": round(per_channel / (p["oh"] * p["ow"] * 9), 3)}
        taps = p["kh"] * p["kw"]
        groups, rem = divmod(p["oc"], 4)
        per_group = (DW_GROUP_FIXED + taps * DW_TAP + DW_CLAMP_SIDE * _clamp_sides(p["act"])
                     + (0 if p["kw"] == 3 else taps * DW_TAP_LOOP))
        per_pixel = groups * per_group + rem * (DW_SCALAR_FIXED + taps * DW_SCALAR_TAP)
        if p["dm"] > 1:  # each group's source plane gathered first
            per_pixel += groups * DW_GATHER_BYTES * p["h"] * p["w"] / (p["oh"] * p["ow"])
        ipm = per_pixel / (p["oc"] * taps)
        text = ("channel group outer (its constants stay cached), 4 channels per word: per tap LDR + 2 SXTB16 "
                "of the input and of the int8 weights, 4 SMLABB/SMLATT; "
                + ("3x3 interior unrolled with the input offset folded into the bias, border rows unrolled; "
                   if p["kh"] == 3 and p["kw"] == 3 else "tap loop at borders; ")
                + (f"depth multiplier {p['dm']}: each group's source plane gathered; " if p["dm"] > 1 else "")
                + "SMMLAR requantisation, byte-SIMD clamp, one word store per 4 channels")
        return {"schedule": text, "predicted_ipm": round(ipm, 3)}
    if op.opcode in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        p = kernel.params(op, graph)
        avg = op.opcode == "AVERAGE_POOL_2D"
        if kernel.opt_function(p) is None:
            return None
        window = p["kh"] * p["kw"]
        groups, rem = divmod(p["c"], 4)
        tap = (POOL_AVG_TAP if avg else POOL_MAX_TAP) + (POOL_TAP_LOOP if p["kw"] > 3 else 0)
        per_group = (window * tap + (0 if p["kw"] > 3 else p["kh"] * POOL_ROW_LOOP)
                     + (POOL_AVG_GROUP if avg else POOL_MAX_GROUP) + 2 * _clamp_sides(p["act"]))
        per_pixel = groups * per_group + rem * (window * POOL_SCALAR_TAP + POOL_SCALAR_FIXED) + POOL_PIXEL
        text = ("4 channels per word over the clipped window: "
                + ("SXTAB16 halfword sums, SDIV per channel" if avg else "SSUB8/SEL byte maximum")
                + ", byte-SIMD clamp, one word store")
        return {"schedule": text, "predicted_ipm": round(per_pixel / (p["c"] * window), 3)}
    if op.opcode == "ADD":
        a, b = graph.op_inputs(op)
        if tuple(a.shape) != tuple(b.shape):
            return None
        p = kernel.params(op, graph)
        per4 = 4 * ADD_ELEMENT + ADD_WORD + DW_CLAMP_SIDE * _clamp_sides((p["act_min"], p["act_max"]))
        return {"schedule": "per-input rescale from 256-entry offline tables, SMMULR output requantisation, "
                            "4 elements per word", "predicted_ipm": round(per4 / 4, 3)}
    if op.opcode == "SOFTMAX":
        if graph.tensor(op.outputs[0]).dtype != "int8":
            return None
        shape = graph.tensor(op.inputs[0]).shape
        depth = int(shape[-1])
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        per = (rows * (SOFTMAX_ROW + depth * SOFTMAX_ELEMENT)) / (rows * depth)
        return {"schedule": "offline exp tables over the 256 possible diffs, SIMD row max, one "
                            "reciprocal per row", "predicted_ipm": round(per, 3)}
    return None


__all__ = ["explain_op"]

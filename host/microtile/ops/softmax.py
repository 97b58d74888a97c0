"""SOFTMAX and LOG_SOFTMAX (int8), bit-exact with TFLM's reference kernels.

Both work on the last axis of a tensor of any rank. TFLM's Prepare turns the input
scale (and beta) into a Q5.26 input multiplier, a left shift and a ``diff_min``
threshold; the kernels then run gemmlowp's fixed-point exp / reciprocal / log. We do
the Prepare arithmetic here on the host and emit the results as constants, so the C
kernels (firmware/kernels/mt_softmax.c) are pure integer code.
"""
from __future__ import annotations

import math

import numpy as np

from microtile.importer.ir import Graph, Operator
from microtile.importer.quant import INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier, wrap_int32
from microtile.ops import fixedpoint as fp
from microtile.ops import OpKernel, register

SCALED_DIFF_INTEGER_BITS = 5
ACCUMULATION_INTEGER_BITS = 12
LOG_SOFTMAX_OUTPUT_INTEGER_BITS = 4


def preprocess_softmax_scaling(beta_times_scale: float, integer_bits: int) -> tuple[int, int]:
    """PreprocessSoftmaxScaling -> (input_multiplier, input_left_shift)."""
    real = min(beta_times_scale * float(1 << (31 - integer_bits)), float((1 << 31) - 1))
    return quantize_multiplier(real)


def calculate_input_radius(integer_bits: int, left_shift: int, total_signed_bits: int = 31) -> int:
    value = ((1 << integer_bits) - 1) * float(1 << (total_signed_bits - integer_bits)) / float(1 << left_shift)
    return int(math.floor(value))


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    depth = x.shape[-1] if x.ndim else 1
    return x.astype(np.int64).reshape(-1, depth)


def _input_beta_product(op: Operator, graph: Graph, beta: float) -> float:
    # TFLM computes in double from float32 scale and float32 beta.
    return float(np.float32(beta)) * float(np.float32(graph.tensor(op.inputs[0]).scale))


def _check_single_int8_io(kernel: OpKernel, op: Operator, graph: Graph) -> None:
    if len(op.inputs) != 1 or len(op.outputs) != 1:
        raise kernel.unsupported(op, f"{len(op.inputs)} inputs / {len(op.outputs)} outputs", "1 input, 1 output")
    x = graph.tensor(op.inputs[0])
    y = graph.tensor(op.outputs[0])
    if x.dtype != "int8":
        raise kernel.unsupported(op, f"input type {x.dtype}", "int8 input")
    if x.quant is None or y.quant is None:
        raise kernel.unsupported(op, "tensors without quantisation parameters", "quantised int8 tensors")
    if x.quant.per_channel:
        raise kernel.unsupported(op, "per-channel quantised input", "per-tensor quantisation")
    if tuple(x.shape) != tuple(y.shape):
        raise kernel.unsupported(op, f"output shape {y.shape} differs from input shape {x.shape}")
    if len(x.shape) < 1:
        raise kernel.unsupported(op, "a scalar input", "tensors of rank >= 1")


def _outer_depth(shape: tuple[int, ...]) -> tuple[int, int]:
    depth = int(shape[-1])
    return int(np.prod(shape[:-1], dtype=np.int64)), depth


# ---------------------------------------------------------------- SOFTMAX


def softmax_params(op: Operator, graph: Graph) -> tuple[int, int, int]:
    """(input_multiplier, input_left_shift, diff_min) as TFLM's SoftmaxPrepare computes them."""
    beta_scale = _input_beta_product(op, graph, float(op.options.get("beta", 1.0)))
    multiplier, left_shift = preprocess_softmax_scaling(beta_scale, SCALED_DIFF_INTEGER_BITS)
    diff_min = -calculate_input_radius(SCALED_DIFF_INTEGER_BITS, left_shift)
    return multiplier, left_shift, diff_min


def softmax_int8(x: np.ndarray, multiplier: int, left_shift: int, diff_min: int, out_bits: int = 8) -> np.ndarray:
    """reference_ops::Softmax<int8_t, int8_t / int16_t> over the last axis."""
    shape = np.shape(x)
    rows = _rows(x)
    diff = rows - rows.max(axis=1, keepdims=True)
    valid = diff >= diff_min
    rescaled = fp.srdhm(wrap_int32(diff << left_shift), multiplier)
    exp = fp.exp_on_negative_values(rescaled, SCALED_DIFF_INTEGER_BITS)
    exp_accum = fp.rescale(exp, 0, ACCUMULATION_INTEGER_BITS)
    sum_of_exps = wrap_int32(np.where(valid, exp_accum, 0).sum(axis=1, keepdims=True))
    shifted_scale, num_bits_over_unit = fp.get_reciprocal(sum_of_exps, ACCUMULATION_INTEGER_BITS)
    exponent = num_bits_over_unit + 31 - out_bits
    # TFLM aborts (TFLITE_CHECK) when exponent > 31, i.e. for int8 output once the
    # sum of exps reaches 512; the limit of its formula there is 0 (we return that).
    out = np.where(exponent > 31, 0, fp.rdbp(fp.srdhm(shifted_scale, exp), np.minimum(exponent, 31)))
    qmin, qmax = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    out = np.clip(out + qmin, qmin, qmax)
    out = np.where(valid, out, qmin)
    return out.astype(np.int8 if out_bits == 8 else np.int16).reshape(shape)


@register
class Softmax(OpKernel):
    opcode = "SOFTMAX"

    def check(self, op: Operator, graph: Graph) -> None:
        _check_single_int8_io(self, op, graph)
        y = graph.tensor(op.outputs[0])
        if y.dtype == "int8":
            if y.zero_point != -128 or np.float32(y.scale) != np.float32(1.0 / 256):
                raise self.unsupported(
                    op, f"int8 output quantisation scale={y.scale} zero_point={y.zero_point}",
                    "int8 output with scale 1/256 and zero point -128, as TFLM requires")
        elif y.dtype == "int16":
            if y.zero_point != -32768 or abs(y.scale - 1.0 / 65536) > 0.001 / 65536:
                raise self.unsupported(
                    op, f"int16 output quantisation scale={y.scale} zero_point={y.zero_point}",
                    "int16 output with scale 1/65536 and zero point -32768, as TFLM requires")
        else:
            raise self.unsupported(op, f"output type {y.dtype}", "int8 or int16 output")
        beta = float(op.options.get("beta", 1.0))
        scaled = _input_beta_product(op, graph, beta) * float(1 << (31 - SCALED_DIFF_INTEGER_BITS))
        if not scaled > 1.0:
            raise self.unsupported(
                op, f"beta * input scale = {scaled / (1 << 26):g} is below 2**-26 (TFLM aborts on it)",
                "beta * input scale > 2**-26")
        _, depth = _outer_depth(graph.tensor(op.inputs[0]).shape)
        if depth >= (1 << 12):
            # The Q12.19 sum of exps could overflow.
            raise self.unsupported(op, f"softmax over {depth} values", "at most 4095 values on the last axis")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        multiplier, left_shift, diff_min = softmax_params(op, graph)
        out_bits = 16 if graph.tensor(op.outputs[0]).dtype == "int16" else 8
        return [softmax_int8(inputs[0], multiplier, left_shift, diff_min, out_bits)]

    def macs(self, op: Operator, graph: Graph) -> int:
        return 0

    def opt_fallback(self, op: Operator, graph: Graph) -> str | None:
        if graph.tensor(op.outputs[0]).dtype != "int8":
            return f"{graph.tensor(op.outputs[0]).dtype} output (the optimised kernel writes int8)"
        return None

    def emit(self, op: Operator, graph: Graph, ctx) -> str:
        multiplier, left_shift, diff_min = softmax_params(op, graph)
        outer, depth = _outer_depth(graph.tensor(op.inputs[0]).shape)
        if ctx.kernels == "optimized" and self.opt_fallback(op, graph) is None:
            from microtile.ops.softmax_opt import emit_softmax_opt

            call = emit_softmax_opt(op, graph, ctx, multiplier, left_shift, diff_min, outer, depth)
            if call is not None:
                return call
        ctx.include("mt_softmax.h")
        params = ctx.static_struct(
            "mt_softmax_params", f"softmax{op.index}",
            f"{{ {outer}, {depth}, {multiplier}, {left_shift}, {diff_min} }}")
        fn = "mt_softmax_s8_s16_ref" if graph.tensor(op.outputs[0]).dtype == "int16" else "mt_softmax_s8_ref"
        return f"{fn}(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"


# ---------------------------------------------------------------- LOG_SOFTMAX

LOG_SOFTMAX_OUTPUT_SCALE = 16.0 / 256
LOG_SOFTMAX_OUTPUT_ZERO_POINT = 127


def log_softmax_params(op: Operator, graph: Graph) -> tuple[int, int, int, int, int]:
    """(input_multiplier, input_left_shift, reverse_scaling_divisor,
    reverse_scaling_right_shift, diff_min) as TFLM's LOG_SOFTMAX Prepare computes them."""
    beta_scale = _input_beta_product(op, graph, 1.0)
    multiplier, left_shift = preprocess_softmax_scaling(beta_scale, SCALED_DIFF_INTEGER_BITS)
    reverse_real = float(1 << (31 - left_shift)) / float(multiplier)
    reverse_divisor, reverse_left_shift = quantize_multiplier(reverse_real)
    diff_min = -calculate_input_radius(SCALED_DIFF_INTEGER_BITS, left_shift)
    return multiplier, left_shift, reverse_divisor, -reverse_left_shift, diff_min


def log_softmax_int8(x: np.ndarray, multiplier: int, left_shift: int, reverse_divisor: int,
                     reverse_right_shift: int, diff_min: int) -> np.ndarray:
    """reference_ops::LogSoftmaxQuantized<int8_t> over the last axis."""
    shape = np.shape(x)
    rows = _rows(x)
    diff = rows - rows.max(axis=1, keepdims=True)
    in_q5 = multiply_by_quantized_multiplier(diff, multiplier, left_shift)
    exp = fp.exp_on_negative_values(in_q5, SCALED_DIFF_INTEGER_BITS)
    exp_q12 = fp.rescale(exp, 0, ACCUMULATION_INTEGER_BITS)
    sum_q12 = wrap_int32(np.where(diff >= diff_min, exp_q12, 0).sum(axis=1, keepdims=True))
    log_sum_q5 = fp.log_x_for_x_greater_than_or_equal_to_1(
        sum_q12, ACCUMULATION_INTEGER_BITS, SCALED_DIFF_INTEGER_BITS)
    shifted_log_sum = wrap_int32(log_sum_q5 + INT32_MIN)
    adjusted_diff_min = np.maximum(
        diff_min - 1, multiply_by_quantized_multiplier(shifted_log_sum, reverse_divisor, -reverse_right_shift))
    out = fp.rdbp(fp.sub(in_q5, log_sum_q5),
                  31 - SCALED_DIFF_INTEGER_BITS - LOG_SOFTMAX_OUTPUT_INTEGER_BITS) + 127
    out = np.clip(out, -128, 127)
    out = np.where(diff > adjusted_diff_min, out, -128)
    return out.astype(np.int8).reshape(shape)


@register
class LogSoftmax(OpKernel):
    opcode = "LOG_SOFTMAX"

    def check(self, op: Operator, graph: Graph) -> None:
        _check_single_int8_io(self, op, graph)
        y = graph.tensor(op.outputs[0])
        if y.dtype != "int8":
            raise self.unsupported(op, f"output type {y.dtype}", "int8 output")
        if (np.float32(y.scale) != np.float32(LOG_SOFTMAX_OUTPUT_SCALE)
                or y.zero_point != LOG_SOFTMAX_OUTPUT_ZERO_POINT):
            raise self.unsupported(
                op, f"output quantisation scale={y.scale} zero_point={y.zero_point}",
                "output scale 16/256 and zero point 127, as TFLM requires")
        scaled = _input_beta_product(op, graph, 1.0) * float(1 << (31 - SCALED_DIFF_INTEGER_BITS))
        if not scaled > 2.0:
            raise self.unsupported(op, f"input scale {graph.tensor(op.inputs[0]).scale:g} is too small "
                                   "(TFLM aborts on it)", "input scale > 2**-25")
        _, depth = _outer_depth(graph.tensor(op.inputs[0]).shape)
        if depth >= (1 << 12):
            raise self.unsupported(op, f"log-softmax over {depth} values", "at most 4095 values on the last axis")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        return [log_softmax_int8(inputs[0], *log_softmax_params(op, graph))]

    def emit(self, op: Operator, graph: Graph, ctx) -> str:
        multiplier, left_shift, reverse_divisor, reverse_right_shift, diff_min = log_softmax_params(op, graph)
        outer, depth = _outer_depth(graph.tensor(op.inputs[0]).shape)
        ctx.include("mt_softmax.h")
        params = ctx.static_struct(
            "mt_log_softmax_params", f"log_softmax{op.index}",
            f"{{ {outer}, {depth}, {multiplier}, {left_shift}, {reverse_divisor}, "
            f"{reverse_right_shift}, {diff_min} }}")
        return f"mt_log_softmax_s8_ref(&{params}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"

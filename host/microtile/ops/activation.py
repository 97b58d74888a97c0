"""Activation operators: RELU, RELU6, LOGISTIC, HARD_SWISH (int8, TFLM semantics).

- RELU: TFLM's ReluQuantized, a requantisation from the input to the output
  quantisation (QuantizeMultiplier(s_in/s_out)) clamped at the output's zero.
- RELU6: TFLM's Relu6Quantized clamps the raw int8 input to [zp_in, q_in(6.0)] and
  ignores the output quantisation (the converter gives both the same one).
- LOGISTIC: reference_integer_ops::Logistic, gemmlowp fixed-point logistic on a Q4.27
  input, multiplier/shift/radius from TFLM's CalculateArithmeticOpDataLogistic.
- HARD_SWISH: reference_ops::HardSwish with int16 fixed-point multipliers from
  TFLM's HardSwishPrepare.
"""
from __future__ import annotations

import math

import numpy as np

from microtile.importer import quant as q
from microtile.importer.ir import Graph, Operator, Tensor
from microtile.ops import EmitContext, OpKernel, register

INT32_MAX = q.INT32_MAX
INT32_MIN = q.INT32_MIN


def _size(t: Tensor) -> int:
    return int(np.prod(t.shape, dtype=np.int64))


def _fields(p: dict[str, int]) -> str:
    return "{ " + ", ".join(f".{k} = {int(v)}" for k, v in p.items()) + " }"


class _UnaryInt8(OpKernel):
    """One int8 input, one int8 output of the same shape, per-tensor quantized."""

    def check(self, op: Operator, graph: Graph) -> None:
        if len(op.inputs) != 1 or len(op.outputs) != 1 or op.inputs[0] < 0:
            raise self.unsupported(op, f"{len(op.inputs)} inputs / {len(op.outputs)} outputs",
                                   "1 input and 1 output")
        (x,) = graph.op_inputs(op)
        (y,) = graph.op_outputs(op)
        self.require_int8_per_tensor(op, (x, y))
        if _size(x) != _size(y):
            raise self.unsupported(op, f"input shape {x.shape} and output shape {y.shape} differ in size")

    def _emit(self, op: Operator, ctx: EmitContext, ctype: str, fn: str, p: dict[str, int]) -> str:
        ctx.include("mt_activation.h")
        name = ctx.static_struct(ctype, f"{fn}{op.index}", _fields(p))
        return f"mt_{fn}_s8_ref(&{name}, {ctx.ptr(op.inputs[0])}, {ctx.ptr(op.outputs[0])});"


# ----------------------------------------------------------------------- RELU


@register
class Relu(_UnaryInt8):
    opcode = "RELU"

    def params(self, op: Operator, graph: Graph) -> dict[str, int]:
        """CalculateReluOpData<int8_t>: act_min = 0, act_max = +inf."""
        (x,) = graph.op_inputs(op)
        (y,) = graph.op_outputs(op)
        m, sh = q.quantize_multiplier(float(x.scale) / float(y.scale))
        # roundf(0.0f / scale) is 0: the lower clamp is the output zero point
        return dict(input_offset=x.zero_point, output_offset=y.zero_point, output_multiplier=m,
                    output_shift=sh, act_min=max(-128, y.zero_point), act_max=127, size=_size(x))

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        (y,) = graph.op_outputs(op)
        v = np.asarray(inputs[0], dtype=np.int64) - p["input_offset"]
        r = q.multiply_by_quantized_multiplier(v, p["output_multiplier"], p["output_shift"]) + p["output_offset"]
        r = np.clip(r, p["act_min"], p["act_max"])
        return [r.astype(np.int8).reshape(y.shape)]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        return self._emit(op, ctx, "mt_relu_params", "relu", self.params(op, graph))


# ---------------------------------------------------------------------- RELU6


def float_to_quantized_int8(value: float, scale: float, zero_point: int) -> int:
    """FloatToQuantizedType<int8_t>: round(value / scale) in float, clamped to int8."""
    r = q.tflite_round(float(np.float32(value) / np.float32(scale))) + zero_point
    return max(-128, min(127, r))


@register
class Relu6(_UnaryInt8):
    opcode = "RELU6"

    def params(self, op: Operator, graph: Graph) -> dict[str, int]:
        (x,) = graph.op_inputs(op)
        return dict(lower=x.zero_point, upper=float_to_quantized_int8(6.0, x.scale, x.zero_point), size=_size(x))

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        (y,) = graph.op_outputs(op)
        v = np.asarray(inputs[0], dtype=np.int64)
        # Relu6Quantized: val > upper ? upper : val < lower ? lower : val
        r = np.where(v > p["upper"], p["upper"], np.where(v < p["lower"], p["lower"], v))
        return [r.astype(np.int8).reshape(y.shape)]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        return self._emit(op, ctx, "mt_relu6_params", "relu6", self.params(op, graph))


# ------------------------------------------------------------------- LOGISTIC

_LOGISTIC_INPUT_INTEGER_BITS = 4


def _sat_shift_left(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp SaturatingRoundingMultiplyByPOT with a positive exponent."""
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, x << exponent))


def _srdhm(a, b) -> np.ndarray:
    return q.saturating_rounding_doubling_high_mul(a, b)


def _rdbpot(x, e: int) -> np.ndarray:
    return q.rounding_divide_by_pot(x, e)


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    constant_term = 1895147668  # exp(-1/8) in Q0.31
    constant_1_over_3 = 715827883
    x = a + (1 << 28)  # a + 1/8
    x2 = _srdhm(x, x)
    x3 = _srdhm(x2, x)
    x4 = _srdhm(x2, x2)
    x4_over_4 = _rdbpot(x4, 2)
    poly = _rdbpot(_srdhm(x4_over_4 + x3, constant_1_over_3) + x2, 1)
    return constant_term + _srdhm(constant_term, x + poly)


def _exp_on_negative_values_q4(a: np.ndarray) -> np.ndarray:
    """gemmlowp exp_on_negative_values for FixedPoint<int32, 4> -> Q0.31."""
    integer_bits = _LOGISTIC_INPUT_INTEGER_BITS
    frac_bits = 31 - integer_bits
    one_quarter = 1 << (frac_bits - 2)
    mask = one_quarter - 1
    a_mod = (a & mask) - one_quarter
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(_sat_shift_left(a_mod, integer_bits))
    remainder = q.wrap_int32(a_mod - a)
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084),
                                 (1, 290630308), (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent:
            bit = 1 << (frac_bits + exponent)
            result = np.where((remainder & bit) != 0, _srdhm(result, multiplier), result)
    return np.where(a == 0, INT32_MAX, result)


def _one_over_one_plus_x_for_x_in_0_1(a: np.ndarray) -> np.ndarray:
    s = a + INT32_MAX  # RoundingHalfSum(a, One) in 64-bit
    half_denominator = np.where(s >= 0, (s + 1) // 2, -((-(s - 1)) // 2))
    x = 1515870810 + _srdhm(half_denominator, -1010580540)  # 48/17 - 32/17 * d, in Q2.29
    for _ in range(3):
        one_minus = (1 << 29) - _srdhm(half_denominator, x)
        x = x + _sat_shift_left(_srdhm(x, one_minus), 2)
    return _sat_shift_left(x, 1)


def fixed_point_logistic_q4(a: np.ndarray) -> np.ndarray:
    """gemmlowp logistic(FixedPoint<int32, 4>) -> raw Q0.31."""
    a = np.asarray(a, dtype=np.int64)
    abs_a = np.where(a > 0, a, -a)
    pos = _one_over_one_plus_x_for_x_in_0_1(_exp_on_negative_values_q4(-abs_a))
    neg = INT32_MAX - pos
    return np.where(a == 0, 1 << 30, np.where(a > 0, pos, neg))


def calculate_input_radius(input_integer_bits: int, input_left_shift: int, total_signed_bits: int = 31) -> int:
    value = (1.0 * ((1 << input_integer_bits) - 1) * (1 << (total_signed_bits - input_integer_bits))
             / (1 << input_left_shift) if input_left_shift >= 0 else
             1.0 * ((1 << input_integer_bits) - 1) * (1 << (total_signed_bits - input_integer_bits))
             * (1 << -input_left_shift))
    return int(math.floor(value))


@register
class Logistic(_UnaryInt8):
    opcode = "LOGISTIC"

    def params(self, op: Operator, graph: Graph) -> dict[str, int]:
        """CalculateArithmeticOpDataLogistic for int8."""
        (x,) = graph.op_inputs(op)
        real = float(x.scale) * float(1 << (31 - _LOGISTIC_INPUT_INTEGER_BITS))
        mant, left_shift = math.frexp(real)
        multiplier = q.tflite_round(mant * (1 << 31))
        radius = calculate_input_radius(_LOGISTIC_INPUT_INTEGER_BITS, left_shift)
        return dict(input_zero_point=x.zero_point, input_range_radius=radius, input_multiplier=multiplier,
                    input_left_shift=left_shift, size=_size(x))

    def check(self, op: Operator, graph: Graph) -> None:
        super().check(op, graph)
        (y,) = graph.op_outputs(op)
        if y.zero_point != -128:
            raise self.unsupported(op, f"output zero point {y.zero_point}",
                                   "output zero point -128 (scale 1/256), as TFLM requires")
        p = self.params(op, graph)
        if p["input_multiplier"] >= 1 << 31:
            raise self.unsupported(op, f"input scale {graph.op_inputs(op)[0].scale} rounds the multiplier to 2^31")
        if p["input_range_radius"] > INT32_MAX:
            raise self.unsupported(op, f"input scale {graph.op_inputs(op)[0].scale} is too small",
                                   "input scales >= 2^-27")
        if not 0 <= p["input_left_shift"] <= 31:
            raise self.unsupported(op, f"input scale {graph.op_inputs(op)[0].scale} out of range",
                                   "input scales in [2^-27, 16)")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        (y,) = graph.op_outputs(op)
        v = np.asarray(inputs[0], dtype=np.int64).reshape(-1) - p["input_zero_point"]
        radius = p["input_range_radius"]
        inside = (v > -radius) & (v < radius)
        x_q4 = q.multiply_by_quantized_multiplier(np.where(inside, v, 0), p["input_multiplier"],
                                                  p["input_left_shift"])
        out_q0 = fixed_point_logistic_q4(x_q4)
        r = np.clip(_rdbpot(out_q0, 23) - 128, -128, 127)
        r = np.where(v <= -radius, -128, np.where(v >= radius, 127, r))
        return [r.astype(np.int8).reshape(y.shape)]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        return self._emit(op, ctx, "mt_logistic_params", "logistic", self.params(op, graph))


# ----------------------------------------------------------------- HARD_SWISH


def _wrap16(x) -> np.ndarray:
    return ((np.asarray(x, dtype=np.int64) + (1 << 15)) & 0xFFFF) - (1 << 15)


def _sat16(x) -> np.ndarray:
    return np.clip(x, -(1 << 15), (1 << 15) - 1)


def _srdhm16(a, b) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul<int16_t>."""
    a = np.asarray(a, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    num = ab + nudge
    high = np.where(num >= 0, num >> 15, -((-num) >> 15))
    return np.where((a == -32768) & (b == -32768), 32767, _wrap16(high))


def _sdhm16(a, b) -> np.ndarray:
    """SaturatingDoublingHighMul<int16_t>: like the above, truncating toward zero."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    high = np.where(ab >= 0, ab >> 15, -((-ab) >> 15))
    return np.where((a == -32768) & (b == -32768), 32767, _wrap16(high))


def _rdbpot16(x, exponent: int) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT<int16_t> (the mask is truncated to int16 too)."""
    x = np.asarray(x, dtype=np.int64)
    mask = int(_wrap16((1 << exponent) - 1))
    remainder = _wrap16(x & mask)
    threshold = _wrap16((mask >> 1) + (x < 0))
    return _wrap16((x >> exponent) + (remainder > threshold))


def _downscale_multiplier_to_int16(m: int) -> int:
    """DownScaleInt32ToInt16Multiplier."""
    if m >= INT32_MAX - (1 << 15):
        return 32767
    return (m + (1 << 15)) >> 16


@register
class HardSwish(_UnaryInt8):
    opcode = "HARD_SWISH"

    def params(self, op: Operator, graph: Graph) -> dict[str, int]:
        """HardSwishPrepare for int8: float32 scale arithmetic, as TFLM does it."""
        (x,) = graph.op_inputs(op)
        (y,) = graph.op_outputs(op)
        input_scale = np.float32(x.scale)
        hires_input_scale = np.float32(1.0 / 128.0) * input_scale
        reluish_scale = np.float32(3.0) / np.float32(32768.0)
        output_scale = np.float32(y.scale)
        om, oe = q.quantize_multiplier(float(hires_input_scale / output_scale))
        rm, re = q.quantize_multiplier(float(hires_input_scale / reluish_scale))
        return dict(input_zero_point=x.zero_point, output_zero_point=y.zero_point,
                    output_multiplier_fixedpoint_int16=_downscale_multiplier_to_int16(om),
                    output_multiplier_exponent=oe,
                    reluish_multiplier_fixedpoint_int16=_downscale_multiplier_to_int16(rm),
                    reluish_multiplier_exponent=re, size=_size(x))

    def check(self, op: Operator, graph: Graph) -> None:
        super().check(op, graph)
        p = self.params(op, graph)
        if p["output_multiplier_exponent"] > 0:
            (x,) = graph.op_inputs(op)
            (y,) = graph.op_outputs(op)
            raise self.unsupported(op, f"output scale {y.scale} is not above input scale / 128 ({x.scale}/128)",
                                   "output scale > input scale / 128, as TFLM requires")

    def reference(self, op: Operator, graph: Graph, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
        p = self.params(op, graph)
        (y,) = graph.op_outputs(op)
        v = _wrap16(np.asarray(inputs[0], dtype=np.int64) - p["input_zero_point"])
        hires = _wrap16(v * (1 << 7))
        preshift_out = _srdhm16(hires, p["output_multiplier_fixedpoint_int16"])
        reluish = hires
        exp = p["reluish_multiplier_exponent"]
        if exp > 0:
            reluish = _sat16(reluish * (1 << (exp - 1)))
        reluish = _srdhm16(reluish, p["reluish_multiplier_fixedpoint_int16"])
        if exp > 0:
            reluish = _sat16(reluish * 2)
        if exp < 0:
            reluish = _rdbpot16(reluish, -exp)
        reluish = _wrap16((reluish + (1 << 15)) >> 1)
        preshift = _sdhm16(reluish, preshift_out)
        out = _rdbpot16(preshift, -p["output_multiplier_exponent"])
        out = _wrap16(out + p["output_zero_point"])
        out = np.clip(out, -128, 127)
        return [out.astype(np.int8).reshape(y.shape)]

    def emit(self, op: Operator, graph: Graph, ctx: EmitContext) -> str:
        return self._emit(op, ctx, "mt_hard_swish_params", "hard_swish", self.params(op, graph))

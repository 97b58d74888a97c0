"""TFLite's integer requantisation arithmetic, vectorised with numpy.

These mirror tflite/kernels/internal/common.h and quantization_util.cc with the
default double rounding (TFLITE_SINGLE_ROUNDING unset), as TFLM's reference kernels
use. The C versions are in firmware/include/mt_quant.h; both must agree bit for bit.
All array functions take and return int64 arrays holding int32 values.
"""
from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


def tflite_round(x: float) -> int:
    """std::round: half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


class MultiplierRangeError(ValueError):
    """A requantisation scale of 2**31 or more: TFLM's ``x * (1 << shift)`` is undefined
    there (a corrupted scale); codegen refuses the operator with this message."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    """QuantizeMultiplier: real = q * 2**(shift - 31), q in [2**30, 2**31), as TFLM's
    default double-rounding build computes it."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    if not math.isfinite(real) or shift > 31:
        raise MultiplierRangeError(f"requantisation scale {real:.3g} is not below 2**31, where TFLM's "
                                   "integer arithmetic is undefined (check the tensors' scales)")
    q_fixed = tflite_round(q * (1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    # TFLM clamps shift > 30 only in single-rounding builds; its default (double
    # rounding) keeps it, and softmax multipliers up to 2**31 - 1 need that.
    return int(q_fixed), int(shift)


def quantize_multiplier_smaller_than_one_exp(real: float) -> tuple[int, int]:
    """QuantizeMultiplierSmallerThanOneExp: like quantize_multiplier, shift <= 0."""
    assert 0.0 < real < 1.0, real
    q, shift = quantize_multiplier(real)
    assert shift <= 0
    return q, shift


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap into int32 range, as 32-bit C arithmetic does."""
    return ((np.asarray(x, dtype=np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    ab = a * b  # fits in int64: |a*b| <= 2**62
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    num = ab + nudge
    # C integer division truncates toward zero.
    high = np.where(num >= 0, num >> 31, -((-num) >> 31))
    return np.where(overflow, INT32_MAX, high)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplier (int32 x, double rounding)."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(wrap_int32(x << left), multiplier), right
    )


def multiply_by_quantized_multiplier_smaller_than_one_exp(x, multiplier, shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplierSmallerThanOneExp (shift <= 0)."""
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x, multiplier), -np.asarray(shift))


def multiply_by_quantized_multiplier_greater_than_one(x, multiplier, left_shift) -> np.ndarray:
    """MultiplyByQuantizedMultiplierGreaterThanOne (left_shift >= 0)."""
    return saturating_rounding_doubling_high_mul(wrap_int32(np.asarray(x, np.int64) << left_shift), multiplier)


def activation_range(activation: str, scale: float, zero_point: int,
                     qmin: int = -128, qmax: int = 127) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for a fused activation; ``v / scale`` in
    float32 as TFLM computes it (a double division can round differently)."""
    def q(v: float) -> int:
        return zero_point + tflite_round(float(np.float32(v) / np.float32(scale)))

    if activation == "NONE":
        return qmin, qmax
    if activation == "RELU":
        return max(qmin, q(0.0)), qmax
    if activation == "RELU6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if activation == "RELU_N1_TO_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    raise ValueError(f"fused activation {activation} is not supported (NONE, RELU, RELU6, RELU_N1_TO_1)")

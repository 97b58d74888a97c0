"""gemmlowp-style fixed-point math, vectorised with numpy, bit-exact with the
functions TFLM's SOFTMAX and LOG_SOFTMAX reference kernels use
(gemmlowp fixedpoint.h and tflite kernels/internal/common.h).

The C twins are in firmware/include/mt_fixedpoint.h. Values are int64 arrays
holding int32 values; a "Qm" value has m integer bits and 31 - m fractional bits.
Additions wrap like the 32-bit C code they mirror (they never overflow for the
inputs the kernels feed them).
"""
from __future__ import annotations

import numpy as np

from microtile.importer.quant import (
    INT32_MAX,
    INT32_MIN,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
    wrap_int32,
)

srdhm = saturating_rounding_doubling_high_mul
rdbp = rounding_divide_by_pot


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def add(a, b) -> np.ndarray:
    return wrap_int32(_i64(a) + _i64(b))


def sub(a, b) -> np.ndarray:
    return wrap_int32(_i64(a) - _i64(b))


def saturating_add(a, b) -> np.ndarray:
    return np.clip(_i64(a) + _i64(b), INT32_MIN, INT32_MAX)


def saturating_sub(a, b) -> np.ndarray:
    return np.clip(_i64(a) - _i64(b), INT32_MIN, INT32_MAX)


def mul_pot(x, exponent: int) -> np.ndarray:
    """SaturatingRoundingMultiplyByPOT: saturating left shift for exponent > 0,
    rounding right shift for exponent < 0."""
    x = _i64(x)
    if exponent == 0:
        return x
    if exponent < 0:
        return rdbp(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    out = wrap_int32(x << exponent)
    out = np.where(x > threshold, INT32_MAX, out)
    return np.where(x < -threshold, INT32_MIN, out)


def mul_pot_param(x, exponent) -> np.ndarray:
    """SaturatingRoundingMultiplyByPOTParam with a per-element exponent >= 0."""
    x = _i64(x)
    exponent = np.broadcast_to(_i64(exponent), x.shape)
    threshold = (np.int64(1) << (31 - exponent)) - 1
    out = wrap_int32(x << exponent)
    out = np.where(x > threshold, INT32_MAX, out)
    out = np.where(x < -threshold, INT32_MIN, out)
    return np.where(exponent == 0, x, out)


def rescale(x, src_int_bits: int, dst_int_bits: int) -> np.ndarray:
    """gemmlowp::Rescale<dst>(FixedPoint<src>)."""
    return mul_pot(x, src_int_bits - dst_int_bits)


def rounding_half_sum(a, b) -> np.ndarray:
    s = _i64(a) + _i64(b)
    s = s + np.where(s >= 0, 1, -1)
    return np.where(s >= 0, s // 2, -((-s) // 2))  # C division truncates


def clz32(x) -> np.ndarray:
    """Leading zeros of x as uint32 (32 for 0)."""
    u = _i64(x) & 0xFFFFFFFF
    # frexp's exponent is the bit length for integers below 2**53.
    bit_length = np.frexp(u.astype(np.float64))[1].astype(np.int64)
    return np.where(u == 0, 32, 32 - bit_length)


def exp_on_interval_between_negative_one_quarter_and_0_excl(a) -> np.ndarray:
    """exp(a) for Q0 a in [-1/4, 0): Taylor expansion around -1/8."""
    constant_term = 1895147668  # exp(-1/8)
    constant_1_over_3 = 715827883
    x = add(a, 1 << 28)
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = mul_pot(x4, -2)
    poly = mul_pot(add(srdhm(add(x4_over_4, x3), constant_1_over_3), x2), -1)
    return add(constant_term, srdhm(constant_term, add(x, poly)))


_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a, int_bits: int) -> np.ndarray:
    """exp(a) for a <= 0 in Q(int_bits); result in Q0."""
    a = _i64(a)
    frac_bits = 31 - int_bits
    one_quarter = 1 << (frac_bits - 2)
    a_mod_quarter_minus_one_quarter = sub(a & (one_quarter - 1), one_quarter)
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        rescale(a_mod_quarter_minus_one_quarter, int_bits, 0))
    remainder = sub(a_mod_quarter_minus_one_quarter, a)
    for exponent, multiplier in _EXP_BARREL:
        if int_bits > exponent:
            bit = np.int64(1) << (frac_bits + exponent)
            result = np.where((remainder & bit) != 0, srdhm(result, multiplier), result)
    if int_bits > 5:
        clamp = -(1 << (36 - int_bits))
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a) -> np.ndarray:
    """1 / (1 + a) for Q0 a in [0, 1): Newton-Raphson; result in Q0."""
    half_denominator = rounding_half_sum(a, INT32_MAX)
    constant_48_over_17 = 1515870810
    constant_neg_32_over_17 = -1010580540
    one_q2 = 1 << 29
    x = add(constant_48_over_17, srdhm(half_denominator, constant_neg_32_over_17))
    for _ in range(3):
        half_denominator_times_x = srdhm(half_denominator, x)
        one_minus = sub(one_q2, half_denominator_times_x)
        x = add(x, rescale(srdhm(x, one_minus), 4, 2))
    return rescale(x, 1, 0)  # ExactMulByPot<-1> then Rescale<0>


def get_reciprocal(x, x_integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite GetReciprocal: (Q0 reciprocal scale, num_bits_over_unit) of x > 0."""
    x = _i64(x)
    headroom_plus_one = clz32(x)
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted = ((x & 0xFFFFFFFF) << headroom_plus_one) & 0xFFFFFFFF
    shifted_sum_minus_one = wrap_int32(shifted - (1 << 31))
    return one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one), num_bits_over_unit


def log_x_for_x_greater_than_or_equal_to_1(x, input_int_bits: int, output_int_bits: int) -> np.ndarray:
    """TFLite log_x_for_x_greater_than_or_equal_to_1_impl: log(x) of Q(input) x, in Q(output)."""
    accum_bits = output_int_bits + 1
    log_2 = 1488522236
    sqrt_sqrt_half = 1805811301
    sqrt_half = 1518500250
    one_quarter = 536870912
    alpha_n = 117049297
    alpha_d = 127690142
    alpha_i = 1057819769
    alpha_f = 638450708
    shifted_quarter = rescale(one_quarter, 0, accum_bits)

    z_a = _i64(x)
    z_a_headroom_plus_1 = clz32(z_a)
    r_a_tmp = mul_pot_param(z_a, z_a_headroom_plus_1 - 1)
    r_a_raw = mul_pot_param(srdhm(r_a_tmp, sqrt_half), 1)
    z_a_pow_2_adj = saturating_add(
        mul_pot_param(input_int_bits - z_a_headroom_plus_1, 31 - accum_bits), shifted_quarter)

    z_b = srdhm(z_a, sqrt_half)
    z_b_headroom = clz32(z_b) - 1
    r_b_raw = mul_pot_param(z_a, z_b_headroom)
    z_b_pow_2_adj = saturating_sub(
        mul_pot_param(input_int_bits - z_b_headroom, 31 - accum_bits), shifted_quarter)

    r = np.minimum(r_a_raw, r_b_raw)
    z_pow_2_adj = np.maximum(z_a_pow_2_adj, z_b_pow_2_adj)

    p = rounding_half_sum(r, sqrt_sqrt_half)
    q = sub(r, sqrt_sqrt_half)
    q = add(q, q)
    common_sq = srdhm(q, q)
    num = add(srdhm(q, r), srdhm(srdhm(q, common_sq), alpha_n))
    denom_minus_one_0 = add(srdhm(p, add(add(alpha_i, q), srdhm(alpha_d, common_sq))), srdhm(alpha_f, q))
    recip_denom = one_over_one_plus_x_for_x_in_0_1(denom_minus_one_0)
    num_scaled = rescale(num, 0, accum_bits)
    return rescale(add(srdhm(z_pow_2_adj, log_2), srdhm(num_scaled, recip_denom)), accum_bits, output_int_bits)

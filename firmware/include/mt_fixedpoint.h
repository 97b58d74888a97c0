/* gemmlowp-style fixed-point math used by the softmax kernels, bit-exact with
 * gemmlowp fixedpoint.h and tflite kernels/internal/common.h as TFLM builds them.
 * Mirrors host/microtile/ops/fixedpoint.py. A "Qm" value is an int32 with m
 * integer bits and 31 - m fractional bits. Internal header of mt_softmax.c. */
#ifndef MT_FIXEDPOINT_H
#define MT_FIXEDPOINT_H

#include <stdint.h>

#include "mt_quant.h"

/* Two's-complement wrapping add / sub without signed-overflow UB. */
static inline int32_t mt_fp_add(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a + (uint32_t)b);
}

static inline int32_t mt_fp_sub(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a - (uint32_t)b);
}

static inline int32_t mt_fp_mul(int32_t a, int32_t b)
{
    return mt_sat_rounding_doubling_high_mul(a, b);
}

static inline int32_t mt_fp_saturating_add(int32_t a, int32_t b)
{
    int64_t s = (int64_t)a + b;
    return s > INT32_MAX ? INT32_MAX : (s < INT32_MIN ? INT32_MIN : (int32_t)s);
}

static inline int32_t mt_fp_saturating_sub(int32_t a, int32_t b)
{
    int64_t s = (int64_t)a - b;
    return s > INT32_MAX ? INT32_MAX : (s < INT32_MIN ? INT32_MIN : (int32_t)s);
}

/* SaturatingRoundingMultiplyByPOT: saturating left shift (exponent > 0) or
 * rounding right shift (exponent < 0). */
static inline int32_t mt_fp_mul_pot(int32_t x, int exponent)
{
    if (exponent == 0) {
        return x;
    }
    if (exponent < 0) {
        return mt_rounding_divide_by_pot(x, -exponent);
    }
    {
        const int32_t threshold = (int32_t)((1ll << (31 - exponent)) - 1);
        if (x > threshold) {
            return INT32_MAX;
        }
        if (x < -threshold) {
            return INT32_MIN;
        }
        return (int32_t)((uint32_t)x << exponent);
    }
}

/* gemmlowp::Rescale<dst>(FixedPoint<src>) */
static inline int32_t mt_fp_rescale(int32_t x, int src_int_bits, int dst_int_bits)
{
    return mt_fp_mul_pot(x, src_int_bits - dst_int_bits);
}

static inline int32_t mt_fp_rounding_half_sum(int32_t a, int32_t b)
{
    int64_t sum = (int64_t)a + b;
    int64_t sign = sum >= 0 ? 1 : -1;
    return (int32_t)((sum + sign) / 2);
}

static inline int mt_fp_clz32(uint32_t x)
{
#if defined(__GNUC__)
    return x == 0 ? 32 : __builtin_clz(x);
#else
    int n = 0;
    if (x == 0) {
        return 32;
    }
    while ((x & 0x80000000u) == 0) {
        x <<= 1;
        n++;
    }
    return n;
#endif
}

/* exp(a) for Q0 a in [-1/4, 0): Taylor expansion around -1/8. */
static inline int32_t mt_fp_exp_on_interval_neg_quarter_to_0(int32_t a)
{
    const int32_t constant_term = 1895147668;  /* exp(-1/8) */
    const int32_t constant_1_over_3 = 715827883;
    int32_t x = mt_fp_add(a, 1 << 28);
    int32_t x2 = mt_fp_mul(x, x);
    int32_t x3 = mt_fp_mul(x2, x);
    int32_t x4 = mt_fp_mul(x2, x2);
    int32_t x4_over_4 = mt_fp_mul_pot(x4, -2);
    int32_t poly = mt_fp_mul_pot(
        mt_fp_add(mt_fp_mul(mt_fp_add(x4_over_4, x3), constant_1_over_3), x2), -1);
    return mt_fp_add(constant_term, mt_fp_mul(constant_term, mt_fp_add(x, poly)));
}

/* exp(a) for a <= 0 given in Q(int_bits); result in Q0. */
static inline int32_t mt_fp_exp_on_negative_values(int32_t a, int int_bits)
{
    static const int32_t barrel[7] = {1672461947, 1302514674, 790015084, 290630308,
                                      39332535, 720401, 242};
    const int frac_bits = 31 - int_bits;
    const int32_t one_quarter = (int32_t)1 << (frac_bits - 2);
    int32_t a_mod_quarter_minus_one_quarter = mt_fp_sub(a & (one_quarter - 1), one_quarter);
    int32_t result = mt_fp_exp_on_interval_neg_quarter_to_0(
        mt_fp_rescale(a_mod_quarter_minus_one_quarter, int_bits, 0));
    int32_t remainder = mt_fp_sub(a_mod_quarter_minus_one_quarter, a);
    int exponent;
    for (exponent = -2; exponent <= 4; exponent++) {
        if (int_bits > exponent) {
            uint32_t bit = (uint32_t)1 << (frac_bits + exponent);
            if ((uint32_t)remainder & bit) {
                result = mt_fp_mul(result, barrel[exponent + 2]);
            }
        }
    }
    if (int_bits > 5) {
        const int32_t clamp = -((int32_t)1 << (36 - int_bits));
        if (a < clamp) {
            result = 0;
        }
    }
    return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + a) for Q0 a in [0, 1): Newton-Raphson; result in Q0. */
static inline int32_t mt_fp_one_over_one_plus_x(int32_t a)
{
    const int32_t half_denominator = mt_fp_rounding_half_sum(a, INT32_MAX);
    const int32_t constant_48_over_17 = 1515870810;      /* Q2 */
    const int32_t constant_neg_32_over_17 = -1010580540; /* Q2 */
    int32_t x = mt_fp_add(constant_48_over_17, mt_fp_mul(half_denominator, constant_neg_32_over_17));
    int i;
    for (i = 0; i < 3; i++) {
        int32_t one_minus_half_denominator_times_x =
            mt_fp_sub((int32_t)1 << 29, mt_fp_mul(half_denominator, x));
        x = mt_fp_add(x, mt_fp_rescale(mt_fp_mul(x, one_minus_half_denominator_times_x), 4, 2));
    }
    return mt_fp_rescale(x, 1, 0); /* ExactMulByPot<-1>, then Rescale<0> */
}

/* TFLite GetReciprocal: Q0 scale with 1/x = scale * 2^-num_bits_over_unit, x > 0. */
static inline int32_t mt_fp_get_reciprocal(int32_t x, int x_integer_digits, int *num_bits_over_unit)
{
    const int headroom_plus_one = mt_fp_clz32((uint32_t)x);
    const int32_t shifted_sum_minus_one =
        (int32_t)(((uint32_t)x << headroom_plus_one) - ((uint32_t)1 << 31));
    *num_bits_over_unit = x_integer_digits - headroom_plus_one;
    return mt_fp_one_over_one_plus_x(shifted_sum_minus_one);
}

/* SaturatingRoundingMultiplyByPOTParam for exponent >= 0. */
static inline int32_t mt_fp_mul_pot_param(int32_t x, int exponent)
{
    return mt_fp_mul_pot(x, exponent);
}

/* log(x) for Q(input_int_bits) x >= 1, result in Q(output_int_bits)
 * (tflite log_x_for_x_greater_than_or_equal_to_1_impl). */
static inline int32_t mt_fp_log_x_ge_1(int32_t x, int input_int_bits, int output_int_bits)
{
    const int accum_bits = output_int_bits + 1;
    const int32_t log_2 = 1488522236;
    const int32_t sqrt_sqrt_half = 1805811301;
    const int32_t sqrt_half = 1518500250;
    const int32_t one_quarter = 536870912;
    const int32_t alpha_n = 117049297;
    const int32_t alpha_d = 127690142;
    const int32_t alpha_i = 1057819769;
    const int32_t alpha_f = 638450708;
    const int32_t shifted_quarter = mt_fp_rescale(one_quarter, 0, accum_bits);

    const int32_t z_a = x;
    const int z_a_headroom_plus_1 = mt_fp_clz32((uint32_t)z_a);
    const int32_t r_a_tmp = mt_fp_mul_pot_param(z_a, z_a_headroom_plus_1 - 1);
    const int32_t r_a_raw = mt_fp_mul_pot_param(mt_fp_mul(r_a_tmp, sqrt_half), 1);
    const int32_t z_a_pow_2_adj = mt_fp_saturating_add(
        mt_fp_mul_pot_param(input_int_bits - z_a_headroom_plus_1, 31 - accum_bits), shifted_quarter);

    const int32_t z_b = mt_fp_mul(z_a, sqrt_half);
    const int z_b_headroom = mt_fp_clz32((uint32_t)z_b) - 1;
    const int32_t r_b_raw = mt_fp_mul_pot_param(z_a, z_b_headroom);
    const int32_t z_b_pow_2_adj = mt_fp_saturating_sub(
        mt_fp_mul_pot_param(input_int_bits - z_b_headroom, 31 - accum_bits), shifted_quarter);

    const int32_t r = r_a_raw < r_b_raw ? r_a_raw : r_b_raw;
    const int32_t z_pow_2_adj = z_a_pow_2_adj > z_b_pow_2_adj ? z_a_pow_2_adj : z_b_pow_2_adj;

    const int32_t p = mt_fp_rounding_half_sum(r, sqrt_sqrt_half);
    int32_t q = mt_fp_sub(r, sqrt_sqrt_half);
    q = mt_fp_add(q, q);

    {
        const int32_t common_sq = mt_fp_mul(q, q);
        const int32_t num = mt_fp_add(mt_fp_mul(q, r), mt_fp_mul(mt_fp_mul(q, common_sq), alpha_n));
        const int32_t denom_minus_one_0 = mt_fp_add(
            mt_fp_mul(p, mt_fp_add(mt_fp_add(alpha_i, q), mt_fp_mul(alpha_d, common_sq))),
            mt_fp_mul(alpha_f, q));
        const int32_t recip_denom = mt_fp_one_over_one_plus_x(denom_minus_one_0);
        const int32_t num_scaled = mt_fp_rescale(num, 0, accum_bits);
        return mt_fp_rescale(
            mt_fp_add(mt_fp_mul(z_pow_2_adj, log_2), mt_fp_mul(num_scaled, recip_denom)),
            accum_bits, output_int_bits);
    }
}

#endif /* MT_FIXEDPOINT_H */

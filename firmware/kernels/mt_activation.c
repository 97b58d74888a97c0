/* Reference int8 activation kernels, bit-exact with TFLM. */
#include "mt_activation.h"

#include "mt_quant.h"

void mt_relu_s8_ref(const mt_relu_params *p, const int8_t *in, int8_t *out)
{
    uint32_t i;
    for (i = 0; i < p->size; ++i) {
        int32_t v = mt_requantize((int32_t)in[i] - p->input_offset, p->output_multiplier, p->output_shift);
        out[i] = (int8_t)mt_clamp(v + p->output_offset, p->act_min, p->act_max);
    }
}

void mt_relu6_s8_ref(const mt_relu6_params *p, const int8_t *in, int8_t *out)
{
    uint32_t i;
    for (i = 0; i < p->size; ++i) {
        int32_t v = in[i];
        out[i] = (int8_t)(v > p->upper ? p->upper : (v < p->lower ? p->lower : v));
    }
}

/* ---- gemmlowp fixed-point logistic, int32 raw values ---- */

/* SaturatingRoundingMultiplyByPOT with a positive exponent: saturating left shift. */
static inline int32_t mt_fp_sat_shl(int32_t x, int exponent)
{
    const int32_t threshold = (int32_t)((1u << (31 - exponent)) - 1u);
    if (x > threshold) {
        return INT32_MAX;
    }
    if (x < -threshold) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << exponent);
}

#define MT_FP_MUL(a, b) mt_sat_rounding_doubling_high_mul((a), (b))

/* exp(a) for a in [-1/4, 0), Q0.31 in and out. */
static int32_t mt_fp_exp_quarter(int32_t a)
{
    const int32_t constant_term = 1895147668; /* exp(-1/8) */
    const int32_t one_third = 715827883;
    const int32_t x = a + (1 << 28); /* Taylor expansion around -1/8 */
    const int32_t x2 = MT_FP_MUL(x, x);
    const int32_t x3 = MT_FP_MUL(x2, x);
    const int32_t x4 = MT_FP_MUL(x2, x2);
    const int32_t x4_over_4 = mt_rounding_divide_by_pot(x4, 2);
    const int32_t poly = mt_rounding_divide_by_pot(MT_FP_MUL(x4_over_4 + x3, one_third) + x2, 1);
    return constant_term + MT_FP_MUL(constant_term, x + poly);
}

/* exp(a) for a <= 0, a in Q4.27, result in Q0.31 (exp_on_negative_values). */
static int32_t mt_fp_exp_neg_q4(int32_t a)
{
    enum { FRAC = 27, INTB = 4 };
    static const int32_t mult[6] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401};
    const int32_t one_quarter = 1 << (FRAC - 2);
    const int32_t a_mod = (a & (one_quarter - 1)) - one_quarter;
    int32_t result = mt_fp_exp_quarter(mt_fp_sat_shl(a_mod, INTB));
    const int32_t remainder = (int32_t)((uint32_t)a_mod - (uint32_t)a);
    int k;
    /* barrel shifter over exponents -2 .. +3 (+4 exceeds the 4 integer bits) */
    for (k = 0; k < 6; ++k) {
        if (remainder & (1 << (FRAC - 2 + k))) {
            result = MT_FP_MUL(result, mult[k]);
        }
    }
    return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + a) for a in (0, 1), Q0.31 in and out (Newton-Raphson). */
static int32_t mt_fp_one_over_one_plus(int32_t a)
{
    const int64_t sum = (int64_t)a + INT32_MAX;
    const int32_t half_den = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2); /* RoundingHalfSum */
    int32_t x = 1515870810 + MT_FP_MUL(half_den, -1010580540);      /* 48/17 - 32/17 d, Q2.29 */
    int i;
    for (i = 0; i < 3; ++i) {
        const int32_t one_minus = (1 << 29) - MT_FP_MUL(half_den, x);
        x = x + mt_fp_sat_shl(MT_FP_MUL(x, one_minus), 2);
    }
    return mt_fp_sat_shl(x, 1);
}

/* logistic(a), a in Q4.27, result in Q0.31. */
static int32_t mt_fp_logistic_q4(int32_t a)
{
    int32_t pos;
    if (a == 0) {
        return 1 << 30;
    }
    pos = mt_fp_one_over_one_plus(mt_fp_exp_neg_q4(a > 0 ? -a : a));
    return a > 0 ? pos : INT32_MAX - pos;
}

void mt_logistic_s8_ref(const mt_logistic_params *p, const int8_t *in, int8_t *out)
{
    uint32_t i;
    for (i = 0; i < p->size; ++i) {
        const int32_t v = (int32_t)in[i] - p->input_zero_point;
        if (v <= -p->input_range_radius) {
            out[i] = INT8_MIN;
        } else if (v >= p->input_range_radius) {
            out[i] = INT8_MAX;
        } else {
            const int32_t x_q4 = mt_requantize(v, p->input_multiplier, p->input_left_shift);
            const int32_t y = mt_rounding_divide_by_pot(mt_fp_logistic_q4(x_q4), 23) - 128;
            out[i] = (int8_t)mt_clamp(y, INT8_MIN, INT8_MAX);
        }
    }
}

/* ---- int16 fixed point for HARD_SWISH ---- */

static inline int16_t mt_sat16(int32_t x)
{
    return (int16_t)(x > INT16_MAX ? INT16_MAX : (x < INT16_MIN ? INT16_MIN : x));
}

/* gemmlowp SaturatingRoundingDoublingHighMul<int16_t> */
static inline int16_t mt_srdhm16(int16_t a, int16_t b)
{
    int32_t ab;
    if (a == INT16_MIN && b == INT16_MIN) {
        return INT16_MAX;
    }
    ab = (int32_t)a * b;
    return (int16_t)((ab + (ab >= 0 ? (1 << 14) : (1 - (1 << 14)))) / (1 << 15));
}

/* SaturatingDoublingHighMul<int16_t>: truncating instead of rounding. */
static inline int16_t mt_sdhm16(int16_t a, int16_t b)
{
    if (a == INT16_MIN && b == INT16_MIN) {
        return INT16_MAX;
    }
    return (int16_t)(((int32_t)a * b) / (1 << 15));
}

/* gemmlowp RoundingDivideByPOT<int16_t>, with int16 truncation of the mask. */
static inline int16_t mt_rdbpot16(int16_t x, int exponent)
{
    const int16_t mask = (int16_t)((1ll << exponent) - 1);
    const int16_t remainder = (int16_t)(x & mask);
    const int16_t threshold = (int16_t)((mask >> 1) + (x < 0 ? 1 : 0));
    return (int16_t)((x >> exponent) + (remainder > threshold ? 1 : 0));
}

void mt_hard_swish_s8_ref(const mt_hard_swish_params *p, const int8_t *in, int8_t *out)
{
    const int16_t out_mult = (int16_t)p->output_multiplier_fixedpoint_int16;
    const int16_t relu_mult = (int16_t)p->reluish_multiplier_fixedpoint_int16;
    const int relu_exp = p->reluish_multiplier_exponent;
    uint32_t i;
    for (i = 0; i < p->size; ++i) {
        const int16_t v = (int16_t)(in[i] - p->input_zero_point);
        const int16_t hires = (int16_t)(v * (1 << 7));
        const int16_t preshift_out = mt_srdhm16(hires, out_mult);
        int16_t reluish = hires;
        int16_t o;
        if (relu_exp > 0) {
            reluish = mt_sat16((int32_t)reluish * (1 << (relu_exp - 1)));
        }
        reluish = mt_srdhm16(reluish, relu_mult);
        if (relu_exp > 0) {
            reluish = mt_sat16((int32_t)reluish * 2);
        }
        if (relu_exp < 0) {
            reluish = mt_rdbpot16(reluish, -relu_exp);
        }
        reluish = (int16_t)((reluish + (1 << 15)) >> 1);
        o = mt_rdbpot16(mt_sdhm16(reluish, preshift_out), -p->output_multiplier_exponent);
        o = (int16_t)(o + p->output_zero_point);
        out[i] = (int8_t)(o > INT8_MAX ? INT8_MAX : (o < INT8_MIN ? INT8_MIN : o));
    }
}

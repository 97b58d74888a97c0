/* Reference SOFTMAX / LOG_SOFTMAX kernels (see mt_softmax.h). */
#include "mt_softmax.h"

#include "mt_fixedpoint.h"
#include "mt_quant.h"

enum {
    MT_SCALED_DIFF_INT_BITS = 5,  /* exp() input is Q5.26 */
    MT_ACCUM_INT_BITS = 12,       /* sum of exps is Q12.19 */
    MT_LOG_OUTPUT_INT_BITS = 4
};

static int8_t mt_row_max_s8(const int8_t *row, int32_t depth)
{
    int8_t m = INT8_MIN;
    int32_t c;
    for (c = 0; c < depth; c++) {
        if (row[c] > m) {
            m = row[c];
        }
    }
    return m;
}

/* MultiplyByQuantizedMultiplierGreaterThanOne: x * 2^shift * multiplier / 2^31. */
static inline int32_t mt_scale_diff(int32_t diff, int32_t multiplier, int32_t left_shift)
{
    return mt_sat_rounding_doubling_high_mul((int32_t)((uint32_t)diff << left_shift), multiplier);
}

/* Sum over the row of exp(diff) in Q12.19, for diffs >= diff_min. */
static int32_t mt_sum_of_exps(const int8_t *row, int32_t depth, int32_t max_in_row,
                              int32_t multiplier, int32_t left_shift, int32_t diff_min)
{
    int32_t sum = 0;
    int32_t c;
    for (c = 0; c < depth; c++) {
        int32_t diff = (int32_t)row[c] - max_in_row;
        if (diff >= diff_min) {
            int32_t e = mt_fp_exp_on_negative_values(mt_scale_diff(diff, multiplier, left_shift),
                                                     MT_SCALED_DIFF_INT_BITS);
            sum = mt_fp_add(sum, mt_fp_rescale(e, 0, MT_ACCUM_INT_BITS));
        }
    }
    return sum;
}

/* One row's normalisation: the row maximum, and 1 / sum of exps as a Q0.31 scale with
 * the extra shift that puts a probability on out_bits fractional bits. */
typedef struct {
    int32_t max_in_row;
    int32_t scale;
    int exponent;
} mt_softmax_row;

static mt_softmax_row mt_softmax_row_setup(const mt_softmax_params *p, const int8_t *row, int out_bits)
{
    mt_softmax_row r;
    int num_bits_over_unit;
    r.max_in_row = mt_row_max_s8(row, p->depth);
    r.scale = mt_fp_get_reciprocal(mt_sum_of_exps(row, p->depth, r.max_in_row, p->input_multiplier,
                                                  p->input_left_shift, p->diff_min),
                                   MT_ACCUM_INT_BITS, &num_bits_over_unit);
    r.exponent = num_bits_over_unit + 31 - out_bits;
    return r;
}

/* The probability of one element on the output's scale, before adding the zero point
 * (out_min) and clamping. */
static int32_t mt_softmax_value(const mt_softmax_params *p, const mt_softmax_row *r, int8_t x)
{
    int32_t diff = (int32_t)x - r->max_in_row;
    int32_t e;
    if (diff < p->diff_min || r->exponent > 31) {
        /* TFLM aborts on exponent > 31 (sum of exps >= 512); its formula's limit is 0. */
        return 0;
    }
    e = mt_fp_exp_on_negative_values(mt_scale_diff(diff, p->input_multiplier, p->input_left_shift),
                                      MT_SCALED_DIFF_INT_BITS);
    return mt_rounding_divide_by_pot(mt_fp_mul(r->scale, e), r->exponent);
}

void mt_softmax_s8_ref(const mt_softmax_params *p, const int8_t *input, int8_t *output)
{
    int32_t i, c;
    for (i = 0; i < p->outer; i++) {
        const int8_t *row = input + (int32_t)i * p->depth;
        int8_t *out = output + (int32_t)i * p->depth;
        const mt_softmax_row r = mt_softmax_row_setup(p, row, 8);
        for (c = 0; c < p->depth; c++) {
            out[c] = (int8_t)mt_clamp(mt_softmax_value(p, &r, row[c]) - 128, -128, 127);
        }
    }
}

void mt_softmax_s8_s16_ref(const mt_softmax_params *p, const int8_t *input, int16_t *output)
{
    int32_t i, c;
    for (i = 0; i < p->outer; i++) {
        const int8_t *row = input + (int32_t)i * p->depth;
        int16_t *out = output + (int32_t)i * p->depth;
        const mt_softmax_row r = mt_softmax_row_setup(p, row, 16);
        for (c = 0; c < p->depth; c++) {
            out[c] = (int16_t)mt_clamp(mt_softmax_value(p, &r, row[c]) - 32768, -32768, 32767);
        }
    }
}

void mt_log_softmax_s8_ref(const mt_log_softmax_params *p, const int8_t *input, int8_t *output)
{
    int32_t i;
    for (i = 0; i < p->outer; i++) {
        const int8_t *row = input + (int32_t)i * p->depth;
        int8_t *out = output + (int32_t)i * p->depth;
        const int32_t max_in_row = mt_row_max_s8(row, p->depth);
        const int32_t sum = mt_sum_of_exps(row, p->depth, max_in_row, p->input_multiplier,
                                           p->input_left_shift, p->diff_min);
        const int32_t log_sum = mt_fp_log_x_ge_1(sum, MT_ACCUM_INT_BITS, MT_SCALED_DIFF_INT_BITS);
        const int32_t rescaled_min = mt_requantize(mt_fp_add(log_sum, INT32_MIN), p->reverse_scaling_divisor,
                                                   -p->reverse_scaling_right_shift);
        const int32_t adjusted_diff_min = (p->diff_min - 1) > rescaled_min ? (p->diff_min - 1) : rescaled_min;
        int32_t c;
        for (c = 0; c < p->depth; c++) {
            int32_t diff = (int32_t)row[c] - max_in_row;
            if (diff > adjusted_diff_min) {
                int32_t in_q5 = mt_requantize(diff, p->input_multiplier, p->input_left_shift);
                int32_t v = mt_rounding_divide_by_pot(
                                mt_fp_sub(in_q5, log_sum),
                                31 - MT_SCALED_DIFF_INT_BITS - MT_LOG_OUTPUT_INT_BITS) + 127;
                out[c] = (int8_t)mt_clamp(v, -128, 127);
            } else {
                out[c] = -128;
            }
        }
    }
}

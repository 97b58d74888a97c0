/* Reference int8 ADD and MUL (TFLM reference_integer_ops::AddFunc / MulElementwise). */
#include "mt_elementwise.h"

#include "mt_quant.h"

/* MultiplyByQuantizedMultiplierSmallerThanOneExp (shift <= 0), double rounding. */
static inline int32_t mt_mul_smaller_than_one(int32_t x, int32_t multiplier, int32_t shift)
{
    return mt_rounding_divide_by_pot(mt_sat_rounding_doubling_high_mul(x, multiplier), -shift);
}

static inline int8_t mt_add_one(const mt_add_params *p, int8_t a, int8_t b)
{
    const int32_t x1 = (p->input1_offset + a) * (1 << p->left_shift);
    const int32_t x2 = (p->input2_offset + b) * (1 << p->left_shift);
    const int32_t s1 = mt_mul_smaller_than_one(x1, p->input1_multiplier, p->input1_shift);
    const int32_t s2 = mt_mul_smaller_than_one(x2, p->input2_multiplier, p->input2_shift);
    const int32_t raw = mt_mul_smaller_than_one(s1 + s2, p->output_multiplier, p->output_shift) + p->output_offset;
    return (int8_t)mt_clamp(raw, p->act_min, p->act_max);
}

static inline int8_t mt_mul_one(const mt_mul_params *p, int8_t a, int8_t b)
{
    const int32_t prod = (p->input1_offset + a) * (p->input2_offset + b);
    const int32_t raw = mt_requantize(prod, p->output_multiplier, p->output_shift) + p->output_offset;
    return (int8_t)mt_clamp(raw, p->act_min, p->act_max);
}

/* Odometer over the broadcast dimensions: advance the index and both input offsets
 * by one output element. */
static inline void mt_bcast_next(const mt_broadcast *b, int32_t idx[MT_BCAST_MAX_DIMS], int32_t *o1, int32_t *o2)
{
    int d;
    for (d = MT_BCAST_MAX_DIMS - 1; d >= 0; --d) {
        *o1 += b->strides1[d];
        *o2 += b->strides2[d];
        if (++idx[d] < b->dims[d]) {
            return;
        }
        *o1 -= b->strides1[d] * b->dims[d];
        *o2 -= b->strides2[d] * b->dims[d];
        idx[d] = 0;
    }
}

void mt_add_s8_ref(const mt_add_params *p, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    uint32_t i;
    if (p->bcast.ndims == 0) {
        for (i = 0; i < p->size; ++i) {
            out[i] = mt_add_one(p, in1[i], in2[i]);
        }
    } else {
        int32_t idx[MT_BCAST_MAX_DIMS] = {0};
        int32_t o1 = 0, o2 = 0;
        for (i = 0; i < p->size; ++i) {
            out[i] = mt_add_one(p, in1[o1], in2[o2]);
            mt_bcast_next(&p->bcast, idx, &o1, &o2);
        }
    }
}

void mt_mul_s8_ref(const mt_mul_params *p, const int8_t *in1, const int8_t *in2, int8_t *out)
{
    uint32_t i;
    if (p->bcast.ndims == 0) {
        for (i = 0; i < p->size; ++i) {
            out[i] = mt_mul_one(p, in1[i], in2[i]);
        }
    } else {
        int32_t idx[MT_BCAST_MAX_DIMS] = {0};
        int32_t o1 = 0, o2 = 0;
        for (i = 0; i < p->size; ++i) {
            out[i] = mt_mul_one(p, in1[o1], in2[o2]);
            mt_bcast_next(&p->bcast, idx, &o1, &o2);
        }
    }
}

/* Optimised SOFTMAX, int8 -> int8; bit-exact with TFLM (and mt_softmax_s8_ref).
 *
 * TFLM's per-element work depends on the element only through diff = x - row max,
 * an integer in [-255, 0]: the rescaled exp(diff) (Q0.31) and its Q12.19 copy that is
 * summed. The host evaluates the first with the same fixed-point arithmetic for all
 * 256 diffs (0 where diff < diff_min) and stores it as one table indexed by -diff; the
 * Q12.19 copy is its rounding shift by 12 (gemmlowp's Rescale of a non-negative
 * value: (e + 2^11) >> 12), computed in the sum loop instead of a second 1 KB table
 * (the ROM rule of issue 8). Per row the kernel then finds the max (byte-SIMD), sums
 * (one load, one add, one shift and one add per element), takes TFLM's fixed-point
 * reciprocal once, and per element does one table load, the rounding doubling high
 * multiply and the rounding shift.
 * Always inlined: model.c calls it with a static const parameter struct. */
#ifndef MT_SOFTMAX_OPT_H
#define MT_SOFTMAX_OPT_H

#include <stdint.h>
#include <string.h>

#include "mt_dsp.h"
#include "mt_fixedpoint.h"
#include "mt_requant_opt.h"

typedef struct {
    int32_t outer;             /* rows */
    int32_t depth;             /* row length, < 4096 */
    const int32_t *exp_q31;    /* [256] exp(diff) in Q0.31 at -diff, 0 below diff_min */
} mt_softmax_opt_params;

static MT_ALWAYS_INLINE int32_t mt_softmax_row_max(const int8_t *row, int32_t depth)
{
    uint32_t m4 = 0x80808080u;
    int32_t c = 0;
    for (; c + 4 <= depth; c += 4) {
        m4 = mt_max_s8x4(m4, mt_read_u32(row + c));
    }
    int32_t m = -128;
    for (int i = 0; i < 32; i += 8) {
        const int32_t v = (int8_t)(uint8_t)(m4 >> i);
        m = v > m ? v : m;
    }
    for (; c < depth; c++) {
        m = row[c] > m ? row[c] : m;
    }
    return m;
}

static MT_ALWAYS_INLINE void mt_softmax_s8_opt(const mt_softmax_opt_params *p, const int8_t *input,
                                               int8_t *output)
{
    for (int32_t i = 0; i < p->outer; i++) {
        const int8_t *row = input + i * p->depth;
        int8_t *out = output + i * p->depth;
        const int32_t max_in_row = mt_softmax_row_max(row, p->depth);
        int32_t sum = 0;
        for (int32_t c = 0; c < p->depth; c++) {
            /* the Q12.19 value (unsigned: exp(0) = 2^31 - 1 plus the rounding overflows
             * int32); < 4096 * 2^19 summed: no overflow */
            sum += (int32_t)(((uint32_t)p->exp_q31[max_in_row - row[c]] + (1u << 11)) >> 12);
        }
        int num_bits_over_unit;
        const int32_t scale = mt_fp_get_reciprocal(sum, 12, &num_bits_over_unit);
        const int exponent = num_bits_over_unit + 31 - 8; /* >= 23: the row max contributes 2^19 */
        if (exponent > 31) {
            /* TFLM aborts here (sum of exps >= 512); the reference kernel gives -128 */
            memset(out, -128, (size_t)p->depth);
            continue;
        }
        const uint32_t half = 1u << (exponent - 1);
        for (int32_t c = 0; c < p->depth; c++) {
            /* SaturatingRoundingDoublingHighMul of two non-negative values: no saturation,
             * and the truncating division is a floor */
            const int64_t prod = (int64_t)scale * p->exp_q31[max_in_row - row[c]] + (1 << 30);
            const uint32_t v = (uint32_t)(prod >> 31);
            /* RoundingDivideByPOT of a non-negative value, then the -128 zero point */
            out[c] = (int8_t)mt_ssat8((int32_t)((v + half) >> exponent) - 128);
        }
    }
}

/* Shared (not specialised) copy: mt_softmax_opt.c. */
void mt_softmax_s8_opt_shared(const mt_softmax_opt_params *p, const int8_t *input, int8_t *output);

#endif /* MT_SOFTMAX_OPT_H */

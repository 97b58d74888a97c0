/* Optimised int8 ADD (same-shape inputs); bit-exact with TFLM's AddFunc.
 *
 * TFLM rescales each input on its own before the sum:
 *   s_i = MultiplyByQuantizedMultiplierSmallerThanOneExp((x_i + offset_i) << 20, m_i, shift_i)
 * which depends on one int8 value only, so the host tabulates it offline for all 256
 * inputs (tables stored doubled, indexed by the input byte as unsigned). The kernel
 * then does per element: two byte extracts, two table loads, one add and the output
 * requantisation (mt_requant_fast: SMMULR, sign fix, folded zero point, shift, SSAT);
 * 4 elements share one word load per input, one packed clamp and one word store.
 *
 * Always inlined: model.c calls it with a static const mt_add_opt_params, so the
 * output multiplier, shift, rounding constant and clamp become immediates. */
#ifndef MT_ADD_OPT_H
#define MT_ADD_OPT_H

#include <stdint.h>

#include "mt_dsp.h"
#include "mt_requant_opt.h"

typedef struct {
    uint32_t size;          /* elements */
    int32_t out_mult;       /* output multiplier */
    int32_t out_k;          /* 2^(right-1) + (output zero point << right) */
    int32_t out_right;      /* right shift >= 1 */
    int32_t act_min, act_max;
    const int32_t *table1;  /* [256] 2 * s_1 for input byte u (value (int8_t)u) */
    const int32_t *table2;  /* [256] 2 * s_2 */
} mt_add_opt_params;

static MT_ALWAYS_INLINE int32_t mt_add_opt_one(const mt_add_opt_params *p, uint32_t a, uint32_t b)
{
    const int32_t acc2 = p->table1[a] + p->table2[b];
    return mt_ssat8(mt_requant_fast(acc2, p->out_mult, p->out_k, p->out_right));
}

static MT_ALWAYS_INLINE void mt_add_s8_opt(const mt_add_opt_params *p, const int8_t *in1, const int8_t *in2,
                                           int8_t *out)
{
    const uint32_t n4 = p->size / 4;
    for (uint32_t i = 0; i < n4; i++) {
        const uint32_t a = mt_read_u32(in1);
        const uint32_t b = mt_read_u32(in2);
        const int32_t r0 = mt_add_opt_one(p, a & 0xFFu, b & 0xFFu);
        const int32_t r1 = mt_add_opt_one(p, (a >> 8) & 0xFFu, (b >> 8) & 0xFFu);
        const int32_t r2 = mt_add_opt_one(p, (a >> 16) & 0xFFu, (b >> 16) & 0xFFu);
        const int32_t r3 = mt_add_opt_one(p, a >> 24, b >> 24);
        uint32_t v = mt_pack_s8x4(r0, r1, r2, r3);
        if (p->act_min > -128) {
            v = mt_max_s8x4(v, (uint32_t)(uint8_t)p->act_min * 0x01010101u);
        }
        if (p->act_max < 127) {
            v = mt_min_s8x4(v, (uint32_t)(uint8_t)p->act_max * 0x01010101u);
        }
        mt_write_u32(out, v);
        in1 += 4;
        in2 += 4;
        out += 4;
    }
    for (uint32_t i = 0; i < (p->size & 3u); i++) {
        int32_t r = mt_add_opt_one(p, (uint8_t)in1[i], (uint8_t)in2[i]);
        r = r < p->act_min ? p->act_min : r;
        out[i] = (int8_t)(r > p->act_max ? p->act_max : r);
    }
}

/* Shared (not specialised) copy: mt_add_opt.c. */
void mt_add_s8_opt_shared(const mt_add_opt_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);

#endif /* MT_ADD_OPT_H */

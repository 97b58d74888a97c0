/* The output step shared by the optimised matmul kernels (mt_matmul_opt.c) and the
 * pruned ones (mt_pruned_opt.c): one int32 accumulator -> int8, bit-exact with TFLM. */
#ifndef MT_GEMM_OUT_OPT_H
#define MT_GEMM_OUT_OPT_H

#include <stdint.h>

#include "mt_dsp.h"
#include "mt_requant_opt.h"

/* TFLM's MultiplyByQuantizedMultiplier with one 64-bit multiply-accumulate:
 * SaturatingRoundingDoublingHighMul(a, m) == floor((a*m + 2^30) / 2^31) for every
 * a and every m >= 0 (TFLM's truncating division of ab + (1 - 2^30) for ab < 0 is
 * the same floor; the saturating case a == m == INT32_MIN cannot occur since m >= 0),
 * then RoundingDivideByPOT (round half away from zero) as in TFLM. */
static inline int32_t mt_req(int32_t acc, int32_t m, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    const int32_t a = (int32_t)((uint32_t)acc << left);
    const int32_t t = (int32_t)(((int64_t)a * m + (1ll << 30)) >> 31);
    const uint32_t mask = (1u << right) - 1u;
    const int32_t rem = (int32_t)((uint32_t)t & mask);
    const int32_t threshold = (int32_t)(mask >> 1) + (t < 0 ? 1 : 0);
    return (t >> right) + (rem > threshold ? 1 : 0);
}

/* One output: requantised (MODE 0: exact, else mt_requant_fast on the doubled
 * accumulator), clamped (MODE 2: SSAT, the activation range is the int8 range). */
static inline int8_t mt_out8(int32_t acc, int32_t m, int32_t q1, int32_t q2, int mode, int32_t lo,
                             int32_t hi, int32_t zp)
{
    int32_t y;
    if (mode == 0) {
        y = mt_req(acc, m, q1) + zp;
    } else {
        y = mt_requant_fast((int32_t)((uint32_t)acc << 1), m, q1, q2);
    }
    if (mode == 2) {
        return (int8_t)mt_ssat8(y);
    }
    y = y < lo ? lo : y;
    return (int8_t)(y > hi ? hi : y);
}

#endif /* MT_GEMM_OUT_OPT_H */

/* Fast TFLite requantisation for the optimised kernels, bit-exact with
 * mt_requantize() under conditions the host checks offline per channel.
 *
 * TFLite's MultiplyByQuantizedMultiplier for a negative shift (right = -shift >= 1):
 *   h = SaturatingRoundingDoublingHighMul(acc, m) = trunc((acc*m + nudge) / 2^31)
 *   y = RoundingDivideByPOT(h, right)              (round half away from zero)
 * Both roundings reduce to floors:
 *   h = floor((acc*m + 2^30) / 2^31) = floor((2acc*m + 2^31) / 2^32) = SMMULR(2acc, m)
 *     (for ab < 0, trunc((ab + 1 - 2^30)/2^31) = -floor((-ab + 2^30 - 1)/2^31)
 *      = floor((ab + 2^30)/2^31); ties round up in both cases; m is never INT32_MIN)
 *   y = floor((h - (h < 0) + 2^(right-1)) / 2^right)
 * and the output zero point folds in as a multiple of 2^right:
 *   y + zp = (h + (h >> 31) + k) >> right,   k = 2^(right-1) + (zp << right).
 * Valid when 2acc, |acc| + 1 + |k| fit in int32 (checked offline from the bias and
 * weights: host/microtile/ops/requant_opt.py). The kernels accumulate 2acc directly
 * (weights and bias stored doubled), so the doubling costs nothing. */
#ifndef MT_REQUANT_OPT_H
#define MT_REQUANT_OPT_H

#include <stdint.h>
#include <string.h>

#include "mt_dsp.h"

#if defined(__GNUC__)
#define MT_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MT_ALWAYS_INLINE inline
#endif

/* (2acc, multiplier, k, right) -> requantised value + zero point, not yet clamped. */
static MT_ALWAYS_INLINE int32_t mt_requant_fast(int32_t acc2, int32_t mult, int32_t k, int32_t right)
{
    int32_t h = mt_smmulr(acc2, mult);
    h = h + (h >> 31);
    return (h + k) >> right;
}

/* Four int8 results (already saturated to [-128, 127]) packed into one word, byte 0 first. */
static MT_ALWAYS_INLINE uint32_t mt_pack_s8x4(int32_t r0, int32_t r1, int32_t r2, int32_t r3)
{
#if MT_HAS_DSP
    uint32_t r = (uint32_t)r0;
    __asm__("bfi %0, %1, #8, #8\n\tbfi %0, %2, #16, #8\n\tbfi %0, %3, #24, #8"
            : "+r"(r) : "r"(r1), "r"(r2), "r"(r3));
    return r;
#else
    return ((uint32_t)r0 & 0xFFu) | (((uint32_t)r1 & 0xFFu) << 8) | (((uint32_t)r2 & 0xFFu) << 16) |
           ((uint32_t)r3 << 24);
#endif
}

/* Two consecutive words of a word-aligned stream in one load (LDRD; gcc splits a
 * 64-bit C load into two LDRs). */
static MT_ALWAYS_INLINE void mt_read_2x32(const int32_t *p, uint32_t *lo, uint32_t *hi)
{
#if MT_HAS_DSP
    uint32_t a, b;
    __asm__("ldrd %0, %1, %2" : "=r"(a), "=r"(b) : "m"(*(const uint64_t *)(const void *)p));
    *lo = a;
    *hi = b;
#else
    uint64_t v;
    memcpy(&v, p, 8);
    *lo = (uint32_t)v; /* little-endian: the first word is the low half */
    *hi = (uint32_t)(v >> 32);
#endif
}

#endif /* MT_REQUANT_OPT_H */

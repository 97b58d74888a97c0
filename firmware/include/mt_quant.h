/* TFLite's integer requantisation arithmetic (double rounding), bit-exact with
 * TFLM's reference kernels. Mirrors host/microtile/importer/quant.py. */
#ifndef MT_QUANT_H
#define MT_QUANT_H

#include <stdint.h>

static inline int32_t mt_sat_rounding_doubling_high_mul(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
    return (int32_t)((ab + nudge) / (1ll << 31)); /* truncating division, as in C++ */
}

static inline int32_t mt_rounding_divide_by_pot(int32_t x, int exponent)
{
    int32_t mask = (int32_t)((1ll << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* MultiplyByQuantizedMultiplier: x * multiplier * 2^(shift-31), rounded twice. */
static inline int32_t mt_requantize(int32_t x, int32_t multiplier, int32_t shift)
{
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    /* shift through uint32 so an overflow wraps as on the target instead of being UB */
    int32_t shifted = (int32_t)((uint32_t)x << left);
    return mt_rounding_divide_by_pot(mt_sat_rounding_doubling_high_mul(shifted, multiplier), right);
}

static inline int32_t mt_clamp(int32_t x, int32_t lo, int32_t hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

#endif /* MT_QUANT_H */

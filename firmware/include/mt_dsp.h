/* Cortex-M DSP-extension intrinsics used by the optimised kernels, with portable C
 * versions so the same kernels build for the host (native tests), for cores without
 * the DSP extension (Cortex-M0/M3), and for M4/M7 where each maps to one instruction.
 * Semantics follow the Armv7E-M architecture reference manual. */
#ifndef MT_DSP_H
#define MT_DSP_H

#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && (__ARM_FEATURE_DSP == 1) && !defined(MT_NO_DSP)
#define MT_HAS_DSP 1
#else
#define MT_HAS_DSP 0
#endif

/* A 32-bit word from any address (one LDR on M4/M7, which allow unaligned LDR). */
static inline uint32_t mt_read_u32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline void mt_write_u32(void *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

#if MT_HAS_DSP

/* SMLAD: acc + lo16(a)*lo16(b) + hi16(a)*hi16(b) */
static inline int32_t mt_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    int32_t r;
    __asm__("smlad %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}

/* SXTB16: sign-extend bytes 0 and 2 into two halfwords. */
static inline uint32_t mt_sxtb16(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1" : "=r"(r) : "r"(x));
    return r;
}

/* SXTB16 with ROR #8: sign-extend bytes 1 and 3 into two halfwords. */
static inline uint32_t mt_sxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

/* SXTAB16: a + sign-extended bytes 0 and 2 of b, per halfword. */
static inline uint32_t mt_sxtab16(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* QADD16 / SADD16: per-halfword add (saturating / wrapping). */
static inline uint32_t mt_sadd16(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm__("sadd16 %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* PKHBT: low half of a, high half of (b << shift). */
#define mt_pkhbt(a, b, shift) __extension__({ \
    uint32_t _r; \
    __asm__("pkhbt %0, %1, %2, lsl %3" : "=r"(_r) : "r"(a), "r"(b), "I"(shift)); \
    _r; })

/* PKHTB: high half of a, low half of (b >> shift) (arithmetic). */
#define mt_pkhtb(a, b, shift) __extension__({ \
    uint32_t _r; \
    if ((shift) == 0) { \
        __asm__("pkhtb %0, %1, %2" : "=r"(_r) : "r"(a), "r"(b)); \
    } else { \
        __asm__("pkhtb %0, %1, %2, asr %3" : "=r"(_r) : "r"(a), "r"(b), "I"(shift)); \
    } \
    _r; })

/* SMLABB / SMLATT: acc + lo16(a)*lo16(b) / acc + hi16(a)*hi16(b). */
static inline int32_t mt_smlabb(uint32_t a, uint32_t b, int32_t acc)
{
    int32_t r;
    __asm__("smlabb %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}

static inline int32_t mt_smlatt(uint32_t a, uint32_t b, int32_t acc)
{
    int32_t r;
    __asm__("smlatt %0, %1, %2, %3" : "=r"(r) : "r"(a), "r"(b), "r"(acc));
    return r;
}

/* SMMULR: high word of a*b rounded, floor((a*b + 2^31) / 2^32). */
static inline int32_t mt_smmulr(int32_t a, int32_t b)
{
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* SXTAB16 with ROR #8: a + sign-extended bytes 1 and 3 of b, per halfword. */
static inline uint32_t mt_sxtab16_ror8(uint32_t a, uint32_t b)
{
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* SSAT #8: clamp to [-128, 127]. */
static inline int32_t mt_ssat8(int32_t x)
{
    int32_t r;
    __asm__("ssat %0, #8, %1" : "=r"(r) : "r"(x));
    return r;
}

/* Per signed byte max / min of two words (SSUB8 sets GE, SEL picks). */
static inline uint32_t mt_max_s8x4(uint32_t a, uint32_t b)
{
    uint32_t r, t;
    __asm__("ssub8 %1, %2, %3\n\tsel %0, %2, %3" : "=r"(r), "=&r"(t) : "r"(a), "r"(b) : "cc");
    return r;
}

static inline uint32_t mt_min_s8x4(uint32_t a, uint32_t b)
{
    uint32_t r, t;
    __asm__("ssub8 %1, %2, %3\n\tsel %0, %3, %2" : "=r"(r), "=&r"(t) : "r"(a), "r"(b) : "cc");
    return r;
}

#else /* portable versions */

static inline int32_t mt_lo16(uint32_t x) { return (int32_t)(int16_t)(x & 0xFFFFu); }
static inline int32_t mt_hi16(uint32_t x) { return (int32_t)(int16_t)(x >> 16); }
static inline uint32_t mt_pack16(int32_t lo, int32_t hi)
{
    return ((uint32_t)(uint16_t)lo) | ((uint32_t)(uint16_t)hi << 16);
}

static inline int32_t mt_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    /* wraps like the instruction (its Q flag is never read here) */
    return (int32_t)((uint32_t)acc + (uint32_t)(mt_lo16(a) * mt_lo16(b)) + (uint32_t)(mt_hi16(a) * mt_hi16(b)));
}

static inline uint32_t mt_sxtb16(uint32_t x)
{
    return mt_pack16((int8_t)(x & 0xFFu), (int8_t)((x >> 16) & 0xFFu));
}

static inline uint32_t mt_sxtb16_ror8(uint32_t x)
{
    return mt_pack16((int8_t)((x >> 8) & 0xFFu), (int8_t)((x >> 24) & 0xFFu));
}

static inline uint32_t mt_sxtab16(uint32_t a, uint32_t b)
{
    return mt_pack16(mt_lo16(a) + (int8_t)(b & 0xFFu), mt_hi16(a) + (int8_t)((b >> 16) & 0xFFu));
}

static inline uint32_t mt_sadd16(uint32_t a, uint32_t b)
{
    return mt_pack16(mt_lo16(a) + mt_lo16(b), mt_hi16(a) + mt_hi16(b));
}

#define mt_pkhbt(a, b, shift) (((uint32_t)(a) & 0xFFFFu) | (((uint32_t)(b) << (shift)) & 0xFFFF0000u))
#define mt_pkhtb(a, b, shift) (((uint32_t)(a) & 0xFFFF0000u) | ((uint32_t)((int32_t)(b) >> (shift)) & 0xFFFFu))

static inline int32_t mt_smlabb(uint32_t a, uint32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(mt_lo16(a) * mt_lo16(b)));
}

static inline int32_t mt_smlatt(uint32_t a, uint32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(mt_hi16(a) * mt_hi16(b)));
}

static inline int32_t mt_smmulr(int32_t a, int32_t b)
{
    /* arithmetic >> of a negative int64, as gcc and every Arm compiler define it */
    return (int32_t)(((int64_t)a * (int64_t)b + 0x80000000ll) >> 32);
}

static inline uint32_t mt_sxtab16_ror8(uint32_t a, uint32_t b)
{
    return mt_pack16(mt_lo16(a) + (int8_t)((b >> 8) & 0xFFu), mt_hi16(a) + (int8_t)((b >> 24) & 0xFFu));
}

static inline int32_t mt_ssat8(int32_t x)
{
    return x < -128 ? -128 : (x > 127 ? 127 : x);
}

static inline uint32_t mt_max_s8x4(uint32_t a, uint32_t b)
{
    uint32_t r = 0;
    for (int i = 0; i < 32; i += 8) {
        int8_t x = (int8_t)((a >> i) & 0xFFu), y = (int8_t)((b >> i) & 0xFFu);
        r |= (uint32_t)(uint8_t)(x > y ? x : y) << i;
    }
    return r;
}

static inline uint32_t mt_min_s8x4(uint32_t a, uint32_t b)
{
    uint32_t r = 0;
    for (int i = 0; i < 32; i += 8) {
        int8_t x = (int8_t)((a >> i) & 0xFFu), y = (int8_t)((b >> i) & 0xFFu);
        r |= (uint32_t)(uint8_t)(x < y ? x : y) << i;
    }
    return r;
}

#endif /* MT_HAS_DSP */

#endif /* MT_DSP_H */

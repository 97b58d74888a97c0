/* Optimised DEPTHWISE_CONV_2D, int8, depth multiplier 1; bit-exact with TFLM.
 *
 * Schedule: output pixel by output pixel; per pixel, 4 channels at a time: one
 * word load brings 4 channels of one tap, two SXTAB16 add the input offset and
 * split them into (c0, c2) and (c1, c3) halfword pairs, and SMLABB/SMLATT
 * accumulate each channel against weights stored offline as doubled int16 pairs
 * in the same order. Per tap and 4 channels: LDR, 2 SXTAB16, 2 weight words,
 * 4 multiply-accumulates. A 3x3 window inside the image is fully unrolled with
 * constant offsets; border pixels walk the clipped window. Requantisation is
 * mt_requant_fast (SMMULR, shift, saturate), results are packed into one word and
 * clamped to the activation range with byte-SIMD max/min.
 *
 * mt_depthwise_s8_opt is always inlined: model.c calls it with a static const
 * parameter struct, so the compiler specialises it per layer (channel count, row
 * stride, kernel size become immediates).
 *
 * Parameter stream `data` (int32 words, written by host/microtile/ops/conv.py):
 *   per group of 4 channels: bias2[4], taps x {W02, W13}, {mult, k} x 4, right[4]
 *   then per remaining channel (channels % 4): bias2, mult, k, right, taps x w2
 * where bias2 = 2 * bias, W02 = (2w[c0], 2w[c2]) and W13 = (2w[c1], 2w[c3]) as
 * halfword pairs, w2 = 2w. */
#ifndef MT_DEPTHWISE_OPT_H
#define MT_DEPTHWISE_OPT_H

#include <stdint.h>

#include "mt_dsp.h"
#include "mt_requant_opt.h"

typedef struct {
    int32_t batches;
    int32_t in_h, in_w, channels;
    int32_t out_h, out_w;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_h, pad_w;
    int32_t input_offset;      /* -input zero point */
    int32_t act_min, act_max;  /* within [-128, 127] */
    const int32_t *data;       /* parameter stream, see above */
} mt_depthwise_opt_params;

/* The per-group stream length in words for `taps` filter taps. */
#define MT_DW_GROUP_WORDS(taps) (4 + 2 * (taps) + 12)
#define MT_DW_REM_WORDS(taps) (4 + (taps))

#if MT_HAS_DSP
/* One tap, 4 channels. One volatile asm block per tap keeps the compiler from
 * hoisting the loads of all taps ahead of the arithmetic (and spilling them):
 * LDR, LDRD, 2 SXTAB16, 4 SMLAxy. */
#define MT_DW_TAP(ptr, wp) do { \
        uint32_t x_, e_, w0_, w1_; \
        __asm__ volatile( \
            "ldr %[x], %[in]\n\t" \
            "ldrd %[w0], %[w1], %[w]\n\t" \
            "sxtab16 %[e], %[off], %[x]\n\t" \
            "sxtab16 %[x], %[off], %[x], ror #8\n\t" \
            "smlabb %[a0], %[e], %[w0], %[a0]\n\t" \
            "smlatt %[a2], %[e], %[w0], %[a2]\n\t" \
            "smlabb %[a1], %[x], %[w1], %[a1]\n\t" \
            "smlatt %[a3], %[x], %[w1], %[a3]" \
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), \
              [x] "=&r"(x_), [e] "=&r"(e_), [w0] "=&r"(w0_), [w1] "=&r"(w1_) \
            : [in] "m"(*(const uint32_t *)(const void *)(ptr)), \
              [w] "m"(*(const uint64_t *)(const void *)(wp)), [off] "r"(off2)); \
    } while (0)

/* Requantise two channels: q points at {mult, k} x 2, rights at right[2]. */
#define MT_DW_REQ2(X, Y, Q, R) do { \
        uint32_t t0_, t1_; \
        __asm__ volatile( \
            "ldrd %[t0], %[t1], %[mk0]\n\t" \
            "smmulr %[ax], %[ax], %[t0]\n\t" \
            "add %[ax], %[ax], %[ax], asr #31\n\t" \
            "add %[ax], %[ax], %[t1]\n\t" \
            "ldrd %[t0], %[t1], %[mk1]\n\t" \
            "smmulr %[ay], %[ay], %[t0]\n\t" \
            "add %[ay], %[ay], %[ay], asr #31\n\t" \
            "add %[ay], %[ay], %[t1]\n\t" \
            "ldrd %[t0], %[t1], %[r]\n\t" \
            "asr %[ax], %[ax], %[t0]\n\t" \
            "asr %[ay], %[ay], %[t1]\n\t" \
            "ssat %[ax], #8, %[ax]\n\t" \
            "ssat %[ay], #8, %[ay]" \
            : [ax] "+r"(X), [ay] "+r"(Y), [t0] "=&r"(t0_), [t1] "=&r"(t1_) \
            : [mk0] "m"(*(const uint64_t *)(const void *)(Q)), \
              [mk1] "m"(*(const uint64_t *)(const void *)((Q) + 2)), \
              [r] "m"(*(const uint64_t *)(const void *)(R))); \
    } while (0)
#else
#define MT_DW_TAP(ptr, wp) do { \
        uint32_t w0_, w1_; \
        mt_read_2x32(wp, &w0_, &w1_); \
        const uint32_t x_ = mt_read_u32(ptr); \
        const uint32_t e_ = mt_sxtab16(off2, x_); \
        const uint32_t o_ = mt_sxtab16_ror8(off2, x_); \
        a0 = mt_smlabb(e_, w0_, a0); \
        a2 = mt_smlatt(e_, w0_, a2); \
        a1 = mt_smlabb(o_, w1_, a1); \
        a3 = mt_smlatt(o_, w1_, a3); \
    } while (0)

#define MT_DW_REQ2(x, y, q, rights) do { \
        x = mt_ssat8(mt_requant_fast(x, (q)[0], (q)[1], (rights)[0])); \
        y = mt_ssat8(mt_requant_fast(y, (q)[2], (q)[3], (rights)[1])); \
    } while (0)
#endif

/* Requantise, pack, clamp and store the 4 channels of one group;
 * q = {mult, k} x 4 channels, right[4]. */
static MT_ALWAYS_INLINE void mt_dw_store4(const mt_depthwise_opt_params *p, const int32_t *q,
                                          int32_t a0, int32_t a1, int32_t a2, int32_t a3, int8_t *out)
{
    MT_DW_REQ2(a0, a1, q, q + 8);
    MT_DW_REQ2(a2, a3, q + 4, q + 10);
    uint32_t v = mt_pack_s8x4(a0, a1, a2, a3);
    if (p->act_min > -128) {
        v = mt_max_s8x4(v, (uint32_t)(uint8_t)p->act_min * 0x01010101u);
    }
    if (p->act_max < 127) {
        v = mt_min_s8x4(v, (uint32_t)(uint8_t)p->act_max * 0x01010101u);
    }
    mt_write_u32(out, v);
}

static MT_ALWAYS_INLINE int8_t mt_dw_store1(const mt_depthwise_opt_params *p, const int32_t *q, int32_t acc)
{
    int32_t r = mt_ssat8(mt_requant_fast(acc, q[0], q[1], q[2]));
    r = r < p->act_min ? p->act_min : r;
    r = r > p->act_max ? p->act_max : r;
    return (int8_t)r;
}

/* One output pixel, window clipped to rows [0, ky_n) x cols [0, kx_n) starting at
 * tap (ky0, kx0); `in` points at the input pixel of tap (ky0, kx0), channel 0. */
static MT_ALWAYS_INLINE void mt_dw_pixel_clipped(const mt_depthwise_opt_params *p, const int8_t *in,
                                                 int32_t ky0, int32_t kx0, int32_t ky_n, int32_t kx_n,
                                                 int8_t *out)
{
    const int32_t c_n = p->channels;
    const int32_t taps = p->k_h * p->k_w;
    const int32_t in_row = p->in_w * c_n;
    const uint32_t off2 = (uint32_t)(uint16_t)p->input_offset * 0x00010001u;
    const int32_t *d = p->data;
    for (int32_t g = 0; g < c_n / 4; g++) {
        uint32_t b0, b1, b2, b3;
        mt_read_2x32(d, &b0, &b1);
        mt_read_2x32(d + 2, &b2, &b3);
        int32_t a0 = (int32_t)b0, a1 = (int32_t)b1, a2 = (int32_t)b2, a3 = (int32_t)b3;
        const int32_t *w = d + 4 + 2 * (ky0 * p->k_w + kx0);
        const int8_t *row = in + 4 * g;
        for (int32_t ky = 0; ky < ky_n; ky++) {
            const int8_t *ip = row;
            const int32_t *wk = w;
            for (int32_t kx = 0; kx < kx_n; kx++) {
                MT_DW_TAP(ip, wk);
                ip += c_n;
                wk += 2;
            }
            row += in_row;
            w += 2 * p->k_w;
        }
        d += 4 + 2 * taps;
        mt_dw_store4(p, d, a0, a1, a2, a3, out + 4 * g);
        d += 12;
    }
    for (int32_t c = c_n & ~3; c < c_n; c++) {
        int32_t acc = d[0];
        const int32_t *w = d + 4 + ky0 * p->k_w + kx0;
        const int8_t *row = in + c;
        for (int32_t ky = 0; ky < ky_n; ky++) {
            for (int32_t kx = 0; kx < kx_n; kx++) {
                acc += w[kx] * ((int32_t)row[kx * c_n] + p->input_offset);
            }
            row += in_row;
            w += p->k_w;
        }
        out[c] = mt_dw_store1(p, d + 1, acc);
        d += 4 + taps;
    }
}

/* One output pixel, full 3x3 window, channels % 4 == 0; `in` points at the
 * window's top-left input pixel. */
static MT_ALWAYS_INLINE void mt_dw_pixel_3x3(const mt_depthwise_opt_params *p, const int8_t *in, int8_t *out)
{
    const int32_t c_n = p->channels;
    const int32_t r = p->in_w * c_n;
    const uint32_t off2 = (uint32_t)(uint16_t)p->input_offset * 0x00010001u;
    const int32_t *d = p->data;
    for (int32_t g = 0; g < c_n / 4; g++) {
        uint32_t b0, b1, b2, b3;
        mt_read_2x32(d, &b0, &b1);
        mt_read_2x32(d + 2, &b2, &b3);
        int32_t a0 = (int32_t)b0, a1 = (int32_t)b1, a2 = (int32_t)b2, a3 = (int32_t)b3;
        const int32_t *w = d + 4;
        const int8_t *ip = in + 4 * g;
        MT_DW_TAP(ip, w + 0);
        MT_DW_TAP(ip + c_n, w + 2);
        MT_DW_TAP(ip + 2 * c_n, w + 4);
        MT_DW_TAP(ip + r, w + 6);
        MT_DW_TAP(ip + r + c_n, w + 8);
        MT_DW_TAP(ip + r + 2 * c_n, w + 10);
        MT_DW_TAP(ip + 2 * r, w + 12);
        MT_DW_TAP(ip + 2 * r + c_n, w + 14);
        MT_DW_TAP(ip + 2 * r + 2 * c_n, w + 16);
        d += 4 + 18;
        mt_dw_store4(p, d, a0, a1, a2, a3, out + 4 * g);
        d += 12;
    }
}

/* A border pixel of a 3-wide kernel (channels % 4 == 0): ky_n rows of kx_n taps,
 * kx_n a constant after inlining (1, 2 or 3), so each row is unrolled. */
static MT_ALWAYS_INLINE void mt_dw_pixel_rows3(const mt_depthwise_opt_params *p, const int8_t *in,
                                               int32_t tap0, int32_t ky_n, const int32_t kx_n, int8_t *out)
{
    const int32_t c_n = p->channels;
    const int32_t in_row = p->in_w * c_n;
    const uint32_t off2 = (uint32_t)(uint16_t)p->input_offset * 0x00010001u;
    const int32_t *d = p->data;
    for (int32_t g = 0; g < c_n / 4; g++) {
        uint32_t b0, b1, b2, b3;
        mt_read_2x32(d, &b0, &b1);
        mt_read_2x32(d + 2, &b2, &b3);
        int32_t a0 = (int32_t)b0, a1 = (int32_t)b1, a2 = (int32_t)b2, a3 = (int32_t)b3;
        const int32_t *w = d + 4 + 2 * tap0;
        const int8_t *ip = in + 4 * g;
        for (int32_t ky = 0; ky < ky_n; ky++) {
            MT_DW_TAP(ip, w);
            if (kx_n > 1) {
                MT_DW_TAP(ip + c_n, w + 2);
            }
            if (kx_n > 2) {
                MT_DW_TAP(ip + 2 * c_n, w + 4);
            }
            ip += in_row;
            w += 6;
        }
        d += 4 + 2 * 3 * p->k_h;
        mt_dw_store4(p, d, a0, a1, a2, a3, out + 4 * g);
        d += 12;
    }
}

/* Any output pixel of row y0 (window rows [ky0, ky1) inside the image). */
static MT_ALWAYS_INLINE void mt_dw_pixel_any(const mt_depthwise_opt_params *p, const int8_t *in_b, int32_t y0,
                                             int32_t ky0, int32_t ky1, int32_t ox, int8_t *output)
{
    const int32_t c_n = p->channels;
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    const int32_t kx0 = x0 < 0 ? -x0 : 0;
    const int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
    const int8_t *in_px = in_b + ((y0 + ky0) * p->in_w + x0 + kx0) * c_n;
    const int rows3 = p->k_w == 3 && (c_n & 3) == 0;
    if (rows3 && kx1 - kx0 == 3) {
        mt_dw_pixel_rows3(p, in_px, ky0 * 3 + kx0, ky1 - ky0, 3, output);
    } else if (rows3 && kx1 - kx0 == 2) {
        mt_dw_pixel_rows3(p, in_px, ky0 * 3 + kx0, ky1 - ky0, 2, output);
    } else {
        mt_dw_pixel_clipped(p, in_px, ky0, kx0, ky1 - ky0, kx1 - kx0, output);
    }
}

static MT_ALWAYS_INLINE void mt_depthwise_s8_opt(const mt_depthwise_opt_params *p, const int8_t *input,
                                                 int8_t *output)
{
    const int32_t c_n = p->channels;
    const int32_t in_row = p->in_w * c_n;
    const int full3x3 = p->k_h == 3 && p->k_w == 3 && (c_n & 3) == 0;
    /* Output columns whose window lies inside the image horizontally: [ox_lo, ox_hi). */
    int32_t ox_lo = (p->pad_w + p->stride_w - 1) / p->stride_w;
    int32_t ox_hi = p->in_w + p->pad_w >= p->k_w ? (p->in_w + p->pad_w - p->k_w) / p->stride_w + 1 : 0;
    ox_lo = ox_lo < p->out_w ? ox_lo : p->out_w;
    ox_hi = ox_hi < ox_lo ? ox_lo : (ox_hi > p->out_w ? p->out_w : ox_hi);
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + b * p->in_h * in_row;
        for (int32_t oy = 0; oy < p->out_h; oy++) {
            const int32_t y0 = oy * p->stride_h - p->pad_h;
            const int32_t ky0 = y0 < 0 ? -y0 : 0;
            const int32_t ky1 = y0 + p->k_h > p->in_h ? p->in_h - y0 : p->k_h;
            int32_t ox = 0;
            for (; ox < ox_lo; ox++) {
                mt_dw_pixel_any(p, in_b, y0, ky0, ky1, ox, output);
                output += c_n;
            }
            if (full3x3 && ky0 == 0 && ky1 == 3) {
                const int8_t *in_px = in_b + y0 * in_row + (ox * p->stride_w - p->pad_w) * c_n;
                for (; ox < ox_hi; ox++) {
                    mt_dw_pixel_3x3(p, in_px, output);
                    in_px += p->stride_w * c_n;
                    output += c_n;
                }
            }
            for (; ox < p->out_w; ox++) {
                mt_dw_pixel_any(p, in_b, y0, ky0, ky1, ox, output);
                output += c_n;
            }
        }
    }
}

/* The same kernel, not specialised: one shared copy for layers where per-layer
 * code is not worth its flash (mt_depthwise_opt.c). */
void mt_depthwise_s8_opt_shared(const mt_depthwise_opt_params *p, const int8_t *input, int8_t *output);

#endif /* MT_DEPTHWISE_OPT_H */

/* Optimised DEPTHWISE_CONV_2D, int8, any depth multiplier; bit-exact with TFLM.
 *
 * Schedule: channel group outer, pixels inner. Output channels go in groups of 4
 * (one word); a group's constants (29 words for 3x3) are read over and over for all its
 * pixels, so they stay in the flash accelerator's data cache instead of streaming
 * the whole layer's weights from flash at every pixel. Per pixel and tap: one word
 * load brings the group's 4 input channels, two SXTB16 (SXTAB16 where the input
 * offset is added per tap) split them into (c0, c2) and (c1, c3) halfword pairs;
 * one word load brings the tap's 4 int8 weights, two more SXTB16 split them the
 * same way, and SMLABB/SMLATT accumulate. (Doubled int16 weight pairs saved the two
 * SXTB16 but doubled the weights' flash and their loads.) The accumulators are
 * doubled once per pixel, for the requantisation's SMMLAR. Interior pixels of a 3x3 kernel run fully unrolled with
 * constant offsets and the input offset folded into the bias offline (no offset
 * per tap, no bounds checks); border pixels walk the clipped window and add the
 * offset per tap. Requantisation: SMMLAR + sign fix + shift + SSAT (see
 * MT_DW_REQ1), packed into one word per pixel, clamped with byte SIMD.
 *
 * Gathered source plane: with a depth multiplier M > 1 the 4 output channels of a
 * group read input channels (4g + j) / M, and in place (output over its own input)
 * the group's input would be overwritten while still needed; both copy the group's
 * source channels of every input pixel into `scratch` (in_h * in_w * 4 bytes) first
 * and run the group from there. A 3x3 layer with M > 1 (`padded`, chosen offline)
 * gathers into a plane with the padding filled in with the input zero point, so
 * every pixel takes the unrolled interior path. In place is safe because a group
 * writes only the bytes of its own channels (same channel count in and out) at output pixels
 * oy * out_w + ox < in_h * in_w, and those bytes were copied before the first write.
 *
 * mt_depthwise_s8_opt is always inlined into one noinline model.c function per layer
 * shape (host/microtile/ops/depthwise_opt.py): p is that shape's static const geometry
 * (channel count, row stride, kernel size become immediates), rt the layer's struct
 * (input offset, activation bounds, data read at run time), so layers of one shape
 * share one copy.
 *
 * Parameter stream `data` (int32 words, written by host/microtile/ops/depthwise_opt.py):
 *   per group of 4 output channels: bias[4], biasf[4], taps x W, {mult, k, right} x 4
 *   then per remaining output channel (out channels % 4): bias2, mult, k, right, taps x w2
 * where biasf = bias + input_offset * sum over taps of w (the interior's folded
 * offset, modulo 2^32), W = the tap's int8 weights of c0..c3 in bytes 0..3, and for
 * the remaining channels bias2 = 2 * bias, w2 = 2w (their accumulator is doubled
 * throughout). */
#ifndef MT_DEPTHWISE_OPT_H
#define MT_DEPTHWISE_OPT_H

#include <stdint.h>

#include "mt_dsp.h"
#include "mt_requant_opt.h"

typedef struct {
    int32_t batches;
    int32_t in_h, in_w, channels;  /* input channels */
    int32_t out_h, out_w;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_h, pad_w;
    int32_t input_offset;      /* -input zero point */
    int32_t act_min, act_max;  /* within [-128, 127] */
    int32_t depth_mult;        /* output channels = channels * depth_mult */
    int32_t in_place;          /* 1: output is the input buffer (needs scratch) */
    int32_t padded;            /* 1: gather each group into a plane with its padding filled in */
    const int32_t *data;       /* parameter stream, see above */
} mt_depthwise_opt_params;

/* The per-group stream length in words for `taps` filter taps. */
#define MT_DW_GROUP_WORDS(taps) (8 + (taps) + 12)
#define MT_DW_REM_WORDS(taps) (4 + (taps))

#if MT_HAS_DSP
/* The 4 multiply-accumulates of a tap: (e, x) = channels (0, 2), (1, 3) of the input
 * word against the weight pairs (w0, w1) (the tap's weight word split by SXTB16);
 * the accumulators and temporaries. */
#define MT_DW_MAC4_ASM \
    "smlabb %[a0], %[e], %[w0], %[a0]\n\t" \
    "smlatt %[a2], %[e], %[w0], %[a2]\n\t" \
    "smlabb %[a1], %[x], %[w1], %[a1]\n\t" \
    "smlatt %[a3], %[x], %[w1], %[a3]"
#define MT_DW_MAC4_OUTPUTS \
    [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), \
    [x] "=&r"(x_), [e] "=&r"(e_), [w0] "=&r"(w0_), [w1] "=&r"(w1_)

/* One tap, 4 channels, input offset added per tap (border pixels). One volatile asm
 * block per tap keeps the compiler from hoisting the loads of all taps ahead of the
 * arithmetic (and spilling them). */
#define MT_DW_TAP(ptr, wp) do { \
        uint32_t x_, e_, w0_, w1_; \
        __asm__ volatile( \
            "ldr %[x], %[in]\n\t" \
            "ldr %[w0], %[w]\n\t" \
            "sxtab16 %[e], %[off], %[x]\n\t" \
            "sxtab16 %[x], %[off], %[x], ror #8\n\t" \
            "sxtb16 %[w1], %[w0], ror #8\n\t" \
            "sxtb16 %[w0], %[w0]\n\t" \
            MT_DW_MAC4_ASM \
            : MT_DW_MAC4_OUTPUTS \
            : [in] "m"(*(const uint32_t *)(const void *)(ptr)), \
              [w] "m"(*(const uint32_t *)(const void *)(wp)), [off] "r"(off2)); \
    } while (0)

/* One tap, 4 channels, offset folded into the bias (interior): two chained loads;
 * the weight word at byte offset OFF (a literal) from the base register WB, so the
 * compiler keeps one weight pointer instead of one spilled address per tap. */
#define MT_DW_TAPF(ptr, WB, OFF) do { \
        uint32_t x_, e_, w0_, w1_; \
        __asm__ volatile( \
            "ldr %[x], %[in]\n\t" \
            "ldr %[w0], [%[wb], #" #OFF "]\n\t" \
            "sxtb16 %[e], %[x]\n\t" \
            "sxtb16 %[x], %[x], ror #8\n\t" \
            "sxtb16 %[w1], %[w0], ror #8\n\t" \
            "sxtb16 %[w0], %[w0]\n\t" \
            MT_DW_MAC4_ASM \
            : MT_DW_MAC4_OUTPUTS \
            : [in] "m"(*(const uint32_t *)(const void *)(ptr)), [wb] "r"(WB)); \
    } while (0)

/* Requantise one channel; {mult, k, right} at byte offset OFF (a literal) from QB.
 * SMMLAR(2acc, m, k) = SMMULR(2acc, m) + k, and the sign fix uses the sign of acc
 * instead of the high product h: they differ only when h = 0 > acc, where
 * (k - 1) >> right = k >> right since k = 2^(right-1) + (zp << right). 4 operations
 * instead of mt_requant_fast's 5 (tests/test_depthwise_opt.py checks the identity). */
#define MT_DW_REQ1(X, QB, OFF) do { \
        uint32_t m_, k_, r_, t_; \
        __asm__ volatile( \
            "ldr %[m], [%[qb], #" #OFF "]\n\t" \
            "ldr %[k], [%[qb], #" #OFF "+4]\n\t" \
            "ldr %[r], [%[qb], #" #OFF "+8]\n\t" \
            "smmlar %[t], %[ax], %[m], %[k]\n\t" \
            "add %[ax], %[t], %[ax], asr #31\n\t" \
            "asr %[ax], %[ax], %[r]\n\t" \
            "ssat %[ax], #8, %[ax]" \
            : [ax] "+r"(X), [m] "=&r"(m_), [k] "=&r"(k_), [r] "=&r"(r_), [t] "=&r"(t_) \
            : [qb] "r"(QB)); \
    } while (0)
#else
#define MT_DW_TAP(ptr, wp) do { \
        const uint32_t w_ = (uint32_t)(wp)[0]; \
        const uint32_t w0_ = mt_sxtb16(w_), w1_ = mt_sxtb16_ror8(w_); \
        const uint32_t x_ = mt_read_u32(ptr); \
        const uint32_t e_ = mt_sxtab16(off2, x_); \
        const uint32_t o_ = mt_sxtab16_ror8(off2, x_); \
        a0 = mt_smlabb(e_, w0_, a0); \
        a2 = mt_smlatt(e_, w0_, a2); \
        a1 = mt_smlabb(o_, w1_, a1); \
        a3 = mt_smlatt(o_, w1_, a3); \
    } while (0)

#define MT_DW_TAP_ONE(ptr, w0_, w1_, A0, A1, A2, A3) do { \
        const uint32_t x_ = mt_read_u32(ptr); \
        const uint32_t e_ = mt_sxtb16(x_); \
        const uint32_t o_ = mt_sxtb16_ror8(x_); \
        A0 = mt_smlabb(e_, w0_, A0); \
        A2 = mt_smlatt(e_, w0_, A2); \
        A1 = mt_smlabb(o_, w1_, A1); \
        A3 = mt_smlatt(o_, w1_, A3); \
    } while (0)
#define MT_DW_WORD(B, OFF) ((uint32_t)*(const int32_t *)(const void *)((const char *)(B) + (OFF)))
#define MT_DW_TAPF(ptr, WB, OFF) do { \
        const uint32_t w_ = MT_DW_WORD(WB, OFF); \
        const uint32_t w0_ = mt_sxtb16(w_), w1_ = mt_sxtb16_ror8(w_); \
        MT_DW_TAP_ONE(ptr, w0_, w1_, a0, a1, a2, a3); \
    } while (0)

/* The same arithmetic as the DSP version, through the portable requantisation
 * (equal by the sign-fix argument above). */
#define MT_DW_REQ1(X, QB, OFF) do { \
        X = mt_ssat8(mt_requant_fast(X, (int32_t)MT_DW_WORD(QB, OFF), (int32_t)MT_DW_WORD(QB, (OFF) + 4), \
                                     (int32_t)MT_DW_WORD(QB, (OFF) + 8))); \
    } while (0)
#endif

/* Clamp 4 packed results to the activation range and store them as one word. */
static MT_ALWAYS_INLINE void mt_dw_clamp_store(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, uint32_t v, int8_t *out)
{
    /* whether to clamp is the shape's (a constant), the bound the layer's */
    if (p->act_min > -128) {
        v = mt_max_s8x4(v, (uint32_t)(uint8_t)rt->act_min * 0x01010101u);
    }
    if (p->act_max < 127) {
        v = mt_min_s8x4(v, (uint32_t)(uint8_t)rt->act_max * 0x01010101u);
    }
    mt_write_u32(out, v);
}

/* Requantise, pack, clamp and store one pixel of a group; q = {mult, k, right} x 4;
 * MT_DW_REQ1 takes the doubled accumulator (modulo 2^32, as TFLM's sum wraps). */
static MT_ALWAYS_INLINE void mt_dw_store4(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int32_t *q,
                                          int32_t a0, int32_t a1, int32_t a2, int32_t a3, int8_t *out)
{
    a0 = (int32_t)((uint32_t)a0 << 1);
    a1 = (int32_t)((uint32_t)a1 << 1);
    a2 = (int32_t)((uint32_t)a2 << 1);
    a3 = (int32_t)((uint32_t)a3 << 1);
    MT_DW_REQ1(a0, q, 0);
    MT_DW_REQ1(a1, q, 12);
    MT_DW_REQ1(a2, q, 24);
    MT_DW_REQ1(a3, q, 36);
    mt_dw_clamp_store(p, rt, mt_pack_s8x4(a0, a1, a2, a3), out);
}

static MT_ALWAYS_INLINE int8_t mt_dw_store1(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int32_t *q, int32_t acc)
{
    (void)p;  /* the same signature as the other helpers */
    int32_t r = mt_ssat8(mt_requant_fast(acc, q[0], q[1], q[2]));
    r = r < rt->act_min ? rt->act_min : r;
    r = r > rt->act_max ? rt->act_max : r;
    return (int8_t)r;
}

/* One pixel of a group, window clipped to rows [0, ky_n) x cols [0, kx_n) starting
 * at tap (ky0, kx0); `in` points at the source pixel of tap (ky0, kx0); px = bytes
 * per source pixel; d = the group's stream. */
static MT_ALWAYS_INLINE void mt_dw_pixel_clipped(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int8_t *in,
                                                 const int32_t px, const int32_t *d, int32_t ky0, int32_t kx0,
                                                 int32_t ky_n, int32_t kx_n, int8_t *out)
{
    const int32_t in_row = p->in_w * px;
    const uint32_t off2 = (uint32_t)(uint16_t)rt->input_offset * 0x00010001u;
    int32_t a0 = d[0], a1 = d[1], a2 = d[2], a3 = d[3];
    const int32_t *w = d + 8 + ky0 * p->k_w + kx0;
    for (int32_t ky = 0; ky < ky_n; ky++) {
        const int8_t *ip = in;
        const int32_t *wk = w;
        for (int32_t kx = 0; kx < kx_n; kx++) {
            MT_DW_TAP(ip, wk);
            ip += px;
            wk++;
        }
        in += in_row;
        w += p->k_w;
    }
    mt_dw_store4(p, rt, d + 8 + p->k_h * p->k_w, a0, a1, a2, a3, out);
}

/* A border pixel of a 3-wide kernel: ky_n rows of kx_n taps, kx_n a constant after
 * inlining (2 or 3), so each row is unrolled. */
static MT_ALWAYS_INLINE void mt_dw_pixel_rows3(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int8_t *in,
                                               const int32_t px, const int32_t *d, int32_t tap0, int32_t ky_n,
                                               const int32_t kx_n, int8_t *out)
{
    const int32_t in_row = p->in_w * px;
    const uint32_t off2 = (uint32_t)(uint16_t)rt->input_offset * 0x00010001u;
    int32_t a0 = d[0], a1 = d[1], a2 = d[2], a3 = d[3];
    const int32_t *w = d + 8 + tap0;
    for (int32_t ky = 0; ky < ky_n; ky++) {
        MT_DW_TAP(in, w);
        MT_DW_TAP(in + px, w + 1);
        if (kx_n > 2) {
            MT_DW_TAP(in + 2 * px, w + 2);
        }
        in += in_row;
        w += 3;
    }
    mt_dw_store4(p, rt, d + 8 + 3 * p->k_h, a0, a1, a2, a3, out);
}

/* One interior pixel of a 3x3 kernel (offset folded); `in` = window's top-left. */
static MT_ALWAYS_INLINE void mt_dw_pixel_3x3(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int8_t *in, const int32_t px,
                                             const int32_t *d, int8_t *out)
{
    const int32_t r = p->in_w * px;
    int32_t a0 = d[4], a1 = d[5], a2 = d[6], a3 = d[7];
    const int32_t *w = d + 8;
    MT_DW_TAPF(in, w, 0);
    MT_DW_TAPF(in + px, w, 4);
    MT_DW_TAPF(in + 2 * px, w, 8);
    MT_DW_TAPF(in + r, w, 12);
    MT_DW_TAPF(in + r + px, w, 16);
    MT_DW_TAPF(in + r + 2 * px, w, 20);
    MT_DW_TAPF(in + 2 * r, w, 24);
    MT_DW_TAPF(in + 2 * r + px, w, 28);
    MT_DW_TAPF(in + 2 * r + 2 * px, w, 32);
    mt_dw_store4(p, rt, d + 17, a0, a1, a2, a3, out);
}

/* Any pixel of a group in output row with input row y0 (window rows [ky0, ky1)). */
static MT_ALWAYS_INLINE void mt_dw_pixel_any(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int8_t *src, const int32_t px,
                                             const int32_t *d, int32_t y0, int32_t ky0, int32_t ky1, int32_t ox,
                                             int8_t *out)
{
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    const int32_t kx0 = x0 < 0 ? -x0 : 0;
    const int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
    const int8_t *in_px = src + ((y0 + ky0) * p->in_w + x0 + kx0) * px;
    if (p->k_w == 3 && kx1 - kx0 == 3) {
        mt_dw_pixel_rows3(p, rt, in_px, px, d, ky0 * 3 + kx0, ky1 - ky0, 3, out);
    } else if (p->k_w == 3 && kx1 - kx0 == 2) {
        mt_dw_pixel_rows3(p, rt, in_px, px, d, ky0 * 3 + kx0, ky1 - ky0, 2, out);
    } else {
        mt_dw_pixel_clipped(p, rt, in_px, px, d, ky0, kx0, ky1 - ky0, kx1 - kx0, out);
    }
}

/* Output columns whose window lies inside the image horizontally: [*lo, *hi). */
static MT_ALWAYS_INLINE void mt_dw_interior_cols(const mt_depthwise_opt_params *p, int32_t *lo, int32_t *hi)
{
    int32_t ox_lo = (p->pad_w + p->stride_w - 1) / p->stride_w;
    int32_t ox_hi = p->in_w + p->pad_w >= p->k_w ? (p->in_w + p->pad_w - p->k_w) / p->stride_w + 1 : 0;
    ox_lo = ox_lo < p->out_w ? ox_lo : p->out_w;
    ox_hi = ox_hi < ox_lo ? ox_lo : (ox_hi > p->out_w ? p->out_w : ox_hi);
    *lo = ox_lo;
    *hi = ox_hi;
}

/* Every output pixel of one group of 4 output channels. src: the group's 4 source
 * channels at px bytes per input pixel (the input itself, or the gathered plane);
 * out: the group's first output channel. */
static MT_ALWAYS_INLINE void mt_dw_group4(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int8_t *src, const int32_t px,
                                          const int32_t *d, int8_t *out)
{
    const int32_t out_px = p->channels * p->depth_mult;
    const int32_t in_row = p->in_w * px;
    const int full3x3 = p->k_h == 3 && p->k_w == 3;
    int32_t ox_lo, ox_hi;
    mt_dw_interior_cols(p, &ox_lo, &ox_hi);
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t y0 = oy * p->stride_h - p->pad_h;
        const int32_t ky0 = y0 < 0 ? -y0 : 0;
        const int32_t ky1 = y0 + p->k_h > p->in_h ? p->in_h - y0 : p->k_h;
        int32_t ox = 0;
        for (; ox < ox_lo; ox++) {
            mt_dw_pixel_any(p, rt, src, px, d, y0, ky0, ky1, ox, out);
            out += out_px;
        }
        if (full3x3 && ky0 == 0 && ky1 == 3) {
            const int32_t step = p->stride_w * px;
            const int8_t *in_px = src + y0 * in_row + (ox * p->stride_w - p->pad_w) * px;
            for (; ox < ox_hi; ox++) {
                mt_dw_pixel_3x3(p, rt, in_px, px, d, out);
                in_px += step;
                out += out_px;
            }
        }
        for (; ox < p->out_w; ox++) {
            mt_dw_pixel_any(p, rt, src, px, d, y0, ky0, ky1, ox, out);
            out += out_px;
        }
    }
}

/* Every output pixel of one output channel beyond the groups of 4 (scalar); src
 * points at its source channel, px bytes per input pixel; d = {bias2, mult, k,
 * right, taps x w2}. */
static MT_ALWAYS_INLINE void mt_dw_channel1(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int8_t *src, const int32_t px,
                                            const int32_t *d, int8_t *out)
{
    const int32_t out_px = p->channels * p->depth_mult;
    const int32_t in_row = p->in_w * px;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        const int32_t y0 = oy * p->stride_h - p->pad_h;
        const int32_t ky0 = y0 < 0 ? -y0 : 0;
        const int32_t ky1 = y0 + p->k_h > p->in_h ? p->in_h - y0 : p->k_h;
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t x0 = ox * p->stride_w - p->pad_w;
            const int32_t kx0 = x0 < 0 ? -x0 : 0;
            const int32_t kx1 = x0 + p->k_w > p->in_w ? p->in_w - x0 : p->k_w;
            int32_t acc = d[0];
            const int32_t *w = d + 4 + ky0 * p->k_w + kx0;
            const int8_t *row = src + ((y0 + ky0) * p->in_w + x0 + kx0) * px;
            for (int32_t ky = ky0; ky < ky1; ky++) {
                for (int32_t kx = 0; kx < kx1 - kx0; kx++) {
                    acc += w[kx] * ((int32_t)row[kx * px] + rt->input_offset);
                }
                row += in_row;
                w += p->k_w;
            }
            *out = mt_dw_store1(p, rt, d + 1, acc);
            out += out_px;
        }
    }
}

/* Copy source channels first_oc / M .. (first_oc + n - 1) / M of every input pixel
 * into plane (n bytes per pixel, output channel order). */
static MT_ALWAYS_INLINE void mt_dw_gather(const mt_depthwise_opt_params *p, const int8_t *in, int32_t first_oc,
                                          const int32_t n, int8_t *plane)
{
    const int32_t pixels = p->in_h * p->in_w;
    const int32_t c_n = p->channels;
    const int32_t m = p->depth_mult;
    if (m == 1 && n == 4) {
        in += first_oc;
        for (int32_t i = 0; i < pixels; i++) {
            mt_write_u32(plane, mt_read_u32(in));
            in += c_n;
            plane += 4;
        }
        return;
    }
    for (int32_t i = 0; i < pixels; i++) {
        for (int32_t j = 0; j < n; j++) {
            plane[j] = in[(first_oc + j) / m];
        }
        in += c_n;
        plane += n;
    }
}

/* Copy the 4 source channels of output channels first_oc.. into plane, with the
 * padding filled in: plane row py, column px is input pixel (py - pad_h, px - pad_w),
 * or the input zero point outside the image (its taps then add w * (zp + offset) = 0,
 * as TFLM skips them). The plane is q->in_h x q->in_w (q: the layer over the plane). */
static MT_ALWAYS_INLINE void mt_dw_gather_padded(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const mt_depthwise_opt_params *q,
                                                 const int8_t *in, int32_t first_oc, int8_t *plane)
{
    const uint32_t zp4 = (uint32_t)(uint8_t)(int8_t)(-rt->input_offset) * 0x01010101u;
    const int32_t c_n = p->channels, m = p->depth_mult;
    const int32_t x_end = p->pad_w + p->in_w < q->in_w ? p->pad_w + p->in_w : q->in_w;
    for (int32_t py = 0; py < q->in_h; py++) {
        const int32_t y = py - p->pad_h;
        int32_t px = 0;
        if (y >= 0 && y < p->in_h) {
            const int8_t *row = in + y * p->in_w * c_n;
            for (; px < p->pad_w; px++) {
                mt_write_u32(plane + 4 * px, zp4);
            }
            for (; px < x_end; px++) {
                const int8_t *pix = row + (px - p->pad_w) * c_n;
                if (m == 1) {
                    mt_write_u32(plane + 4 * px, mt_read_u32(pix + first_oc));
                } else {
                    for (int32_t j = 0; j < 4; j++) {
                        plane[4 * px + j] = pix[(first_oc + j) / m];
                    }
                }
            }
        }
        for (; px < q->in_w; px++) {
            mt_write_u32(plane + 4 * px, zp4);
        }
        plane += 4 * q->in_w;
    }
}

static MT_ALWAYS_INLINE void mt_depthwise_s8_opt(const mt_depthwise_opt_params *p, const mt_depthwise_opt_params *rt, const int8_t *input,
                                                 int8_t *output, int8_t *scratch)
{
    const int32_t oc_n = p->channels * p->depth_mult;
    const int32_t taps = p->k_h * p->k_w;
    const int gather = p->depth_mult > 1 || p->in_place;
    /* The layer over the padded plane: VALID, every window inside. */
    mt_depthwise_opt_params q = *p;
    q.in_h = (p->out_h - 1) * p->stride_h + p->k_h;
    q.in_w = (p->out_w - 1) * p->stride_w + p->k_w;
    q.pad_h = 0;
    q.pad_w = 0;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + b * p->in_h * p->in_w * p->channels;
        int8_t *out_b = output + b * p->out_h * p->out_w * oc_n;
        const int32_t *d = rt->data;
        int32_t oc = 0;
        for (; oc + 4 <= oc_n; oc += 4) {
            if (p->padded) {
                mt_dw_gather_padded(p, rt, &q, in_b, oc, scratch);
            } else if (gather) {
                mt_dw_gather(p, in_b, oc, 4, scratch);
            }
            /* one call site: one inlined copy of the group code per layer */
            mt_dw_group4(p->padded ? &q : p, rt, gather ? scratch : in_b + oc, gather ? 4 : p->channels, d, out_b + oc);
            d += MT_DW_GROUP_WORDS(taps);
        }
        const int32_t rem = oc_n - oc;
        if (rem > 0 && p->in_place) {
            mt_dw_gather(p, in_b, oc, rem, scratch);
        }
        for (int32_t j = 0; j < rem; j++) {
            if (p->in_place) {
                mt_dw_channel1(p, rt, scratch + j, rem, d, out_b + oc + j);
            } else {
                mt_dw_channel1(p, rt, in_b + (oc + j) / p->depth_mult, p->channels, d, out_b + oc + j);
            }
            d += MT_DW_REM_WORDS(taps);
        }
    }
}

/* The same kernel, not specialised: one shared copy for layers where per-layer
 * code is not worth its flash (mt_depthwise_opt.c). */
void mt_depthwise_s8_opt_shared(const mt_depthwise_opt_params *p, const int8_t *input, int8_t *output,
                                int8_t *scratch);

#endif /* MT_DEPTHWISE_OPT_H */

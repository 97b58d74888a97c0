/* Optimised AVERAGE_POOL_2D and MAX_POOL_2D, int8; bit-exact with TFLM.
 *
 * Both walk the clipped window of each output pixel 4 channels at a time with one
 * word load per window pixel:
 *   - average: SXTAB16 / SXTAB16 ror 8 accumulate the bytes into two halfword-pair
 *     sums (exact while the window has at most 256 pixels: |sum| <= 256 * 128; the
 *     host keeps larger windows on the reference kernel), then one SDIV per
 *     channel with TFLM's round-half-away-from-zero;
 *   - max: SSUB8 + SEL keep the per-byte maximum.
 * The 4 results are packed into one word, clamped with byte-SIMD max/min and stored.
 * Channels beyond a multiple of 4 take a scalar loop.
 *
 * The kernels are always inlined: model.c calls them with a static const
 * mt_pool_params (mt_pool.h), so each layer gets a copy specialised for its sizes. */
#ifndef MT_POOL_OPT_H
#define MT_POOL_OPT_H

#include <stdint.h>

#include "mt_dsp.h"
#include "mt_pool.h"
#include "mt_requant_opt.h"

/* Largest window whose sum fits the halfword lanes. */
#define MT_AVG_POOL_OPT_MAX_WINDOW 256

static MT_ALWAYS_INLINE int32_t mt_avg_round(int32_t sum, int32_t count)
{
    const int32_t half = count / 2;
    return (sum > 0 ? sum + half : sum - half) / count; /* C truncates, as TFLM */
}

static MT_ALWAYS_INLINE uint32_t mt_pool_clamp4(const mt_pool_params *p, uint32_t v)
{
    if (p->act_min > -128) {
        v = mt_max_s8x4(v, (uint32_t)(uint8_t)p->act_min * 0x01010101u);
    }
    if (p->act_max < 127) {
        v = mt_min_s8x4(v, (uint32_t)(uint8_t)p->act_max * 0x01010101u);
    }
    return v;
}

static MT_ALWAYS_INLINE int32_t mt_pool_clamp1(const mt_pool_params *p, int32_t v)
{
    v = v < p->act_min ? p->act_min : v;
    return v > p->act_max ? p->act_max : v;
}

static MT_ALWAYS_INLINE void mt_avg_pool_s8_opt(const mt_pool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t c_n = p->channels;
    const int32_t in_row = p->in_w * c_n;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + b * p->in_h * in_row;
        for (int32_t oy = 0; oy < p->out_h; oy++) {
            const int32_t ys = oy * p->stride_h - p->pad_h;
            const int32_t y_lo = ys < 0 ? 0 : ys;
            const int32_t y_hi = ys + p->k_h > p->in_h ? p->in_h : ys + p->k_h;
            for (int32_t ox = 0; ox < p->out_w; ox++) {
                const int32_t xs = ox * p->stride_w - p->pad_w;
                const int32_t x_lo = xs < 0 ? 0 : xs;
                const int32_t x_hi = xs + p->k_w > p->in_w ? p->in_w : xs + p->k_w;
                const int32_t count = (y_hi - y_lo) * (x_hi - x_lo);
                const int8_t *base = in_b + y_lo * in_row + x_lo * c_n;
                for (int32_t c = 0; c + 4 <= c_n; c += 4) {
                    uint32_t se = 0, so = 0;
                    const int8_t *row = base + c;
                    for (int32_t y = y_lo; y < y_hi; y++) {
                        const int8_t *ip = row;
                        for (int32_t x = x_lo; x < x_hi; x++) {
                            const uint32_t v = mt_read_u32(ip);
                            se = mt_sxtab16(se, v);
                            so = mt_sxtab16_ror8(so, v);
                            ip += c_n;
                        }
                        row += in_row;
                    }
                    const int32_t r0 = mt_avg_round((int16_t)(se & 0xFFFFu), count);
                    const int32_t r1 = mt_avg_round((int16_t)(so & 0xFFFFu), count);
                    const int32_t r2 = mt_avg_round((int32_t)se >> 16, count);
                    const int32_t r3 = mt_avg_round((int32_t)so >> 16, count);
                    mt_write_u32(output + c, mt_pool_clamp4(p, mt_pack_s8x4(r0, r1, r2, r3)));
                }
                for (int32_t c = c_n & ~3; c < c_n; c++) {
                    int32_t sum = 0;
                    const int8_t *row = base + c;
                    for (int32_t y = y_lo; y < y_hi; y++) {
                        for (int32_t x = 0; x < x_hi - x_lo; x++) {
                            sum += row[x * c_n];
                        }
                        row += in_row;
                    }
                    output[c] = (int8_t)mt_pool_clamp1(p, mt_avg_round(sum, count));
                }
                output += c_n;
            }
        }
    }
}

static MT_ALWAYS_INLINE void mt_max_pool_s8_opt(const mt_pool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t c_n = p->channels;
    const int32_t in_row = p->in_w * c_n;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + b * p->in_h * in_row;
        for (int32_t oy = 0; oy < p->out_h; oy++) {
            const int32_t ys = oy * p->stride_h - p->pad_h;
            const int32_t y_lo = ys < 0 ? 0 : ys;
            const int32_t y_hi = ys + p->k_h > p->in_h ? p->in_h : ys + p->k_h;
            for (int32_t ox = 0; ox < p->out_w; ox++) {
                const int32_t xs = ox * p->stride_w - p->pad_w;
                const int32_t x_lo = xs < 0 ? 0 : xs;
                const int32_t x_hi = xs + p->k_w > p->in_w ? p->in_w : xs + p->k_w;
                const int8_t *base = in_b + y_lo * in_row + x_lo * c_n;
                for (int32_t c = 0; c + 4 <= c_n; c += 4) {
                    uint32_t m = 0x80808080u;
                    const int8_t *row = base + c;
                    for (int32_t y = y_lo; y < y_hi; y++) {
                        const int8_t *ip = row;
                        for (int32_t x = x_lo; x < x_hi; x++) {
                            m = mt_max_s8x4(m, mt_read_u32(ip));
                            ip += c_n;
                        }
                        row += in_row;
                    }
                    mt_write_u32(output + c, mt_pool_clamp4(p, m));
                }
                for (int32_t c = c_n & ~3; c < c_n; c++) {
                    int32_t m = -128;
                    const int8_t *row = base + c;
                    for (int32_t y = y_lo; y < y_hi; y++) {
                        for (int32_t x = 0; x < x_hi - x_lo; x++) {
                            const int32_t v = row[x * c_n];
                            m = v > m ? v : m;
                        }
                        row += in_row;
                    }
                    output[c] = (int8_t)mt_pool_clamp1(p, m);
                }
                output += c_n;
            }
        }
    }
}

/* Shared (not specialised) copies: mt_pool_opt.c. */
void mt_avg_pool_s8_opt_shared(const mt_pool_params *p, const int8_t *input, int8_t *output);
void mt_max_pool_s8_opt_shared(const mt_pool_params *p, const int8_t *input, int8_t *output);

#endif /* MT_POOL_OPT_H */

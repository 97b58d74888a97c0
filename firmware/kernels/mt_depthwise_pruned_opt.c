/* Pruned DEPTHWISE_CONV_2D: see mt_depthwise_pruned_opt.h for the stream. One generic
 * kernel (run-time geometry) shared by every pruned depthwise layer. */
#include "mt_depthwise_pruned_opt.h"

#include "mt_dsp.h"
#include "mt_requant_opt.h"

#if MT_HAS_DSP
/* One kept tap, 4 channels: the input word at base + o, the tap's weight pairs, the
 * next tap's offset (loaded ahead, so the input load never waits for it), two SXTAB16
 * (input offset added), 4 multiply-accumulates: 10 instructions, the 4 loads in a
 * row. */
#define MT_DWP_TAP_ASM(L) \
    #L ":\n\t" \
    "ldr %[x], [%[b], %[o]]\n\t" \
    "ldr %[w0], [%[e], #4]\n\t" \
    "ldr %[w1], [%[e], #8]\n\t" \
    "ldr %[o], [%[e], #12]!\n\t" \
    "sxtab16 %[v], %[off], %[x]\n\t" \
    "sxtab16 %[x], %[off], %[x], ror #8\n\t" \
    "smlabb %[a0], %[v], %[w0], %[a0]\n\t" \
    "smlatt %[a2], %[v], %[w0], %[a2]\n\t" \
    "smlabb %[a1], %[x], %[w1], %[a1]\n\t" \
    "smlatt %[a3], %[x], %[w1], %[a3]\n\t"

/* n > 0 taps from e: Duff's device in one asm block (so base, offset and the
 * accumulators stay in registers): TBB to the tap that leaves n % 8 before the end
 * of an 8-tap round, then (n + 7) / 8 rounds. The jump index and the round count
 * are memory operands (12 registers are live in the taps). */
#define MT_DWP_TAPS() do { \
        uint32_t x_, v_, w0_, w1_; \
        int32_t jump_ = n & 7, rounds_ = (n + 7) >> 3; \
        __asm__ volatile( \
            "ldr %[x], %[j]\n\t" \
            "tbb [pc, %[x]]\n" \
            "0:\n\t" \
            ".byte (8f-0b)/2, (1f-0b)/2, (2f-0b)/2, (3f-0b)/2\n\t" \
            ".byte (4f-0b)/2, (5f-0b)/2, (6f-0b)/2, (7f-0b)/2\n\t" \
            ".p2align 1\n" \
            MT_DWP_TAP_ASM(8) MT_DWP_TAP_ASM(7) MT_DWP_TAP_ASM(6) MT_DWP_TAP_ASM(5) \
            MT_DWP_TAP_ASM(4) MT_DWP_TAP_ASM(3) MT_DWP_TAP_ASM(2) MT_DWP_TAP_ASM(1) \
            "ldr %[x], %[r]\n\t" \
            "subs %[x], %[x], #1\n\t" \
            "str %[x], %[r]\n\t" \
            "bne 8b" \
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [o] "+r"(o), [e] "+r"(e), \
              [r] "+m"(rounds_), [x] "=&r"(x_), [v] "=&r"(v_), [w0] "=&r"(w0_), [w1] "=&r"(w1_) \
            : [b] "r"(base), [off] "r"(off2), [j] "m"(jump_) \
            : "cc", "memory"); \
    } while (0)
#else
/* The same arithmetic in portable C, one tap at a time. */
#define MT_DWP_TAPS() do { \
        for (; n > 0; n--) { \
            const uint32_t x_ = mt_read_u32((const void *)(base + (uint32_t)o)); \
            const uint32_t w0_ = (uint32_t)e[1], w1_ = (uint32_t)e[2]; \
            const uint32_t v_ = mt_sxtab16(off2, x_), u_ = mt_sxtab16_ror8(off2, x_); \
            e += 3; \
            o = e[0]; \
            a0 = mt_smlabb(v_, w0_, a0); \
            a2 = mt_smlatt(v_, w0_, a2); \
            a1 = mt_smlabb(u_, w1_, a1); \
            a3 = mt_smlatt(u_, w1_, a3); \
        } \
    } while (0)
#endif

/* The pixels of one run of output columns of one class in one output row: per pixel
 * the class's n0 > 0 kept taps of rows [ky0, ky1) from e0, then requantise, clamp to
 * [lo4, hi4] (4 bytes each; always both: a bound at the int8 limit is a no-op) and
 * store the 4 channels. base = the first pixel's window top-left (may lie outside the
 * image; only kept in-image taps are read). */
static MT_ALWAYS_INLINE void mt_dwp_run(const int32_t *d, const int32_t *e0, const int32_t n0, uintptr_t base,
                                        const uintptr_t step, int32_t cols, const uint32_t off2,
                                        const uint32_t lo4, const uint32_t hi4, int8_t *out, const int32_t out_px)
{
    const int32_t o0 = e0[0];
    const int32_t *q = d + 5;
    for (; cols > 0; cols--) {
        int32_t a0 = d[1], a1 = d[2], a2 = d[3], a3 = d[4];
        int32_t o = o0, n = n0;
        const int32_t *e = e0;
        MT_DWP_TAPS();
        MT_DW_REQ1(a0, q, 0);
        MT_DW_REQ1(a1, q, 12);
        MT_DW_REQ1(a2, q, 24);
        MT_DW_REQ1(a3, q, 36);
        mt_write_u32(out, mt_min_s8x4(mt_max_s8x4(mt_pack_s8x4(a0, a1, a2, a3), lo4), hi4));
        base += step;
        out += out_px;
    }
}

/* A run whose taps are all pruned: the bias alone, requantised. */
static void mt_dwp_run_bias(const int32_t *d, int32_t cols, const uint32_t lo4, const uint32_t hi4, int8_t *out,
                            const int32_t out_px)
{
    int32_t a0 = d[1], a1 = d[2], a2 = d[3], a3 = d[4];
    const int32_t *q = d + 5;
    MT_DW_REQ1(a0, q, 0);
    MT_DW_REQ1(a1, q, 12);
    MT_DW_REQ1(a2, q, 24);
    MT_DW_REQ1(a3, q, 36);
    const uint32_t v = mt_min_s8x4(mt_max_s8x4(mt_pack_s8x4(a0, a1, a2, a3), lo4), hi4);
    for (; cols > 0; cols--) {
        mt_write_u32(out, v);
        out += out_px;
    }
}

void mt_depthwise_pruned_s8_opt(const mt_depthwise_pruned_params *p, const int8_t *input, int8_t *output,
                                int8_t *scratch)
{
    const mt_depthwise_opt_params *g = &p->geo;
    const int32_t oc_n = g->channels * g->depth_mult;
    const int gather = g->depth_mult > 1 || g->in_place;
    const int32_t px = gather ? 4 : g->channels;
    const int32_t in_row = g->in_w * px;
    const int32_t tables = 17 + p->classes * (g->k_h + 1);
    const uint32_t off2 = (uint32_t)(uint16_t)g->input_offset * 0x00010001u;
    const uint32_t lo4 = (uint32_t)(uint8_t)g->act_min * 0x01010101u;
    const uint32_t hi4 = (uint32_t)(uint8_t)g->act_max * 0x01010101u;
    for (int32_t b = 0; b < g->batches; b++) {
        const int8_t *in_b = input + b * g->in_h * g->in_w * g->channels;
        int8_t *out = output + b * g->out_h * g->out_w * oc_n;
        const int32_t *d = g->data;
        for (int32_t oc = 0; oc < oc_n; oc += 4) {
            if (gather) {
                mt_dw_gather(g, in_b, oc, 4, scratch);
            }
            const uintptr_t src = (uintptr_t)(gather ? scratch : in_b + oc);
            const int32_t *taps = d + tables;
            int8_t *o_px = out + oc;
            for (int32_t oy = 0; oy < g->out_h; oy++) {
                const int32_t y0 = oy * g->stride_h - g->pad_h;
                const int32_t ky0 = y0 < 0 ? -y0 : 0;
                const int32_t ky1 = y0 + g->k_h > g->in_h ? g->in_h - y0 : g->k_h;
                /* unsigned arithmetic: the window's origin may be before the image */
                uintptr_t base = src + (uintptr_t)(intptr_t)(y0 * in_row - g->pad_w * px);
                const uintptr_t step = (uintptr_t)(g->stride_w * px);
                for (int32_t r = 0; r < p->runs; r++) {
                    const int32_t *rows = d + p->col_runs[2 * r];
                    const int32_t cols = p->col_runs[2 * r + 1];
                    const int32_t i0 = rows[ky0];
                    if (rows[ky1] > i0) {
                        mt_dwp_run(d, taps + 3 * i0, rows[ky1] - i0, base, step, cols, off2, lo4, hi4, o_px, oc_n);
                    } else {
                        mt_dwp_run_bias(d, cols, lo4, hi4, o_px, oc_n);
                    }
                    base += step * (uint32_t)cols;
                    o_px += oc_n * cols;
                }
            }
            d += d[0];
        }
    }
}

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

/* The last n <= 9 taps of a run from e (9 covers a 3x3 window, no loop): TBB to the
 * tap that leaves n before the end, jump = 9 - n (0: all 9, 9: none). One asm block,
 * so the base, the offset and the accumulators stay in registers (12 are live). */
#define MT_DWP_TAPS(JUMP) do { \
        uint32_t x_ = (uint32_t)(JUMP), v_, w0_, w1_; \
        __asm__ volatile( \
            "tbb [pc, %[x]]\n" \
            "0:\n\t" \
            ".byte (9f-0b)/2, (8f-0b)/2, (7f-0b)/2, (6f-0b)/2, (5f-0b)/2\n\t" \
            ".byte (4f-0b)/2, (3f-0b)/2, (2f-0b)/2, (1f-0b)/2, (10f-0b)/2\n\t" \
            ".p2align 1\n" \
            MT_DWP_TAP_ASM(9) MT_DWP_TAP_ASM(8) MT_DWP_TAP_ASM(7) MT_DWP_TAP_ASM(6) MT_DWP_TAP_ASM(5) \
            MT_DWP_TAP_ASM(4) MT_DWP_TAP_ASM(3) MT_DWP_TAP_ASM(2) MT_DWP_TAP_ASM(1) \
            "10:" \
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [o] "+r"(o), [e] "+r"(e), \
              [x] "+&r"(x_), [v] "=&r"(v_), [w0] "=&r"(w0_), [w1] "=&r"(w1_) \
            : [b] "r"(base), [off] "r"(off2) \
            : "cc", "memory"); \
    } while (0)
#else
/* The same arithmetic in portable C, one tap at a time. */
#define MT_DWP_TAPS(JUMP) do { \
        for (int32_t t_ = (int32_t)(JUMP); t_ < 9; t_++) { \
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
    const uintptr_t step = (uintptr_t)(g->stride_w * px);
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
            const int32_t *q = d + 5;
            int8_t *o_px = out + oc;
            for (int32_t oy = 0; oy < g->out_h; oy++) {
                const int32_t y0 = oy * g->stride_h - g->pad_h;
                const int32_t ky0 = y0 < 0 ? -y0 : 0;
                const int32_t ky1 = y0 + g->k_h > g->in_h ? g->in_h - y0 : g->k_h;
                /* unsigned arithmetic: the window's origin may be before the image */
                uintptr_t base = src + (uintptr_t)(intptr_t)(y0 * in_row - g->pad_w * px);
                for (int32_t ox = 0; ox < g->out_w; ox++) {
                    /* the column's class: its kept taps of rows [ky0, ky1) from e */
                    const int32_t *rows = d + p->col_rows[ox];
                    const int32_t i0 = rows[ky0];
                    int32_t n = rows[ky1] - i0;
                    const int32_t *e = taps + 3 * i0;
                    int32_t o = e[0];
                    int32_t a0 = d[1], a1 = d[2], a2 = d[3], a3 = d[4];
                    for (; n > 9; n -= 9) {  /* windows above 3x3 */
                        MT_DWP_TAPS(0);
                    }
                    MT_DWP_TAPS(9 - n);
                    MT_DW_REQ1(a0, q, 0);
                    MT_DW_REQ1(a1, q, 12);
                    MT_DW_REQ1(a2, q, 24);
                    MT_DW_REQ1(a3, q, 36);
                    mt_write_u32(o_px, mt_min_s8x4(mt_max_s8x4(mt_pack_s8x4(a0, a1, a2, a3), lo4), hi4));
                    base += step;
                    o_px += oc_n;
                }
            }
            d += d[0];
        }
    }
}

/* Planar DEPTHWISE_CONV_2D, 3x3, stride 1, depth multiplier 1, int8 activation range;
 * bit-exact with TFLM.
 *
 * Why: the channel-group kernel (mt_depthwise_opt.h) multiplies one tap of 4 channels
 * per instruction (SMLABB/SMLATT), because in HWC order two values of one channel
 * are never adjacent. Here one channel at a time is copied into an int16 plane,
 * zero-centred (x - zp_in, so the padding is 0 and no offset is added per tap) with
 * the padding around it, and two neighbouring outputs share each row's loads: with
 * A = (x0, x1), B = (x2, x3) of one plane row and that row's taps k01 = (k0, k1), k2,
 *     out0 += SMLAD(A, k01) + SMLABB(B, k2)            x0 k0 + x1 k1 + x2 k2
 *     out1 += SMLADX(PKHBT(B, A), k01) + SMLATB(B, k2) x1 k0 + x2 k1 + x3 k2
 * 2 MACs per instruction, the channel's 9 weights in 5 registers for the whole plane.
 *
 * Transposed (`transposed`, chosen offline when the output is taller than wide, as
 * KWS's 25 x 5): the plane holds the channel column-major, so the pairs run down the
 * longer side (fewer odd outputs and shorter row overhead) and the taps are
 * transposed offline. An odd last output of a plane row runs in C.
 *
 * The plane (plane_h x plane_w int16, plane_w even so that every pair is one LDRD) is
 * the layer's scratch; its padding is zeroed once and stays 0 for every channel. In
 * place (output over its own input) is safe: a channel's outputs are written after
 * its whole input was copied, and only its own bytes.
 *
 * Always inlined into one model.c function per layer shape (ops/depthwise_opt.py), so
 * the plane row's byte stride and the output strides are immediates of the asm.
 *
 * Parameter stream `data`, MT_DWP_WORDS int32 per channel (ops/depthwise_opt.py
 * planar_stream): k01 of plane rows 0, 1, 2 (int16 pairs, k0 low), (k2 row 0 | k2
 * row 1 << 16), k2 row 2, bias, mult, k, right (mt_requant_fast's). */
#ifndef MT_DEPTHWISE_PLANAR_OPT_H
#define MT_DEPTHWISE_PLANAR_OPT_H

#include <stdint.h>

#include "mt_dsp.h"
#include "mt_requant_opt.h"

typedef struct {
    int32_t in_h, in_w, channels;
    int32_t out_h, out_w;
    int32_t pad_h, pad_w;
    int32_t transposed;   /* 1: the plane is the channel column-major */
    int32_t plane_h, plane_w;
    int32_t input_offset; /* -input zero point */
    const int32_t *data;  /* MT_DWP_WORDS per channel */
} mt_dw_planar_params;

#define MT_DWP_WORDS 9

/* One output from plane rows at `row` (stride plane_w), taps of stream d: the odd last
 * output of a line. Not inlined: one copy per model.c instead of three per layer shape
 * (the ROM rule), for a call per odd output. */
static __attribute__((noinline)) int8_t mt_dwp_one(const int16_t *row, int32_t plane_w, const int32_t *d)
{
    int32_t acc = d[5];
    _Pragma("GCC unroll 3")
    for (int32_t r = 0; r < 3; r++) {
        const int16_t *x = row + r * plane_w;
        const int32_t k2 = r == 2 ? (int16_t)d[4] : (int16_t)(r == 0 ? d[3] : d[3] >> 16);
        acc += x[0] * (int16_t)d[r] + x[1] * (int16_t)(d[r] >> 16) + x[2] * k2;
    }
    return (int8_t)mt_ssat8(mt_requant_fast((int32_t)((uint32_t)acc << 1), d[6], d[7], d[8]));
}

#if MT_HAS_DSP
/* The taps of one plane row (its words in x, y: x0 x1 | x2 x3) for an output pair of
 * one line (accumulators A0, A1): EVEN adds x0 k0 + x1 k1 + x2 k2 to A0, MID forms
 * (x2 | x1) in m, ODD adds x1 k0 + x2 k1 + x3 k2 to A1. W holds (k0 | k1), k2 is the
 * bottom (H = "b") or top ("t") half of K2. */
#define MT_DWP_EVEN(A0, W, K2, H) \
    "smlad  %[" A0 "], %[x], %[" W "], %[" A0 "]\n\t" \
    "smlab" H " %[" A0 "], %[y], %[" K2 "], %[" A0 "]\n\t"
#define MT_DWP_MID "pkhbt  %[m], %[y], %[x]\n\t"
#define MT_DWP_ODD(A1, W, K2, H) \
    "smladx %[" A1 "], %[m], %[" W "], %[" A1 "]\n\t" \
    "smlat" H " %[" A1 "], %[y], %[" K2 "], %[" A1 "]\n\t"

/* `pairs` output pairs along one plane row: RS = plane row bytes, OS = bytes between
 * two outputs along the row (immediates). Registers: 2 accumulators, the row's two
 * words and their middle pair, 5 weights, 3 pointers, 1 scratch; q = {bias, mult, k,
 * right} on the stack. Requantisation: MT_DW_REQ1's 5 operations (mt_depthwise_opt.h
 * says why the sign fix may read the sign of acc). */
#define MT_DWP_PAIRS(ROW, OUT, PAIRS, D, Q, RS, OS) do { \
        const int16_t *p_ = (ROW); \
        int8_t *o_ = (OUT); \
        int8_t *const end_ = o_ + (PAIRS) * 2 * (OS); \
        int32_t a0_, a1_, x_, y_, m_, t_; \
        __asm__ volatile( \
            "1:\n\t" \
            "ldr    %[a0], %[bias]\n\t" \
            "ldrd   %[x], %[y], [%[p]]\n\t" \
            "mov    %[a1], %[a0]\n\t" \
            MT_DWP_EVEN("a0", "w0", "k2a", "b") MT_DWP_MID MT_DWP_ODD("a1", "w0", "k2a", "b") \
            "ldrd   %[x], %[y], [%[p], %[rs]]\n\t" \
            MT_DWP_EVEN("a0", "w1", "k2a", "t") MT_DWP_MID MT_DWP_ODD("a1", "w1", "k2a", "t") \
            "ldrd   %[x], %[y], [%[p], %[rs2]]\n\t" \
            MT_DWP_EVEN("a0", "w2", "k2b", "b") MT_DWP_MID MT_DWP_ODD("a1", "w2", "k2b", "b") \
            "add    %[p], %[p], #4\n\t" \
            "ldr    %[x], %[mult]\n\t" \
            "ldr    %[y], %[k]\n\t" \
            "ldr    %[m], %[right]\n\t" \
            "lsl    %[a0], %[a0], #1\n\t" \
            "smmlar %[t], %[a0], %[x], %[y]\n\t" \
            "add    %[a0], %[t], %[a0], asr #31\n\t" \
            "asr    %[a0], %[a0], %[m]\n\t" \
            "ssat   %[a0], #8, %[a0]\n\t" \
            "lsl    %[a1], %[a1], #1\n\t" \
            "smmlar %[t], %[a1], %[x], %[y]\n\t" \
            "add    %[a1], %[t], %[a1], asr #31\n\t" \
            "asr    %[a1], %[a1], %[m]\n\t" \
            "ssat   %[a1], #8, %[a1]\n\t" \
            "strb   %[a0], [%[o]]\n\t" \
            "strb   %[a1], [%[o], %[os]]\n\t" \
            "add    %[o], %[o], %[os2]\n\t" \
            "cmp    %[o], %[end]\n\t" \
            "bne    1b\n\t" \
            : [a0] "=&r"(a0_), [a1] "=&r"(a1_), [x] "=&r"(x_), [y] "=&r"(y_), [m] "=&r"(m_), \
              [t] "=&r"(t_), [p] "+r"(p_), [o] "+r"(o_) \
            : [w0] "r"((D)[0]), [w1] "r"((D)[1]), [w2] "r"((D)[2]), [k2a] "r"((D)[3]), \
              [k2b] "r"((D)[4]), [end] "r"(end_), [bias] "m"((Q)[0]), [mult] "m"((Q)[1]), \
              [k] "m"((Q)[2]), [right] "m"((Q)[3]), [rs] "n"(RS), [rs2] "n"(2 * (RS)), \
              [os] "n"(OS), [os2] "n"(2 * (OS)) \
            : "cc", "memory"); \
    } while (0)

/* Two lines at once: `pairs` 2x2 output blocks (lines L and L+1, two outputs along),
 * OUT's line L+1 at LS bytes (immediates as above). The 4 plane rows are each loaded
 * once: the middle two serve both lines (tap rows 1 and 0, then 2 and 1), so a block
 * takes 4 LDRD where two pairs take 6, and one load of the requantisation constants
 * serves 4 outputs: about 82 est. cycles per 4 outputs against 2 x 49. Registers: 4
 * accumulators, the row's two words and their middle pair (the middle pair's register
 * is the requantisation's scratch), 5 weights, 2 pointers; the end on the stack. */
#define MT_DWP_QUADS(ROW, OUT, PAIRS, D, Q, RS, OS, LS) do { \
        const int16_t *p_ = (ROW); \
        int8_t *o_ = (OUT); \
        int8_t *const end_ = o_ + (PAIRS) * 2 * (OS); \
        int32_t a0_, a1_, b0_, b1_, x_, y_, m_; \
        __asm__ volatile( \
            "1:\n\t" \
            "ldr    %[a0], %[bias]\n\t" \
            "ldrd   %[x], %[y], [%[p]]\n\t" \
            "mov    %[a1], %[a0]\n\t" \
            "mov    %[b0], %[a0]\n\t" \
            "mov    %[b1], %[a0]\n\t" \
            MT_DWP_EVEN("a0", "w0", "k2a", "b") MT_DWP_MID MT_DWP_ODD("a1", "w0", "k2a", "b") \
            "ldrd   %[x], %[y], [%[p], %[rs]]\n\t" \
            MT_DWP_EVEN("a0", "w1", "k2a", "t") MT_DWP_EVEN("b0", "w0", "k2a", "b") MT_DWP_MID \
            MT_DWP_ODD("a1", "w1", "k2a", "t") MT_DWP_ODD("b1", "w0", "k2a", "b") \
            "ldrd   %[x], %[y], [%[p], %[rs2]]\n\t" \
            MT_DWP_EVEN("a0", "w2", "k2b", "b") MT_DWP_EVEN("b0", "w1", "k2a", "t") MT_DWP_MID \
            MT_DWP_ODD("a1", "w2", "k2b", "b") MT_DWP_ODD("b1", "w1", "k2a", "t") \
            "ldrd   %[x], %[y], [%[p], %[rs3]]\n\t" \
            MT_DWP_EVEN("b0", "w2", "k2b", "b") MT_DWP_MID MT_DWP_ODD("b1", "w2", "k2b", "b") \
            "add    %[p], %[p], #4\n\t" \
            "ldr    %[x], %[mult]\n\t" \
            "ldr    %[y], %[k]\n\t" \
            "lsl    %[a0], %[a0], #1\n\t" \
            "smmlar %[m], %[a0], %[x], %[y]\n\t" \
            "add    %[a0], %[m], %[a0], asr #31\n\t" \
            "lsl    %[a1], %[a1], #1\n\t" \
            "smmlar %[m], %[a1], %[x], %[y]\n\t" \
            "add    %[a1], %[m], %[a1], asr #31\n\t" \
            "lsl    %[b0], %[b0], #1\n\t" \
            "smmlar %[m], %[b0], %[x], %[y]\n\t" \
            "add    %[b0], %[m], %[b0], asr #31\n\t" \
            "lsl    %[b1], %[b1], #1\n\t" \
            "smmlar %[m], %[b1], %[x], %[y]\n\t" \
            "add    %[b1], %[m], %[b1], asr #31\n\t" \
            "ldr    %[x], %[right]\n\t" \
            "asr    %[a0], %[a0], %[x]\n\t" \
            "ssat   %[a0], #8, %[a0]\n\t" \
            "asr    %[a1], %[a1], %[x]\n\t" \
            "ssat   %[a1], #8, %[a1]\n\t" \
            "asr    %[b0], %[b0], %[x]\n\t" \
            "ssat   %[b0], #8, %[b0]\n\t" \
            "asr    %[b1], %[b1], %[x]\n\t" \
            "ssat   %[b1], #8, %[b1]\n\t" \
            "strb   %[a0], [%[o]]\n\t" \
            "strb   %[a1], [%[o], %[os]]\n\t" \
            "strb   %[b0], [%[o], %[ls]]\n\t" \
            "strb   %[b1], [%[o], %[lsos]]\n\t" \
            "add    %[o], %[o], %[os2]\n\t" \
            "ldr    %[x], %[end]\n\t" \
            "cmp    %[o], %[x]\n\t" \
            "bne    1b\n\t" \
            : [a0] "=&r"(a0_), [a1] "=&r"(a1_), [b0] "=&r"(b0_), [b1] "=&r"(b1_), [x] "=&r"(x_), \
              [y] "=&r"(y_), [m] "=&r"(m_), [p] "+r"(p_), [o] "+r"(o_) \
            : [w0] "r"((D)[0]), [w1] "r"((D)[1]), [w2] "r"((D)[2]), [k2a] "r"((D)[3]), \
              [k2b] "r"((D)[4]), [end] "m"(end_), [bias] "m"((Q)[0]), [mult] "m"((Q)[1]), \
              [k] "m"((Q)[2]), [right] "m"((Q)[3]), [rs] "n"(RS), [rs2] "n"(2 * (RS)), \
              [rs3] "n"(3 * (RS)), [os] "n"(OS), [os2] "n"(2 * (OS)), [ls] "n"(LS), \
              [lsos] "n"((LS) + (OS)) \
            : "cc", "memory"); \
    } while (0)
/* The immediates MT_DWP_QUADS takes: LDRD offsets up to 1020 B (3 plane rows), byte
 * stores up to 4095 B (ops/depthwise_opt.py planar_geometry's "quads" says the same). */
#define MT_DWP_QUADS_FIT(PW, LS, OS) (6 * (PW) <= 1020 && (LS) + (OS) <= 4095)
#else
#define MT_DWP_PAIRS(ROW, OUT, PAIRS, D, Q, RS, OS) do { \
        (void)(Q); \
        for (int32_t i_ = 0; i_ < 2 * (PAIRS); i_++) { \
            (OUT)[i_ * (OS)] = mt_dwp_one((ROW) + i_, (RS) / 2, (D)); \
        } \
    } while (0)
#endif

/* p: the shape's constants (the plane strides become immediates), rt: the layer's
 * (input offset, stream). */
static MT_ALWAYS_INLINE void mt_depthwise_planar_s8_opt(const mt_dw_planar_params *p, const mt_dw_planar_params *rt,
                                                        const int8_t *input, int8_t *output, int16_t *plane)
{
    const int32_t C = p->channels, PW = p->plane_w;
    /* a plane row is one output line: an output row, or a column when transposed */
    const int32_t lines = p->transposed ? p->out_w : p->out_h;
    const int32_t along = p->transposed ? p->out_h : p->out_w;
    const int32_t line_step = p->transposed ? C : p->out_w * C;   /* output bytes between lines */
    const int32_t out_step = p->transposed ? p->out_w * C : C;    /* output bytes along a line */
    for (int32_t i = 0; i < p->plane_h * PW; i++) {
        plane[i] = 0;
    }
    const int32_t outer = p->transposed ? p->in_w : p->in_h, inner = p->transposed ? p->in_h : p->in_w;
    const int32_t src_outer = p->transposed ? C : p->in_w * C, src_inner = p->transposed ? p->in_w * C : C;
    int16_t *const origin = plane + (p->transposed ? p->pad_w * PW + p->pad_h : p->pad_h * PW + p->pad_w);
    const int32_t *d = rt->data;
    for (int32_t c = 0; c < C; c++, d += MT_DWP_WORDS) {
        /* copied along the plane's rows: contiguous int16 stores, strided byte loads */
        const int8_t *src = input + c;
        for (int32_t i = 0; i < outer; i++, src += src_outer) {
            int16_t *dst = origin + i * PW;
            const int8_t *s = src;
            int32_t j = 0;
            /* 4 loads first, then the adds and stores: a load after a load pipelines
               (the byte-by-byte loop ran LDRSB, ADD, STRH: 21 est. cycles per 4) */
            for (; j + 4 <= inner; j += 4, s += 4 * src_inner) {
                const int32_t x0 = s[0], x1 = s[src_inner], x2 = s[2 * src_inner], x3 = s[3 * src_inner];
                dst[j] = (int16_t)(x0 + rt->input_offset);
                dst[j + 1] = (int16_t)(x1 + rt->input_offset);
                dst[j + 2] = (int16_t)(x2 + rt->input_offset);
                dst[j + 3] = (int16_t)(x3 + rt->input_offset);
            }
            for (; j < inner; j++, s += src_inner) {
                dst[j] = (int16_t)(*s + rt->input_offset);
            }
        }
        const int32_t q[4] = {d[5], d[6], d[7], d[8]};
        const int16_t *row = plane;
        int8_t *out = output + c;
        int32_t line = 0;
#if MT_HAS_DSP
        if (MT_DWP_QUADS_FIT(PW, line_step, out_step)) { /* constants: one branch is compiled */
            for (; line + 2 <= lines; line += 2, row += 2 * PW, out += 2 * line_step) {
                if (along >= 2) {
                    MT_DWP_QUADS(row, out, along / 2, d, q, 2 * PW, out_step, line_step);
                }
                if (along & 1) {
                    out[(along - 1) * out_step] = mt_dwp_one(row + along - 1, PW, d);
                    out[line_step + (along - 1) * out_step] = mt_dwp_one(row + PW + along - 1, PW, d);
                }
            }
        }
#endif
        for (; line < lines; line++, row += PW, out += line_step) {
            if (along >= 2) {
                MT_DWP_PAIRS(row, out, along / 2, d, q, 2 * PW, out_step);
            }
            if (along & 1) {
                out[(along - 1) * out_step] = mt_dwp_one(row + along - 1, PW, d);
            }
        }
    }
}

#endif

/* Pruned matmul-shaped int8 kernels: see mt_pruned_opt.h for the weight stream.
 * One generic kernel per register tile and requantisation mode, shared by every
 * pruned layer (no code per layer). */
#include "mt_pruned_opt.h"

#include "mt_dsp.h"
#include "mt_gemm_out_opt.h"
#include "mt_requant_opt.h"

/* One kept block of an MR x NR tile, portable C: skip to the block's panel rows, then
 * as in mt_matmul_opt.c (weights extended once, or read pre-extended, reused by the
 * MR rows). */
#define MT_PBLOCK(MR, NR, WIDE)                                                       \
    do {                                                                              \
        uint32_t al[(MR)], ah[(MR)];                                                  \
        a = (const uint64_t *)(const void *)((const uint8_t *)a + (uint32_t)*w++);   \
        _Pragma("GCC unroll 8")                                                       \
        for (int i = 0; i < (MR); i++) {                                              \
            const uint64_t v = *a++;                                                  \
            al[i] = (uint32_t)v;                                                      \
            ah[i] = (uint32_t)(v >> 32);                                              \
        }                                                                             \
        _Pragma("GCC unroll 8")                                                       \
        for (int j = 0; j < (NR); j++) {                                              \
            uint32_t wl, wh;                                                          \
            if (WIDE) {                                                               \
                wl = (uint32_t)w[0];                                                  \
                wh = (uint32_t)w[1];                                                  \
                w += 2;                                                               \
            } else {                                                                  \
                const uint32_t wj = (uint32_t)*w++;                                   \
                wl = mt_sxtb16(wj);                                                   \
                wh = mt_sxtb16_ror8(wj);                                              \
            }                                                                         \
            _Pragma("GCC unroll 8")                                                   \
            for (int i = 0; i < (MR); i++) {                                          \
                s[i * (NR) + j] = mt_smlad(al[i], wl, s[i * (NR) + j]);               \
                s[i * (NR) + j] = mt_smlad(ah[i], wh, s[i * (NR) + j]);               \
            }                                                                         \
        }                                                                             \
    } while (0)

#define MT_PKLOOP_C(MR, NR, WIDE)                                                     \
    do {                                                                              \
        if (kb & 1) {                                                                 \
            MT_PBLOCK(MR, NR, WIDE);                                                  \
        }                                                                             \
        for (kb >>= 1; kb != 0; kb--) {                                               \
            MT_PBLOCK(MR, NR, WIDE);                                                  \
            MT_PBLOCK(MR, NR, WIDE);                                                  \
        }                                                                             \
    } while (0)

#if MT_HAS_DSP
/* The 8 SMLAD of a 4x1 block: the weight pair in t, w, panel rows 0-1 already in
 * r8..r11; rows 2-3 are loaded half-way. */
#define MT_PASM_4x1_MACS                                                              \
    "smlad  %[s0], r8, %[t], %[s0]\n\t"                                               \
    "smlad  %[s0], r9, %[w], %[s0]\n\t"                                               \
    "smlad  %[s1], r10, %[t], %[s1]\n\t"                                              \
    "smlad  %[s1], r11, %[w], %[s1]\n\t"                                              \
    "ldmia  %[pa]!, {r8, r9, r10, r11}\n\t"                                           \
    "smlad  %[s2], r8, %[t], %[s2]\n\t"                                               \
    "smlad  %[s2], r9, %[w], %[s2]\n\t"                                               \
    "smlad  %[s3], r10, %[t], %[s3]\n\t"                                              \
    "smlad  %[s3], r11, %[w], %[s3]\n\t"

/* 4 pixels x 1 channel, int8 weights: LDRD (delta, weights), ADD, 2 LDM (two panel
 * rows each), 2 SXTB16, 8 SMLAD: one instruction more than the exact int8 block. */
#define MT_PASM_4x1_W0_BLOCK                                                          \
    "ldrd   %[t], %[w], [%[pb]], #8\n\t"                                              \
    "add    %[pa], %[pa], %[t]\n\t"                                                   \
    "ldmia  %[pa]!, {r8, r9, r10, r11}\n\t"                                           \
    "sxtb16 %[t], %[w]\n\t"                                                           \
    "sxtb16 %[w], %[w], ror #8\n\t"                                                   \
    MT_PASM_4x1_MACS

/* 4 pixels x 1 channel, int16 weights: LDR delta, ADD, LDRD weights, 2 LDM, 8 SMLAD:
 * two instructions more than the exact int16 block. */
#define MT_PASM_4x1_W1_BLOCK                                                          \
    "ldr    %[t], [%[pb]], #4\n\t"                                                    \
    "add    %[pa], %[pa], %[t]\n\t"                                                   \
    "ldrd   %[t], %[w], [%[pb]], #8\n\t"                                              \
    "ldmia  %[pa]!, {r8, r9, r10, r11}\n\t"                                           \
    MT_PASM_4x1_MACS

#define MT_PASM_KLOOP(BLOCK)                                                          \
    do {                                                                              \
        uint32_t w_, t_;                                                              \
        if (kb & 1) {                                                                 \
            __asm__ volatile(BLOCK                                                    \
                             : [s0] "+r"(s[0]), [s1] "+r"(s[1]), [s2] "+r"(s[2]),     \
                               [s3] "+r"(s[3]), [pa] "+r"(a), [pb] "+r"(w),           \
                               [w] "=&r"(w_), [t] "=&r"(t_)                           \
                             :                                                        \
                             : "r8", "r9", "r10", "r11", "memory");                   \
        }                                                                             \
        kb >>= 1;                                                                     \
        if (kb != 0) {                                                                \
            __asm__ volatile("1:\n\t" BLOCK BLOCK                                     \
                             "subs   %[kb], %[kb], #1\n\t"                            \
                             "bne    1b\n\t"                                          \
                             : [s0] "+r"(s[0]), [s1] "+r"(s[1]), [s2] "+r"(s[2]),     \
                               [s3] "+r"(s[3]), [pa] "+r"(a), [pb] "+r"(w),           \
                               [kb] "+r"(kb), [w] "=&r"(w_), [t] "=&r"(t_)            \
                             :                                                        \
                             : "r8", "r9", "r10", "r11", "cc", "memory");             \
        }                                                                             \
    } while (0)
/* 3 pixels x 2 channels, int8 weights (the exact kernel's tile, mt_matmul_opt.c):
 * one LDM of (delta, w_0, w_1), ADD, 4 SXTB16, then per panel row one load pair and
 * 4 SMLAD: 22 instructions, as many as the exact block (the ADD replaces its second
 * weight load). Registers as there: 6 accumulators and 2 pointers leave none for a
 * counter, so the loop ends when the weight pointer reaches the tile's end. */
#define MT_PASM_3x2_W0_BLOCK                                                          \
    "ldmia  %[pb]!, {r8, r9, r10}\n\t"                                               \
    "add    %[pa], %[pa], r8\n\t"                                                    \
    "sxtb16 r12, r9\n\t"                                                             \
    "sxtb16 r9, r9, ror #8\n\t"                                                      \
    "sxtb16 lr, r10\n\t"                                                             \
    "sxtb16 r8, r10, ror #8\n\t"                                                     \
    "ldr    r11, [%[pa], #4]\n\t"                                                    \
    "ldr    r10, [%[pa]], #8\n\t"                                                    \
    "smlad  %[s0], r10, r12, %[s0]\n\t"                                              \
    "smlad  %[s0], r11, r9, %[s0]\n\t"                                               \
    "smlad  %[s1], r10, lr, %[s1]\n\t"                                               \
    "smlad  %[s1], r11, r8, %[s1]\n\t"                                               \
    "ldrd   r10, r11, [%[pa]], #8\n\t"                                               \
    "smlad  %[s2], r10, r12, %[s2]\n\t"                                              \
    "smlad  %[s2], r11, r9, %[s2]\n\t"                                               \
    "smlad  %[s3], r10, lr, %[s3]\n\t"                                               \
    "smlad  %[s3], r11, r8, %[s3]\n\t"                                               \
    "ldrd   r10, r11, [%[pa]], #8\n\t"                                               \
    "smlad  %[s4], r10, r12, %[s4]\n\t"                                              \
    "smlad  %[s4], r11, r9, %[s4]\n\t"                                               \
    "smlad  %[s5], r10, lr, %[s5]\n\t"                                               \
    "smlad  %[s5], r11, r8, %[s5]\n\t"

/* kb kept blocks in one asm statement (entered at kb % 8, then 8 per iteration), the
 * accumulators in registers throughout; as MT_ASM_KLOOP6 with the end of the tile's
 * weight stream in place of the panel's end (MT_ASM_REDUCE6, mt_gemm_out_opt.h). */
#define MT_PASM_KLOOP6(BLOCK)                                                         \
    do {                                                                              \
        const int32_t *const w_end = w + 3 * kb;                                      \
        const int32_t k_rem = kb ? kb % MT_REDUCE6_UNROLL : MT_REDUCE6_SKIP;                        \
        __asm__ volatile(MT_ASM_REDUCE6(BLOCK, "%[pb]")                               \
                         : [s0] "+r"(s[0]), [s1] "+r"(s[1]), [s2] "+r"(s[2]),         \
                           [s3] "+r"(s[3]), [s4] "+r"(s[4]), [s5] "+r"(s[5]),         \
                           [pa] "+r"(a), [pb] "+r"(w)                                 \
                         : [end] "m"(w_end), [rem] "m"(k_rem)                           \
                         : "r8", "r9", "r10", "r11", "r12", "lr", "cc", "memory");    \
    } while (0)
#define MT_PKLOOP_3x2_w0(MR, NR, WIDE) MT_PASM_KLOOP6(MT_PASM_3x2_W0_BLOCK)

/* Per tile of mt_ptiles_3x2_m2: its kept block count kb from the kept list, then
 * the reduction's entry %[rem] (kb % MT_REDUCE6_UNROLL, MT_REDUCE6_SKIP when kb = 0) and %[end] = the
 * end of its 3 kb weight words. */
#define MT_PASM_TILE_START                                                            \
    "ldr    r12, %[kept]\n\t"                                                         \
    "ldr    r8, [r12], #4\n\t"                                                        \
    "str    r12, %[kept]\n\t"                                                         \
    "and    r9, r8, %[mask]\n\t"                                                           \
    "cmp    r8, #0\n\t"                                                               \
    "it     eq\n\t"                                                                   \
    "moveq  r9, %[skip]\n\t"                                                         \
    "str    r9, %[rem]\n\t"                                                           \
    "add    r8, r8, r8, lsl #1\n\t"                                                   \
    "add    r8, %[pb], r8, lsl #2\n\t"                                                \
    "str    r8, %[end]\n\t"

/* The whole 3x2 tiles of a MODE 2 call (3 panel rows, output to out_end, row stride
 * n) in the exact kernel's asm tile loop: in C the pointers and tables went through
 * the stack around the reduction (about 190 instructions per tile against the exact
 * kernel's 140, so pruning paid only from about 0.3 of a layer's k-blocks). Returns
 * the next tile's weights. */
__attribute__((noinline)) static const int32_t *mt_ptiles_3x2_m2(const uint64_t *panel, const int32_t *kept,
                                                                const int32_t *w, const int32_t *bias,
                                                                const int32_t *rq, int8_t *output,
                                                                int8_t *out_end, int32_t n)
{
    const uint64_t *a_;
    int32_t t_[6];
    const int32_t *w_end = w;
    int32_t k_rem = 0;
    __asm__ volatile(MT_ASM_TILES_3x2_M2(MT_PASM_TILE_START, MT_PASM_3x2_W0_BLOCK, "%[pb]")
                     : [s0] "=&r"(t_[0]), [s1] "=&r"(t_[1]), [s2] "=&r"(t_[2]), [s3] "=&r"(t_[3]),
                       [s4] "=&r"(t_[4]), [s5] "=&r"(t_[5]), [pa] "=&r"(a_), [pb] "+r"(w),
                       [bias] "+m"(bias), [rq] "+m"(rq), [out] "+m"(output), [kept] "+m"(kept),
                       [end] "+m"(w_end), [rem] "+m"(k_rem)
                     : [panel] "m"(panel), [n] "m"(n), [out_end] "m"(out_end), [skip] "i"(MT_REDUCE6_SKIP),
                       [mask] "i"(MT_REDUCE6_UNROLL - 1)
                     : "r8", "r9", "r10", "r11", "r12", "lr", "cc", "memory");
    return w;
}
/* MODE 2, 3 panel rows: the whole channel tiles first, in asm; the C loop takes the
 * rest from n_start. */
#define MT_PTILES_3x2_M2()                                                            \
    do {                                                                              \
        if (rows == 3 && n_out >= 2) {                                                \
            n_start = n_out & ~1;                                                     \
            w = mt_ptiles_3x2_m2(panel, kept, w, bias, rq, output, output + n_start, n_out); \
            kept += n_start / 2;                                                      \
            bias += n_start;                                                          \
            rq += 3 * n_start;                                                        \
        }                                                                             \
    } while (0)
#define MT_PKLOOP_4x1_w0(MR, NR, WIDE) MT_PASM_KLOOP(MT_PASM_4x1_W0_BLOCK)
#define MT_PKLOOP_4x1_w1(MR, NR, WIDE) MT_PASM_KLOOP(MT_PASM_4x1_W1_BLOCK)
#else
#define MT_PTILES_3x2_M2() ((void)0)
#define MT_PKLOOP_3x2_w0 MT_PKLOOP_C
#define MT_PKLOOP_4x1_w0 MT_PKLOOP_C
#define MT_PKLOOP_4x1_w1 MT_PKLOOP_C
#endif
#define MT_PKLOOP_1x4_w0 MT_PKLOOP_C
#define MT_PKLOOP_1x4_w1 MT_PKLOOP_C

/* rows (<= MR) panel rows x all N channels, tile by tile (k-first). MODE as in
 * mt_matmul_opt.c: 0 exact requantisation + clamp, 1 mt_requant_fast + clamp,
 * 2 mt_requant_fast + SSAT. */
#define MT_DEFINE_PRUNED_ROWS(MR, NR, WIDE, MODE)                                     \
    static void mt_pruned_rows_##MR##x##NR##_w##WIDE##_m##MODE(const mt_pruned_opt_params *p, \
                                                     const uint64_t *panel,          \
                                                     int32_t rows, int8_t *output)   \
    {                                                                                 \
        const mt_gemm_opt *g = &p->c.g;                                               \
        const int32_t *w = (const int32_t *)g->weights;                               \
        const int32_t *bias = g->bias;                                                \
        const int32_t *rq = g->requant;                                               \
        const int32_t *kept = p->kept;                                                \
        const int32_t n_out = g->out_c;                                               \
        const int32_t lo = g->act_min, hi = g->act_max, zp = g->output_offset;        \
        (void)zp;                                                                     \
        (void)lo;                                                                     \
        (void)hi;                                                                     \
        int32_t n_start = 0;                                                          \
        if ((MR) == 3 && (NR) == 2 && (WIDE) == 0 && (MODE) == 2) {                   \
            MT_PTILES_3x2_M2();                                                       \
        }                                                                             \
        for (int32_t n0 = n_start; n0 < n_out; n0 += (NR)) {                          \
            int32_t s[(MR) * (NR)];                                                   \
            const uint64_t *a = panel;                                                \
            int32_t kb = *kept++;                                                     \
            _Pragma("GCC unroll 8")                                                   \
            for (int j = 0; j < (NR); j++) {                                          \
                _Pragma("GCC unroll 8")                                               \
                for (int i = 0; i < (MR); i++) {                                      \
                    s[i * (NR) + j] = bias[j];                                        \
                }                                                                     \
            }                                                                         \
            bias += (NR);                                                             \
            MT_PKLOOP_##MR##x##NR##_w##WIDE(MR, NR, WIDE);                                            \
            if (((MR) == 1 || rows == (MR)) && ((NR) == 1 || n0 + (NR) <= n_out)) {   \
                /* a whole tile (the common case): requantise all, then store without   \
                   bounds checks (the int8 stores may alias the tables) */            \
                int8_t y[(MR) * (NR)];                                                \
                _Pragma("GCC unroll 8")                                               \
                for (int j = 0; j < (NR); j++) {                                      \
                    const int32_t m = rq[3 * j], q1 = rq[3 * j + 1], q2 = rq[3 * j + 2]; \
                    (void)q2;                                                         \
                    _Pragma("GCC unroll 8")                                           \
                    for (int i = 0; i < (MR); i++) {                                  \
                        y[i * (NR) + j] = mt_out8(s[i * (NR) + j], m, q1, q2, (MODE), lo, hi, zp); \
                    }                                                                 \
                }                                                                     \
                _Pragma("GCC unroll 8")                                               \
                for (int i = 0; i < (MR) * (NR); i++) {                               \
                    output[(i / (NR)) * n_out + n0 + i % (NR)] = y[i];                \
                }                                                                     \
            } else {                                                                  \
                _Pragma("GCC unroll 8")                                               \
                for (int j = 0; j < (NR); j++) {                                      \
                    if (n0 + j < n_out) {                                             \
                        const int32_t m = rq[3 * j], q1 = rq[3 * j + 1], q2 = rq[3 * j + 2]; \
                        (void)q2;                                                     \
                        _Pragma("GCC unroll 8")                                       \
                        for (int i = 0; i < (MR); i++) {                              \
                            if (i < rows) {                                           \
                                output[i * n_out + n0 + j] =                          \
                                    mt_out8(s[i * (NR) + j], m, q1, q2, (MODE), lo, hi, zp); \
                            }                                                         \
                        }                                                             \
                    }                                                                 \
                }                                                                     \
            }                                                                         \
            rq += 3 * (NR);                                                           \
        }                                                                             \
    }

#define MT_DEFINE_PRUNED_TILE(MR, NR, WIDE)                                           \
    MT_DEFINE_PRUNED_ROWS(MR, NR, WIDE, 0)                                            \
    MT_DEFINE_PRUNED_ROWS(MR, NR, WIDE, 1)                                            \
    MT_DEFINE_PRUNED_ROWS(MR, NR, WIDE, 2)

MT_DEFINE_PRUNED_TILE(3, 2, 0)
MT_DEFINE_PRUNED_TILE(4, 1, 0)
MT_DEFINE_PRUNED_TILE(4, 1, 1)
MT_DEFINE_PRUNED_TILE(1, 4, 0)
MT_DEFINE_PRUNED_TILE(1, 4, 1)

#define MT_PCODE(mr, nr, wide, mode) (((mr) << 8) | ((nr) << 4) | ((wide) << 2) | (mode))
#define MT_PCASE(mr, nr, wide, mode)                                                  \
    case MT_PCODE(mr, nr, wide, mode):                                                \
        mt_pruned_rows_##mr##x##nr##_w##wide##_m##mode(p, panel, rows, output);       \
        break;
#define MT_PCASES(mr, nr, wide) MT_PCASE(mr, nr, wide, 0) MT_PCASE(mr, nr, wide, 1) MT_PCASE(mr, nr, wide, 2)

static void mt_pruned_rows(const mt_pruned_opt_params *p, const uint64_t *panel, int32_t rows,
                           int8_t *output)
{
    const mt_gemm_opt *g = &p->c.g;
    const int32_t mode = g->fast ? (g->act_min == -128 && g->act_max == 127 ? 2 : 1) : 0;
    switch (MT_PCODE(g->mr, g->nr, g->wide, mode)) {
    MT_PCASES(3, 2, 0)
    MT_PCASES(4, 1, 0)
    MT_PCASES(4, 1, 1)
    MT_PCASES(1, 4, 0)
    MT_PCASES(1, 4, 1)
    default: break; /* the host emits only the tiles above */
    }
}

void mt_pruned_s8_opt(const mt_pruned_opt_params *p, const int8_t *input, int8_t *output,
                      uint64_t *scratch)
{
    const mt_conv_opt_params *c = &p->c;
    const int32_t mr = c->g.mr;
    const int32_t kb = c->g.k_blocks;
    const int32_t pixels = c->out_h * c->out_w;
    int8_t *bytes = (int8_t *)(scratch + mr * kb);
    for (int32_t b = 0; b < c->batches; b++) {
        const int8_t *in_b = input + b * c->in_h * c->in_w * c->in_c;
        int8_t *out_b = output + b * pixels * c->g.out_c;
        int32_t oy = 0, ox = 0;
        for (int32_t m0 = 0; m0 < pixels; m0 += mr) {
            const int32_t rows = pixels - m0 < mr ? pixels - m0 : mr;
            for (int32_t r = 0; r < mr; r++) {
                if (r < rows) {
                    mt_conv_row(c, in_b, oy, ox, scratch, r, bytes);
                    if (++ox == c->out_w) {
                        ox = 0;
                        oy++;
                    }
                } else { /* rows past the pixels: zeros (their outputs are not stored) */
                    for (int32_t k = 0; k < kb; k++) {
                        scratch[k * mr + r] = 0;
                    }
                }
            }
            mt_pruned_rows(p, scratch, rows, out_b + m0 * c->g.out_c);
        }
    }
}

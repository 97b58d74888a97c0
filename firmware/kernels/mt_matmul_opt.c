/* Optimised matmul-shaped int8 kernels (FULLY_CONNECTED, CONV_2D): register-tiled
 * SMLAD micro-kernels over an int16 A panel and offline-packed weights. See
 * mt_matmul_opt.h for the data layouts and docs/schedules.md for the cost model. */
#include "mt_matmul_opt.h"

#include <string.h>

#include "mt_dsp.h"
#include "mt_gemm_out_opt.h"
#include "mt_requant_opt.h"

int32_t mt_requantize_opt(int32_t acc, int32_t multiplier, int32_t shift)
{
    return mt_req(acc, multiplier, shift);
}

/* A 64-bit word of packed weights: the const arrays are only 4-byte aligned (LDRD
 * and LDM need no more), so portable code reads them through memcpy. */
static inline uint64_t mt_ld64(const uint64_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Four int8 values (one word) -> the two int16-pair words of a panel block. */
static inline uint64_t mt_ext4(uint32_t x)
{
    return (uint64_t)mt_sxtb16(x) | ((uint64_t)mt_sxtb16_ror8(x) << 32);
}

/* The direct 1x4 tiles' A operand: the next word of the int8 input row, extended
 * where it is used (a walks the input bytes, 4 per block; no panel). */
static inline uint64_t mt_next_direct(const uint64_t **a)
{
    const int8_t *x = (const int8_t *)*a;
    *a = (const uint64_t *)(x + 4);
    return mt_ext4(mt_read_u32(x));
}

/* One k-block (4 reduction steps) of an MR x NR tile: weights of channel j are
 * extended once (or read pre-extended) and meet the MR panel rows (LOADA: the
 * next panel element of a row). */
#define MT_BLOCK(MR, NR, WIDE) MT_BLOCK_A(MR, NR, WIDE, *a++)
#define MT_BLOCK_A(MR, NR, WIDE, LOADA)                                               \
    do {                                                                              \
        uint32_t al[(MR)], ah[(MR)];                                                  \
        uint64_t wpair = 0;                                                           \
        _Pragma("GCC unroll 8")                                                       \
        for (int i = 0; i < (MR); i++) {                                              \
            const uint64_t v = (LOADA);                                               \
            al[i] = (uint32_t)v;                                                      \
            ah[i] = (uint32_t)(v >> 32);                                              \
        }                                                                             \
        _Pragma("GCC unroll 8")                                                       \
        for (int j = 0; j < (NR); j++) {                                              \
            uint32_t wl, wh;                                                          \
            if (WIDE) {                                                               \
                const uint64_t v = mt_ld64(b++);                                      \
                wl = (uint32_t)v;                                                     \
                wh = (uint32_t)(v >> 32);                                             \
            } else {                                                                  \
                uint32_t w;                                                           \
                if ((NR) % 2 == 0) {                                                  \
                    if (j % 2 == 0) {                                                 \
                        wpair = mt_ld64(b++);                                         \
                    }                                                                 \
                    w = (uint32_t)(wpair >> (32 * (j % 2)));                          \
                } else {                                                              \
                    w = wb[j];                                                        \
                }                                                                     \
                wl = mt_sxtb16(w);                                                    \
                wh = mt_sxtb16_ror8(w);                                               \
            }                                                                         \
            _Pragma("GCC unroll 8")                                                   \
            for (int i = 0; i < (MR); i++) {                                          \
                s[i * (NR) + j] = mt_smlad(al[i], wl, s[i * (NR) + j]);               \
                s[i * (NR) + j] = mt_smlad(ah[i], wh, s[i * (NR) + j]);               \
            }                                                                         \
        }                                                                             \
        if (!(WIDE) && (NR) % 2 != 0) {                                              \
            wb += (NR);                                                               \
        }                                                                             \
    } while (0)

/* The reduction loop of a tile: portable C (two k-blocks per iteration), or on
 * cores with the DSP extension hand-scheduled loops that load A and B with
 * LDM / LDRD (post-increment) so that every instruction but one load per operand
 * row is an SMLAD or an SXTB16 (see docs/schedules.md for the counts). */
#define MT_KLOOP_C(MR, NR, WIDE) MT_KLOOP_C_A(MR, NR, WIDE, *a++)
#define MT_KLOOP_C_DIRECT(MR, NR, WIDE) MT_KLOOP_C_A(MR, NR, WIDE, mt_next_direct(&a))
#define MT_KLOOP_C_A(MR, NR, WIDE, LOADA)                                             \
    do {                                                                              \
        for (; kb >= 2; kb -= 2) {                                                    \
            MT_BLOCK_A(MR, NR, WIDE, LOADA);                                          \
            MT_BLOCK_A(MR, NR, WIDE, LOADA);                                          \
        }                                                                             \
        if (kb != 0) {                                                                \
            MT_BLOCK_A(MR, NR, WIDE, LOADA);                                          \
        }                                                                             \
    } while (0)


#if MT_HAS_DSP

/* 4 pixels x 1 channel, int8 weights: per block LDR w, 2 SXTB16, 2 LDM (two
 * panel rows each), 8 SMLAD. */
#define MT_ASM_4x1_W0_BLOCK                                                           \
    "ldr    %[w], [%[pb]], #4\n\t"                                                    \
    "ldmia  %[pa]!, {r8, r9, r10, r11}\n\t"                                           \
    "sxtb16 %[t], %[w]\n\t"                                                           \
    "sxtb16 %[w], %[w], ror #8\n\t"                                                   \
    "smlad  %[s0], r8, %[t], %[s0]\n\t"                                               \
    "smlad  %[s0], r9, %[w], %[s0]\n\t"                                               \
    "smlad  %[s1], r10, %[t], %[s1]\n\t"                                              \
    "smlad  %[s1], r11, %[w], %[s1]\n\t"                                              \
    "ldmia  %[pa]!, {r8, r9, r10, r11}\n\t"                                           \
    "smlad  %[s2], r8, %[t], %[s2]\n\t"                                               \
    "smlad  %[s2], r9, %[w], %[s2]\n\t"                                               \
    "smlad  %[s3], r10, %[t], %[s3]\n\t"                                              \
    "smlad  %[s3], r11, %[w], %[s3]\n\t"

/* 4 pixels x 1 channel, int16 weights: LDRD w, 2 LDM, 8 SMLAD. */
#define MT_ASM_4x1_W1_BLOCK                                                           \
    "ldrd   %[t], %[w], [%[pb]], #8\n\t"                                              \
    "ldmia  %[pa]!, {r8, r9, r10, r11}\n\t"                                           \
    "smlad  %[s0], r8, %[t], %[s0]\n\t"                                               \
    "smlad  %[s0], r9, %[w], %[s0]\n\t"                                               \
    "smlad  %[s1], r10, %[t], %[s1]\n\t"                                              \
    "smlad  %[s1], r11, %[w], %[s1]\n\t"                                              \
    "ldmia  %[pa]!, {r8, r9, r10, r11}\n\t"                                           \
    "smlad  %[s2], r8, %[t], %[s2]\n\t"                                               \
    "smlad  %[s2], r9, %[w], %[s2]\n\t"                                               \
    "smlad  %[s3], r10, %[t], %[s3]\n\t"                                              \
    "smlad  %[s3], r11, %[w], %[s3]\n\t"

/* 1 row x 4 channels, int8 weights: LDRD x, 2 LDRD w (two channels each),
 * 8 SXTB16, 8 SMLAD. r8..r11 hold the weights. */
#define MT_ASM_1x4_W0_BLOCK MT_ASM_A_PANEL MT_ASM_1x4_W0_BODY
#define MT_ASM_1x4D_W0_BLOCK MT_ASM_A_DIRECT MT_ASM_1x4_W0_BODY
/* The input pair of a 1x4 block: LDRD of the panel, or (direct tiles) LDR of 4 int8
 * inputs + SXTB16 + SXTB16-ROR8, shared by the 4 channels. */
#define MT_ASM_A_PANEL "ldrd   %[t], %[w], [%[pa]], #8\n\t"
#define MT_ASM_A_DIRECT                                                               \
    "ldr    %[w], [%[pa]], #4\n\t"                                                    \
    "sxtb16 %[t], %[w]\n\t"                                                           \
    "sxtb16 %[w], %[w], ror #8\n\t"
#define MT_ASM_1x4_W0_BODY                                                            \
    "ldmia  %[pb]!, {r8, r9, r10, r11}\n\t"                                           \
    "sxtb16 r12, r8\n\t"                                                              \
    "sxtb16 r8, r8, ror #8\n\t"                                                       \
    "smlad  %[s0], %[t], r12, %[s0]\n\t"                                              \
    "smlad  %[s0], %[w], r8, %[s0]\n\t"                                               \
    "sxtb16 r12, r9\n\t"                                                              \
    "sxtb16 r9, r9, ror #8\n\t"                                                       \
    "smlad  %[s1], %[t], r12, %[s1]\n\t"                                              \
    "smlad  %[s1], %[w], r9, %[s1]\n\t"                                               \
    "sxtb16 r12, r10\n\t"                                                             \
    "sxtb16 r10, r10, ror #8\n\t"                                                     \
    "smlad  %[s2], %[t], r12, %[s2]\n\t"                                              \
    "smlad  %[s2], %[w], r10, %[s2]\n\t"                                              \
    "sxtb16 r12, r11\n\t"                                                             \
    "sxtb16 r11, r11, ror #8\n\t"                                                     \
    "smlad  %[s3], %[t], r12, %[s3]\n\t"                                              \
    "smlad  %[s3], %[w], r11, %[s3]\n\t"

/* 1 row x 4 channels, int16 weights: LDRD x, 2 LDM w, 8 SMLAD. */
#define MT_ASM_1x4_W1_BLOCK MT_ASM_A_PANEL MT_ASM_1x4_W1_BODY
#define MT_ASM_1x4D_W1_BLOCK MT_ASM_A_DIRECT MT_ASM_1x4_W1_BODY
#define MT_ASM_1x4_W1_BODY                                                            \
    "ldmia  %[pb]!, {r8, r9, r10, r11}\n\t"                                           \
    "smlad  %[s0], %[t], r8, %[s0]\n\t"                                               \
    "smlad  %[s0], %[w], r9, %[s0]\n\t"                                               \
    "smlad  %[s1], %[t], r10, %[s1]\n\t"                                              \
    "smlad  %[s1], %[w], r11, %[s1]\n\t"                                              \
    "ldmia  %[pb]!, {r8, r9, r10, r11}\n\t"                                           \
    "smlad  %[s2], %[t], r8, %[s2]\n\t"                                               \
    "smlad  %[s2], %[w], r9, %[s2]\n\t"                                               \
    "smlad  %[s3], %[t], r10, %[s3]\n\t"                                              \
    "smlad  %[s3], %[w], r11, %[s3]\n\t"

/* kb blocks: an odd one first, then two per iteration (SUBS + BNE per pair). */
#define MT_ASM_KLOOP(BLOCK, PB, CLOBBERS...)                                          \
    do {                                                                              \
        uint32_t w_, t_;                                                              \
        const void *pb_ = (PB);                                                       \
        if (kb & 1) {                                                                 \
            __asm__ volatile(BLOCK                                                    \
                             : [s0] "+r"(s[0]), [s1] "+r"(s[1]), [s2] "+r"(s[2]),     \
                               [s3] "+r"(s[3]), [pa] "+r"(a), [pb] "+r"(pb_),         \
                               [w] "=&r"(w_), [t] "=&r"(t_)                           \
                             :                                                        \
                             : CLOBBERS, "memory");                                   \
        }                                                                             \
        kb >>= 1;                                                                     \
        if (kb != 0) {                                                                \
            __asm__ volatile("1:\n\t" BLOCK BLOCK                                     \
                             "subs   %[kb], %[kb], #1\n\t"                            \
                             "bne    1b\n\t"                                          \
                             : [s0] "+r"(s[0]), [s1] "+r"(s[1]), [s2] "+r"(s[2]),     \
                               [s3] "+r"(s[3]), [pa] "+r"(a), [pb] "+r"(pb_),         \
                               [kb] "+r"(kb), [w] "=&r"(w_), [t] "=&r"(t_)            \
                             :                                                        \
                             : CLOBBERS, "cc", "memory");                             \
        }                                                                             \
        PB = pb_;                                                                     \
    } while (0)

/* 3 pixels x 2 channels, int8 weights: LDRD of the two channels' words, 4 SXTB16,
 * then per panel row one LDRD and 4 SMLAD (each A pair meets both channels, each
 * weight pair all 3 rows): 27 cycles per 24 MACs on a Cortex-M4 (the first four
 * words as single LDRs: a load after a load pipelines, 5 cycles where two LDRD take 6). The 6 accumulators
 * and 2 pointers leave no register for a counter: the loop ends when the A pointer
 * reaches the end of the panel (read from the stack, once per 2 blocks). */
#define MT_ASM_3x2_W0_BLOCK                                                           \
    "ldr    r9, [%[pb], #4]\n\t"                                                     \
    "ldr    r8, [%[pb]], #8\n\t"                                                     \
    "ldr    r11, [%[pa], #4]\n\t"                                                    \
    "ldr    r10, [%[pa]], #8\n\t"                                                    \
    "sxtb16 r12, r8\n\t"                                                             \
    "sxtb16 r8, r8, ror #8\n\t"                                                      \
    "sxtb16 lr, r9\n\t"                                                              \
    "sxtb16 r9, r9, ror #8\n\t"                                                      \
    MT_ASM_3x2_ROWS("r12", "r8", "lr", "r9")

/* 3 pixels x 2 channels, int16 weights: one LDM of both channels' pairs. */
#define MT_ASM_3x2_W1_BLOCK                                                           \
    "ldm    %[pb]!, {r8, r9, r12, lr}\n\t"                                           \
    "ldrd   r10, r11, [%[pa]], #8\n\t"                                               \
    MT_ASM_3x2_ROWS("r8", "r9", "r12", "lr")

/* L0/H0: channel 0 (lo, hi pairs), L1/H1: channel 1; r10/r11: row 0 loaded. */
#define MT_ASM_3x2_ROWS(L0, H0, L1, H1)                                               \
    "smlad  %[s0], r10, " L0 ", %[s0]\n\t"                                           \
    "smlad  %[s0], r11, " H0 ", %[s0]\n\t"                                           \
    "smlad  %[s1], r10, " L1 ", %[s1]\n\t"                                           \
    "smlad  %[s1], r11, " H1 ", %[s1]\n\t"                                           \
    "ldrd   r10, r11, [%[pa]], #8\n\t"                                               \
    "smlad  %[s2], r10, " L0 ", %[s2]\n\t"                                           \
    "smlad  %[s2], r11, " H0 ", %[s2]\n\t"                                           \
    "smlad  %[s3], r10, " L1 ", %[s3]\n\t"                                           \
    "smlad  %[s3], r11, " H1 ", %[s3]\n\t"                                           \
    "ldrd   r10, r11, [%[pa]], #8\n\t"                                               \
    "smlad  %[s4], r10, " L0 ", %[s4]\n\t"                                           \
    "smlad  %[s4], r11, " H0 ", %[s4]\n\t"                                           \
    "smlad  %[s5], r10, " L1 ", %[s5]\n\t"                                           \
    "smlad  %[s5], r11, " H1 ", %[s5]\n\t"

/* One asm statement for the reduction (MT_ASM_REDUCE6, mt_gemm_out_opt.h), so the 6
 * accumulators stay in registers from the bias to the requantisation. */
#define MT_ASM_KLOOP6(BLOCK)                                                          \
    do {                                                                              \
        const void *pb_ = b;                                                          \
        __asm__ volatile(MT_ASM_REDUCE6(BLOCK, "%[pa]")                               \
                         : [s0] "+r"(s[0]), [s1] "+r"(s[1]), [s2] "+r"(s[2]),         \
                           [s3] "+r"(s[3]), [s4] "+r"(s[4]), [s5] "+r"(s[5]),         \
                           [pa] "+r"(a), [pb] "+r"(pb_)                               \
                         : [end] "m"(a_end), [rem] "m"(k_rem)                           \
                         : "r8", "r9", "r10", "r11", "r12", "lr", "cc", "memory");    \
        b = pb_;                                                                      \
    } while (0)

/* The channel tiles of 3 rows with MODE 2 from output to out_end (row stride n), in
 * one asm loop (MT_ASM_TILES_3x2_M2, mt_gemm_out_opt.h): bias, the reduction, the
 * requantisation and the 6 byte stores. In C
 * the loop's pointers, counters and tables lived on the stack around the reduction's
 * asm and were reloaded and spilled per tile (VWW's K=8 layer on the L4R5 timing
 * model: 113 of a tile's 171 est. cycles outside the reduction). A function, not a
 * macro, so that the partial tiles (MT_ROWS_3x2_M2) run the same code: one copy of
 * the reduction per weight format (the ROM rule). Returns the next tile's weights. */
#define MT_DEFINE_TILES_3x2_M2(WIDE, BLOCK)                                           \
    __attribute__((noinline)) static const void *mt_tiles_3x2_m2_w##WIDE(             \
        const uint64_t *panel, const uint64_t *a_end, int32_t k_rem,                  \
        const void *b, const int32_t *bias, const int32_t *rq, int8_t *output,        \
        int8_t *out_end, int32_t n)                                                   \
    {                                                                                 \
        const uint64_t *a_;                                                           \
        int32_t t_[6];                                                                \
        __asm__ volatile(MT_ASM_TILES_3x2_M2("", BLOCK, "%[pa]")                      \
                         : [s0] "=&r"(t_[0]), [s1] "=&r"(t_[1]), [s2] "=&r"(t_[2]),   \
                           [s3] "=&r"(t_[3]), [s4] "=&r"(t_[4]), [s5] "=&r"(t_[5]),   \
                           [pa] "=&r"(a_), [pb] "+r"(b), [bias] "+m"(bias),           \
                           [rq] "+m"(rq), [out] "+m"(output)                          \
                         : [end] "m"(a_end), [rem] "m"(k_rem),                          \
                           [panel] "m"(panel), [n] "m"(n), [out_end] "m"(out_end)     \
                         : "r8", "r9", "r10", "r11", "r12", "lr", "cc", "memory");    \
        return b;                                                                     \
    }
MT_DEFINE_TILES_3x2_M2(0, MT_ASM_3x2_W0_BLOCK)
MT_DEFINE_TILES_3x2_M2(1, MT_ASM_3x2_W1_BLOCK)

/* All channel tiles of a 3x2 MODE 2 call: the whole ones in place; a partial one (the
 * panel's last rows, an odd last channel) into y_ and copied out. Bias, tables and
 * weights are padded to whole tiles and missing panel rows are zero, so every tile
 * reads in bounds. */
#define MT_ROWS_3x2_M2(WIDE)                                                          \
    do {                                                                              \
        const void *b_ = b;                                                           \
        const int32_t whole_ = rows == 3 ? (n_out & ~1) : 0;                          \
        if (whole_ > 0) {                                                             \
            b_ = mt_tiles_3x2_m2_w##WIDE(panel, a_end, k_rem, b_, bias, rq, output,        \
                                         output + whole_, n_out);                     \
        }                                                                             \
        for (int32_t n0_ = whole_; n0_ < n_out; n0_ += 2) {                           \
            int8_t y_[6];                                                             \
            b_ = mt_tiles_3x2_m2_w##WIDE(panel, a_end, k_rem, b_, bias + n0_,         \
                                         rq + 3 * n0_, y_, y_ + 2, 2);                \
            for (int32_t i_ = 0; i_ < rows; i_++) {                                   \
                for (int32_t j_ = 0; j_ < 2 && n0_ + j_ < n_out; j_++) {              \
                    output[i_ * n_out + n0_ + j_] = y_[2 * i_ + j_];                  \
                }                                                                     \
            }                                                                         \
        }                                                                             \
    } while (0)

#define MT_KLOOP_3x2_w0(MR, NR, WIDE) MT_ASM_KLOOP6(MT_ASM_3x2_W0_BLOCK)
#define MT_KLOOP_3x2_w1(MR, NR, WIDE) MT_ASM_KLOOP6(MT_ASM_3x2_W1_BLOCK)
#define MT_KLOOP_4x1_w0(MR, NR, WIDE) MT_ASM_KLOOP(MT_ASM_4x1_W0_BLOCK, wb, "r8", "r9", "r10", "r11")
#define MT_KLOOP_4x1_w1(MR, NR, WIDE) MT_ASM_KLOOP(MT_ASM_4x1_W1_BLOCK, b, "r8", "r9", "r10", "r11")
#define MT_KLOOP_1x4_w0(MR, NR, WIDE) MT_ASM_KLOOP(MT_ASM_1x4_W0_BLOCK, b, "r8", "r9", "r10", "r11", "r12")
#define MT_KLOOP_1x4_w1(MR, NR, WIDE) MT_ASM_KLOOP(MT_ASM_1x4_W1_BLOCK, b, "r8", "r9", "r10", "r11")
#define MT_KLOOP_1x4d_w0_BODY(MR, NR, WIDE) MT_ASM_KLOOP(MT_ASM_1x4D_W0_BLOCK, b, "r8", "r9", "r10", "r11", "r12")
#define MT_KLOOP_1x4d_w1_BODY(MR, NR, WIDE) MT_ASM_KLOOP(MT_ASM_1x4D_W1_BLOCK, b, "r8", "r9", "r10", "r11")

#else
#define MT_ROWS_3x2_M2(WIDE) ((void)0)
#define MT_KLOOP_3x2_w0 MT_KLOOP_C
#define MT_KLOOP_3x2_w1 MT_KLOOP_C
#define MT_KLOOP_4x1_w0 MT_KLOOP_C
#define MT_KLOOP_4x1_w1 MT_KLOOP_C
#define MT_KLOOP_1x4_w0 MT_KLOOP_C
#define MT_KLOOP_1x4_w1 MT_KLOOP_C
#define MT_KLOOP_1x4d_w0_BODY MT_KLOOP_C_DIRECT
#define MT_KLOOP_1x4d_w1_BODY MT_KLOOP_C_DIRECT
#endif

/* rows (<= MR) panel rows x all N channels: per channel tile, accumulate the whole
 * reduction in registers (k-first), then requantise and store the tile.
 * MODE 0: exact requantisation (mt_req) + clamp; 1: mt_requant_fast + clamp;
 * 2: mt_requant_fast + SSAT (activation range = int8 range). */
#define MT_DEFINE_ROWS(MR, NR, WIDE, MODE)                                            \
    MT_DEFINE_ROWS_AS(mt_gemm_rows_##MR##x##NR##_w##WIDE##_m##MODE, MR, NR, WIDE, MODE, \
                      MT_KLOOP_##MR##x##NR##_w##WIDE)
#define MT_DEFINE_ROWS_AS(NAME, MR, NR, WIDE, MODE, KLOOP)                            \
    /* on a flash line (32 B on the L4's ART): the hot loop's line split no longer moves */ \
    /* with the code before it (IC's estimate moved 1.4 % with it) */                 \
    __attribute__((aligned(32)))                                                      \
    void NAME(const mt_gemm_opt *g, const uint64_t *panel, int32_t rows, int8_t *output) \
    {                                                                                 \
        const uint64_t *b = (const uint64_t *)g->weights;                             \
        const uint32_t *wb = (const uint32_t *)g->weights;                            \
        const int32_t *bias = g->bias;                                                \
        const int32_t *rq = g->requant;                                               \
        const int32_t n_out = g->out_c;                                               \
        const int32_t lo = g->act_min, hi = g->act_max, zp = g->output_offset;        \
        (void)b;                                                                      \
        (void)wb;                                                                     \
        (void)zp;                                                                     \
        (void)lo;                                                                     \
        (void)hi;                                                                     \
        /* per call, not per tile: the panel's end and the reduction's remainder */   \
        const int32_t k_blocks = g->k_blocks;                                         \
        const uint64_t *const a_end = panel + (MR) * k_blocks;                        \
        const int32_t k_rem = k_blocks % MT_REDUCE6_UNROLL; /* the reduction's entry (k_blocks >= 1) */ \
        (void)a_end;                                                                  \
        (void)k_rem;                                                                  \
        if (MT_HAS_DSP && (MR) == 3 && (NR) == 2 && (MODE) == 2) {                    \
            MT_ROWS_3x2_M2(WIDE); /* the only copy of the reduction these use */     \
            return;                                                                   \
        }                                                                             \
        for (int32_t n0 = 0; n0 < n_out; n0 += (NR)) {                                \
            int32_t s[(MR) * (NR)];                                                   \
            const uint64_t *a = panel;                                                \
            int32_t kb = k_blocks;                                                    \
            (void)kb; /* the asm reduction loops count their own blocks */             \
            _Pragma("GCC unroll 8")                                                   \
            for (int j = 0; j < (NR); j++) {                                          \
                _Pragma("GCC unroll 8")                                               \
                for (int i = 0; i < (MR); i++) {                                      \
                    s[i * (NR) + j] = bias[j];                                        \
                }                                                                     \
            }                                                                         \
            bias += (NR);                                                             \
            KLOOP(MR, NR, WIDE);                                                      \
            if (((MR) == 1 || rows == (MR)) && ((NR) == 1 || n0 + (NR) <= n_out)) {   \
                /* a whole tile (the common case): all outputs requantised first (the     \
                   int8 stores may alias the tables), then stored without bounds checks */ \
                int8_t y[(MR) * (NR)];                                                \
                _Pragma("GCC unroll 8")                                               \
                for (int j = 0; j < (NR); j++) {                                      \
                    const int32_t m = rq[3 * j], q1 = rq[3 * j + 1], q2 = rq[3 * j + 2]; \
                    _Pragma("GCC unroll 8")                                           \
                    for (int i = 0; i < (MR); i++) {                                  \
                        y[i * (NR) + j] = mt_out8(s[i * (NR) + j], m, q1, q2, (MODE), lo, hi, zp); \
                    }                                                                 \
                }                                                                     \
                int8_t *o_ = output + n0;                                             \
                _Pragma("GCC unroll 8")                                               \
                for (int i = 0; i < (MR); i++) {                                      \
                    _Pragma("GCC unroll 8")                                           \
                    for (int j = 0; j < (NR); j++) {                                  \
                        o_[j] = y[i * (NR) + j];                                      \
                    }                                                                 \
                    o_ += n_out;                                                      \
                }                                                                     \
            } else { /* unrolled too: constant indices keep s[] in registers */       \
                _Pragma("GCC unroll 8")                                               \
                for (int j = 0; j < (NR); j++) {                                      \
                    if (n0 + j < n_out) {                                             \
                        const int32_t m = rq[3 * j], q1 = rq[3 * j + 1], q2 = rq[3 * j + 2]; \
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

#define MT_DEFINE_TILE(MR, NR, WIDE)                                                  \
    MT_DEFINE_ROWS(MR, NR, WIDE, 0)                                                   \
    MT_DEFINE_ROWS(MR, NR, WIDE, 1)                                                   \
    MT_DEFINE_ROWS(MR, NR, WIDE, 2)

MT_DEFINE_TILE(1, 4, 0)
MT_DEFINE_TILE(1, 4, 1)
MT_DEFINE_TILE(4, 1, 0)
MT_DEFINE_TILE(4, 1, 1)
MT_DEFINE_TILE(3, 2, 0)
MT_DEFINE_TILE(3, 2, 1)

/* Direct 1x4 tiles (FC, one row at a time, no panel): `panel` is the int8 input row
 * itself and the depth comes from the mt_fully_connected_opt_params that g is the
 * first member of. depth / 4 whole words in the loop, then the last 1-3 inputs as a
 * word padded with zeros (their weights are zero), never read past the row. */
#define MT_KLOOP_1x4d(MR, NR, WIDE, BODY)                                             \
    do {                                                                              \
        const int32_t depth_ = ((const mt_fully_connected_opt_params *)g)->depth;     \
        kb = depth_ >> 2;                                                             \
        BODY(MR, NR, WIDE);                                                           \
        if (depth_ & 3) {                                                             \
            const int8_t *x_ = (const int8_t *)panel + (depth_ & ~3);                 \
            uint32_t word_ = 0;                                                       \
            for (int32_t k_ = 0; k_ < (depth_ & 3); k_++) {                           \
                word_ |= (uint32_t)(uint8_t)x_[k_] << (8 * k_);                       \
            }                                                                         \
            MT_BLOCK_A(1, NR, WIDE, mt_ext4(word_));                                  \
        }                                                                             \
    } while (0)
#define MT_KLOOP_1x4d_w0(MR, NR, WIDE) MT_KLOOP_1x4d(MR, NR, WIDE, MT_KLOOP_1x4d_w0_BODY)
#define MT_KLOOP_1x4d_w1(MR, NR, WIDE) MT_KLOOP_1x4d(MR, NR, WIDE, MT_KLOOP_1x4d_w1_BODY)
#define MT_DEFINE_DIRECT(WIDE, MODE)                                                  \
    MT_DEFINE_ROWS_AS(mt_gemm_rows_1x4d_w##WIDE##_m##MODE, 1, 4, WIDE, MODE, MT_KLOOP_1x4d_w##WIDE)
MT_DEFINE_DIRECT(0, 0)
MT_DEFINE_DIRECT(0, 1)
MT_DEFINE_DIRECT(0, 2)
MT_DEFINE_DIRECT(1, 0)
MT_DEFINE_DIRECT(1, 1)
MT_DEFINE_DIRECT(1, 2)

void mt_gemm_s8_opt_rows(const mt_gemm_opt *g, const uint64_t *panel, int32_t rows, int8_t *output)
{
    g->rows(g, panel, rows, output);
}

/* ------------------------------------------------------------------ A panels */

/* bytes (k_blocks * 4 of them) -> panel row. */
static void mt_panel_from_bytes(uint64_t *panel, int32_t mr, int32_t row, const int8_t *bytes,
                                int32_t k_blocks)
{
    uint64_t *dst = panel + row;
    for (int32_t b = 0; b < k_blocks; b++) {
        *dst = mt_ext4(mt_read_u32(bytes + 4 * b));
        dst += mr;
    }
}

static void mt_panel_zero_row(uint64_t *panel, int32_t mr, int32_t row, int32_t k_blocks)
{
    uint64_t *dst = panel + row;
    for (int32_t b = 0; b < k_blocks; b++) {
        *dst = 0;
        dst += mr;
    }
}

void mt_fully_connected_s8_opt(const mt_fully_connected_opt_params *p, const int8_t *input,
                               int8_t *output, uint64_t *scratch)
{
    const mt_gemm_opt *g = &p->g;
    const int32_t mr = g->mr;
    const int32_t kb = g->k_blocks;
    const int32_t full = p->depth / 4;
    if (scratch == NULL) { /* a direct 1x4 tile (the host chose it): no panel, row by row */
        for (int32_t m = 0; m < p->batches; m++) {
            g->rows(g, (const uint64_t *)(const void *)(input + m * p->depth), 1, output + m * g->out_c);
        }
        return;
    }
    for (int32_t m0 = 0; m0 < p->batches; m0 += mr) {
        const int32_t rows = p->batches - m0 < mr ? p->batches - m0 : mr;
        for (int32_t r = 0; r < mr; r++) {
            if (r >= rows) {
                mt_panel_zero_row(scratch, mr, r, kb);
                continue;
            }
            const int8_t *x = input + (m0 + r) * p->depth;
            uint64_t *dst = scratch + r;
            for (int32_t b = 0; b < full; b++) {
                *dst = mt_ext4(mt_read_u32(x + 4 * b));
                dst += mr;
            }
            if (full < kb) { /* odd depth: the last word padded with zeros (zero weights there) */
                uint32_t w = 0;
                for (int32_t k = 4 * full; k < p->depth; k++) {
                    w |= (uint32_t)(uint8_t)x[k] << (8 * (k - 4 * full));
                }
                *dst = mt_ext4(w);
            }
        }
        mt_gemm_s8_opt_rows(g, scratch, rows, output + m0 * g->out_c);
    }
}

/* A window of 3 filter rows of 9 bytes (3x3 of 3 channels: the RGB first layer of IC
 * and VWW) inside the image horizontally, from (y0, x0): its 27 bytes as 7 panel words of constant shifts
 * (unaligned word reads that stay inside each 9-byte row; rows outside the image
 * read a row of zp bytes, chosen by a select, not a loop through the stack), down
 * panel column dst of the 3-row panel (a constant stride: pairs of STRs with immediate
 * offsets; other tiles take mt_conv_row's gather). One copy, out of line: code is ROM
 * (the rule). */
static void mt_panel_rgb3x3(const mt_conv_opt_params *p, const int8_t *in_b, int32_t y0, int32_t x0,
                            uint64_t *dst)
{
    enum { mr = 3 };
    const uint32_t zp4 = ((uint32_t)(uint8_t)p->input_zp) * 0x01010101u;
    const uint32_t zrow[3] = {zp4, zp4, zp4};
    const int32_t row_bytes = p->in_w * p->in_c;
    const int8_t *col = in_b + x0 * p->in_c; /* column x0 of image row 0 */
    const int8_t *r0, *r1, *r2;
    if (y0 >= 0 && y0 + 2 < p->in_h) {
        r0 = col + y0 * row_bytes;
        r1 = r0 + row_bytes;
        r2 = r1 + row_bytes;
    } else { /* a border row: a pointer is formed only to a row inside the image (C) */
        const int8_t *z = (const int8_t *)zrow;
        r0 = (uint32_t)y0 < (uint32_t)p->in_h ? col + y0 * row_bytes : z;
        r1 = (uint32_t)(y0 + 1) < (uint32_t)p->in_h ? col + (y0 + 1) * row_bytes : z;
        r2 = (uint32_t)(y0 + 2) < (uint32_t)p->in_h ? col + (y0 + 2) * row_bytes : z;
    }
    dst[0] = mt_ext4(mt_read_u32(r0));
    dst[mr] = mt_ext4(mt_read_u32(r0 + 4));
    dst[2 * mr] = mt_ext4(((uint32_t)(uint8_t)r0[8]) | (mt_read_u32(r1) << 8));
    dst[3 * mr] = mt_ext4(mt_read_u32(r1 + 3));
    dst[4 * mr] = mt_ext4((mt_read_u32(r1 + 5) >> 16) | (mt_read_u32(r2) << 16));
    dst[5 * mr] = mt_ext4(mt_read_u32(r2 + 2));
    dst[6 * mr] = mt_ext4(mt_read_u32(r2 + 5) >> 8); /* the top byte: K tail, zero */
}

/* The receptive field of output pixel (oy, ox) as K int8 values (padding = zp),
 * into the panel row (also used by the pruned kernels, mt_pruned_opt.c). */
void mt_conv_row(const mt_conv_opt_params *p, const int8_t *in_b, int32_t oy, int32_t ox,
                        uint64_t *panel, int32_t row, int8_t *bytes)
{
    const int32_t mr = p->g.mr;
    const int32_t kb = p->g.k_blocks;
    const int32_t c = p->in_c;
    const int32_t run = p->k_w * c; /* values per filter row */
    const int32_t y0 = oy * p->stride_h - p->pad_h;
    const int32_t x0 = ox * p->stride_w - p->pad_w;
    const int inside_x = x0 >= 0 && x0 + p->k_w <= p->in_w;
    if (inside_x && (run & 3) == 0) {
        /* whole filter rows are contiguous words of the input: extend in place */
        const uint64_t zw = mt_ext4(((uint32_t)(uint8_t)p->input_zp) * 0x01010101u);
        uint64_t *dst = panel + row;
        for (int32_t ky = 0; ky < p->k_h; ky++) {
            const int32_t iy = y0 + ky;
            if (iy < 0 || iy >= p->in_h) {
                for (int32_t t = 0; t < run; t += 4) {
                    *dst = zw;
                    dst += mr;
                }
                continue;
            }
            const int8_t *src = in_b + (iy * p->in_w + x0) * c;
            _Pragma("GCC unroll 4") /* the loop overhead was a third of a block's cost */
            for (int32_t t = 0; t < run; t += 4) {
                *dst = mt_ext4(mt_read_u32(src + t));
                dst += mr;
            }
        }
        return;
    }
    if (inside_x && run == 9 && p->k_h == 3 && mr == 3) {
        mt_panel_rgb3x3(p, in_b, y0, x0, panel + row);
        return;
    }
    if (run == 4 && p->in_w * c >= 4) {
        /* one word per filter row (KWS's 10x4 first layer): the clipped row as one
           word, shifted, with zp bytes shifted in; no per-tap gather */
        const int32_t row_bytes = p->in_w * c;
        const uint32_t zp4 = ((uint32_t)(uint8_t)p->input_zp) * 0x01010101u;
        const int32_t o = x0 * c; /* the row's first byte, relative to the image row */
        uint64_t *dst = panel + row;
        for (int32_t ky = 0; ky < p->k_h; ky++) {
            const int32_t iy = y0 + ky;
            const int8_t *r = in_b + iy * row_bytes;
            uint32_t w = zp4;
            if (iy < 0 || iy >= p->in_h || o <= -4 || o >= row_bytes) {
                /* the row outside the image: all padding */
            } else if (o < 0) {
                w = (mt_read_u32(r) << (8 * -o)) | (zp4 >> (8 * (4 + o)));
            } else if (o > row_bytes - 4) {
                const int32_t e = o - (row_bytes - 4); /* 1..3 bytes past the row's end */
                w = (mt_read_u32(r + row_bytes - 4) >> (8 * e)) | (zp4 << (8 * (4 - e)));
            } else {
                w = mt_read_u32(r + o);
            }
            *dst = mt_ext4(w);
            dst += mr;
        }
        return;
    }
    /* general case: gather bytes (padding = zp, tail = 0), then extend */
    int8_t *q = bytes;
    for (int32_t ky = 0; ky < p->k_h; ky++) {
        const int32_t iy = y0 + ky;
        if (inside_x && iy >= 0 && iy < p->in_h) {
            /* a whole filter row inside the image: one contiguous run */
            const int8_t *src = in_b + (iy * p->in_w + x0) * c;
            int32_t i = 0;
            for (; i + 4 <= run; i += 4) {
                mt_write_u32(q + i, mt_read_u32(src + i));
            }
            switch (run - i) { /* 0..3 bytes left; no loop, so no memcpy call */
            case 3: q[i + 2] = src[i + 2]; /* fall through */
            case 2: q[i + 1] = src[i + 1]; /* fall through */
            case 1: q[i] = src[i]; break;
            default: break;
            }
            q += run;
            continue;
        }
        for (int32_t kx = 0; kx < p->k_w; kx++) {
            const int32_t ix = x0 + kx;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                for (int32_t i = 0; i < c; i++) {
                    *q++ = (int8_t)p->input_zp;
                }
            } else {
                const int8_t *src = in_b + (iy * p->in_w + ix) * c;
                for (int32_t i = 0; i < c; i++) {
                    *q++ = src[i];
                }
            }
        }
    }
    /* at most 3 bytes of K tail (zero weights there); unrolled, so no memset call */
    int8_t *const end = bytes + 4 * kb;
    if (q < end) {
        *q++ = 0;
    }
    if (q < end) {
        *q++ = 0;
    }
    if (q < end) {
        *q = 0;
    }
    mt_panel_from_bytes(panel, mr, row, bytes, kb);
}

/* `words` words of int8 input from src, extended, down panel column dst (stride mr). */
static inline uint64_t *mt_panel_run(uint64_t *dst, int32_t mr, const int8_t *src, int32_t words)
{
    _Pragma("GCC unroll 4") /* the loop overhead was a third of a word's cost */
    for (int32_t t = 0; t < words; t++) {
        *dst = mt_ext4(mt_read_u32(src + 4 * t));
        dst += mr;
    }
    return dst;
}

void mt_conv_s8_opt(const mt_conv_opt_params *p, const int8_t *input, int8_t *output,
                    uint64_t *scratch)
{
    const mt_gemm_opt *g = &p->g;
    const int32_t mr = g->mr;
    const int32_t kb = g->k_blocks;
    const int32_t pixels = p->out_h * p->out_w;
    int8_t *bytes = (int8_t *)(scratch + mr * kb);
    /* A pixel whose receptive field lies inside the image, with filter rows of whole
       words, is extended here, row by row: no call, no per-tap test (mt_conv_row's
       set-up cost more than a 1x1 conv's few words). The rest go through mt_conv_row. */
    const int32_t words = (p->k_w * p->in_c) / 4;
    const int32_t row_bytes = p->in_w * p->in_c;
    const int32_t y_last = p->in_h - p->k_h, x_last = p->in_w - p->k_w; /* the last inside origin */
    const int words_only = ((p->k_w * p->in_c) & 3) == 0 && y_last >= 0 && x_last >= 0;
    const int rgb3x3 = p->k_h == 3 && p->k_w * p->in_c == 9 && x_last >= 0 && mr == 3; /* mt_panel_rgb3x3 */
    /* a 1x1 conv with stride 1, no padding and whole words per pixel is a GEMM over
       the input itself: 3 consecutive pixels' rows extended a block at a time */
    const int pointwise = p->k_h == 1 && p->k_w == 1 && p->stride_h == 1 && p->stride_w == 1 && p->pad_h == 0 &&
                          p->pad_w == 0 && (p->in_c & 3) == 0 && mr == 3;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + b * p->in_h * p->in_w * p->in_c;
        int8_t *out_b = output + b * pixels * g->out_c;
        int32_t oy = 0, ox = 0;
        if (pointwise) {
            const int32_t full = pixels - pixels % 3;
            for (int32_t m0 = 0; m0 < full; m0 += 3) {
                const int8_t *x = in_b + m0 * p->in_c;
                uint64_t *dst = scratch;
                for (int32_t k = 0; k < kb; k++) {
                    const uint32_t a0 = mt_read_u32(x), a1 = mt_read_u32(x + p->in_c), a2 = mt_read_u32(x + 2 * p->in_c);
                    dst[0] = mt_ext4(a0);
                    dst[1] = mt_ext4(a1);
                    dst[2] = mt_ext4(a2);
                    dst += 3;
                    x += 4;
                }
                mt_gemm_s8_opt_rows(g, scratch, 3, out_b + m0 * g->out_c);
            }
            oy = full / p->out_w; /* the last 1-2 pixels: the general path below */
            ox = full % p->out_w;
        }
        for (int32_t m0 = pointwise ? pixels - pixels % 3 : 0; m0 < pixels; m0 += mr) {
            const int32_t rows = pixels - m0 < mr ? pixels - m0 : mr;
            for (int32_t r = 0; r < mr; r++) {
                if (r < rows) {
                    const int32_t y0 = oy * p->stride_h - p->pad_h;
                    const int32_t x0 = ox * p->stride_w - p->pad_w;
                    if (words_only && (uint32_t)y0 <= (uint32_t)y_last && (uint32_t)x0 <= (uint32_t)x_last) {
                        const int8_t *src = in_b + y0 * row_bytes + x0 * p->in_c;
                        uint64_t *dst = scratch + r;
                        for (int32_t ky = 0; ky < p->k_h; ky++) {
                            dst = mt_panel_run(dst, mr, src, words);
                            src += row_bytes;
                        }
                    } else if (rgb3x3 && (uint32_t)x0 <= (uint32_t)x_last) {
                        mt_panel_rgb3x3(p, in_b, y0, x0, scratch + r);
                    } else {
                        mt_conv_row(p, in_b, oy, ox, scratch, r, bytes);
                    }
                    if (++ox == p->out_w) {
                        ox = 0;
                        oy++;
                    }
                } else {
                    mt_panel_zero_row(scratch, mr, r, kb);
                }
            }
            mt_gemm_s8_opt_rows(g, scratch, rows, out_b + m0 * g->out_c);
        }
    }
}

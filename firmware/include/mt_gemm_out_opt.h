/* The output step shared by the optimised matmul kernels (mt_matmul_opt.c) and the
 * pruned ones (mt_pruned_opt.c): one int32 accumulator -> int8, bit-exact with TFLM. */
#ifndef MT_GEMM_OUT_OPT_H
#define MT_GEMM_OUT_OPT_H

#include <stdint.h>

#include "mt_dsp.h"
#include "mt_requant_opt.h"

/* The control of a 6-accumulator asm reduction (the 3x2 tiles of mt_matmul_opt.c and
 * mt_pruned_opt.c): a loop of 8 blocks per iteration, entered by TBH on %[rem] (Duff's
 * device): kb % 8 enters at the block that leaves a multiple of 8 (0: at the top),
 * MT_REDUCE6_SKIP skips the loop (a pruned tile with no block kept). It then runs until
 * the pointer PTR (an operand name, e.g. "%[pa]", that BLOCK advances) reaches %[end],
 * 6 est. cycles per 8 blocks. The entry costs 5 est. cycles per tile; the tests of
 * kb & 1, kb & 2 and PTR == end it replaced cost 14-16, and a test per 4 blocks 6. r10
 * is scratch. */
#define MT_REDUCE6_UNROLL 8
#define MT_REDUCE6_SKIP MT_REDUCE6_UNROLL
#define MT_ASM_REDUCE6(BLOCK, PTR)                                                    \
    "ldr    r10, %[rem]\n\t"                                                           \
    "tbh    [pc, r10, lsl #1]\n\t"                                                    \
    "6:\n\t"                                                                          \
    ".hword (40f - 6b) / 2, (47f - 6b) / 2, (46f - 6b) / 2, (45f - 6b) / 2\n\t"         \
    ".hword (44f - 6b) / 2, (43f - 6b) / 2, (42f - 6b) / 2, (41f - 6b) / 2, (2f - 6b) / 2\n\t" \
    "40:\n\t" BLOCK "41:\n\t" BLOCK "42:\n\t" BLOCK "43:\n\t" BLOCK                   \
    "44:\n\t" BLOCK "45:\n\t" BLOCK "46:\n\t" BLOCK "47:\n\t" BLOCK                   \
    "ldr    r10, %[end]\n\t"                                                          \
    "cmp    " PTR ", r10\n\t"                                                         \
    "bne    40b\n\t"                                                                  \
    "2:\n\t"

/* One output of mt_requant_fast + SSAT (MODE 2) on accumulator S, the channel's
 * (mult, k, right) in r8, r9, r10, r11 scratch: SMMLAR folds in k and the sign fix
 * reads the sign of acc, as MT_DW_REQ1 (mt_depthwise_opt.h says why that is exact). */
#define MT_ASM_OUT_M2(S)                                                              \
    "lsl    " S ", " S ", #1\n\t"                                                      \
    "smmlar r11, " S ", r8, r9\n\t"                                                   \
    "add    " S ", r11, " S ", asr #31\n\t"                                            \
    "asr    " S ", " S ", r10\n\t"                                                    \
    "ssat   " S ", #8, " S "\n\t"

/* The loop of 3-row, 2-channel tiles with MODE 2 (mt_requant_fast + SSAT), output to
 * %[out_end] (row stride %[n]): per tile START (the pruned kernel reads the tile's kept
 * block count there), the bias, the reduction (MT_ASM_REDUCE6 with BLOCK and PTR), the
 * requantisation and the 6 byte stores. Shared by mt_tiles_3x2_m2_w* (mt_matmul_opt.c)
 * and mt_ptiles_3x2_m2 (mt_pruned_opt.c). */
#define MT_ASM_TILES_3x2_M2(START, BLOCK, PTR)                                        \
    "5:\n\t" START                                                                    \
    "ldr    r12, %[bias]\n\t"                                                         \
    "ldrd   %[s0], %[s1], [r12], #8\n\t"                                              \
    "str    r12, %[bias]\n\t"                                                         \
    "mov    %[s2], %[s0]\n\t"                                                         \
    "mov    %[s4], %[s0]\n\t"                                                         \
    "mov    %[s3], %[s1]\n\t"                                                         \
    "mov    %[s5], %[s1]\n\t"                                                         \
    "ldr    %[pa], %[panel]\n\t"                                                      \
    MT_ASM_REDUCE6(BLOCK, PTR)                                                        \
    "ldr    r12, %[rq]\n\t"                                                           \
    "ldm    r12!, {r8, r9, r10}\n\t"                                                  \
    MT_ASM_OUT_M2("%[s0]") MT_ASM_OUT_M2("%[s2]") MT_ASM_OUT_M2("%[s4]")              \
    "ldm    r12!, {r8, r9, r10}\n\t"                                                  \
    MT_ASM_OUT_M2("%[s1]") MT_ASM_OUT_M2("%[s3]") MT_ASM_OUT_M2("%[s5]")              \
    "str    r12, %[rq]\n\t"                                                           \
    "ldr    r12, %[out]\n\t"                                                          \
    "ldr    r11, %[n]\n\t"                                                            \
    "strb   %[s0], [r12]\n\t"                                                         \
    "strb   %[s1], [r12, #1]\n\t"                                                     \
    "add    lr, r12, r11\n\t"                                                         \
    "strb   %[s2], [lr]\n\t"                                                          \
    "strb   %[s3], [lr, #1]\n\t"                                                      \
    "add    lr, lr, r11\n\t" /* a register-offset STRB costs 2 */                     \
    "strb   %[s4], [lr]\n\t"                                                          \
    "strb   %[s5], [lr, #1]\n\t"                                                      \
    "add    r12, r12, #2\n\t"                                                         \
    "str    r12, %[out]\n\t"                                                          \
    "ldr    r11, %[out_end]\n\t"                                                      \
    "cmp    r12, r11\n\t"                                                             \
    "bne    5b\n\t"

/* TFLM's MultiplyByQuantizedMultiplier with one 64-bit multiply-accumulate:
 * SaturatingRoundingDoublingHighMul(a, m) == floor((a*m + 2^30) / 2^31) for every
 * a and every m >= 0 (TFLM's truncating division of ab + (1 - 2^30) for ab < 0 is
 * the same floor; the saturating case a == m == INT32_MIN cannot occur since m >= 0),
 * then RoundingDivideByPOT (round half away from zero) as in TFLM. */
static inline int32_t mt_req(int32_t acc, int32_t m, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    const int32_t a = (int32_t)((uint32_t)acc << left);
    const int32_t t = (int32_t)(((int64_t)a * m + (1ll << 30)) >> 31);
    const uint32_t mask = (1u << right) - 1u;
    const int32_t rem = (int32_t)((uint32_t)t & mask);
    const int32_t threshold = (int32_t)(mask >> 1) + (t < 0 ? 1 : 0);
    return (t >> right) + (rem > threshold ? 1 : 0);
}

/* One output: requantised (MODE 0: exact, else mt_requant_fast on the doubled
 * accumulator), clamped (MODE 2: SSAT, the activation range is the int8 range). */
static inline int8_t mt_out8(int32_t acc, int32_t m, int32_t q1, int32_t q2, int mode, int32_t lo,
                             int32_t hi, int32_t zp)
{
    int32_t y;
    if (mode == 0) {
        y = mt_req(acc, m, q1) + zp;
    } else {
        y = mt_requant_fast((int32_t)((uint32_t)acc << 1), m, q1, q2);
    }
    if (mode == 2) {
        return (int8_t)mt_ssat8(y);
    }
    y = y < lo ? lo : y;
    return (int8_t)(y > hi ? hi : y);
}

#endif /* MT_GEMM_OUT_OPT_H */

/* Pruned DEPTHWISE_CONV_2D, int8 (issue 10, host/microtile/passes/approx.py): the
 * optimised depthwise kernel's channel groups (mt_depthwise_opt.h: 4 output channels
 * per word, per tap one input word, two SXTAB16, 4 SMLABB/SMLATT against doubled
 * int16 weight pairs) with the insignificant taps of each group removed offline.
 * Bit-exact with the int8 network whose pruned weights are zero.
 *
 * The skip pattern is in the stream, never in a branch: per group, the kept taps of
 * each column class (a class = the taps an output column's window keeps inside the
 * image horizontally: interior, clipped left, clipped right, ...), sorted by filter
 * row, so the taps of the rows [ky0, ky1) an output row keeps inside the image are
 * one contiguous run. A pixel runs that run straight through (TBB into 9 unrolled
 * taps, 10 instructions each; no branch per tap or MAC); every skipped tap removes its
 * 4 loads, 2 SXTAB16 and 4 multiply-accumulates from the hot loop.
 *
 * Stream `geo.data` (int32 words), per group of 4 output channels:
 *   [0]                   the group's length in words
 *   [1 .. 4]              2 * bias (c0..c3)
 *   [5 .. 16]             {mult, k, right} x 4 (fast requantisation, mt_requant_opt.h)
 *   [17 .. 17 + R)        R = classes * (k_h + 1): per class, per ky in 0..k_h, the
 *                         index of the class's first kept tap in filter row >= ky
 *   [17 + R ..)           the kept taps, 3 words each: {offset, W02, W13}, offset =
 *                         byte distance of the tap's input word from the window's
 *                         top-left pixel (ky * in_w + kx) * px, W02 = (2w[c0], 2w[c2]),
 *                         W13 = (2w[c1], 2w[c3]) as halfword pairs
 * and one word after the last group (each tap loads the next tap's offset ahead).
 * col_rows[ox]: the word index (from the group start) of output column ox's class row
 * table, the same in every group. The input offset is added per tap (SXTAB16 costs
 * what SXTB16 does), so interior and border pixels run the same code. Output
 * channels must be a multiple of 4 (approx.py prunes only such layers). */
#ifndef MT_DEPTHWISE_PRUNED_OPT_H
#define MT_DEPTHWISE_PRUNED_OPT_H

#include <stdint.h>

#include "mt_depthwise_opt.h"

typedef struct {
    mt_depthwise_opt_params geo;  /* geometry as the exact kernel's; data = the pruned stream; padded = 0 */
    const int32_t *col_rows;      /* [out_w] */
    int32_t classes;              /* column classes (row tables per group) */
} mt_depthwise_pruned_params;

/* scratch: in_h * in_w * 4 bytes when depth_mult > 1 or in place (the group's
 * gathered source plane), else unused (NULL). */
void mt_depthwise_pruned_s8_opt(const mt_depthwise_pruned_params *p, const int8_t *input, int8_t *output,
                                int8_t *scratch);

#endif /* MT_DEPTHWISE_PRUNED_OPT_H */

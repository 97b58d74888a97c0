/* Pruned matmul-shaped int8 kernels (CONV_2D 1x1 / KxK / first layer, FULLY_CONNECTED,
 * DEPTHWISE_CONV_2D over one input channel): the optimised kernels of mt_matmul_opt.h
 * with the k-blocks of insignificant weights removed offline (issue 10,
 * host/microtile/passes/approx.py). Bit-exact with the int8 network whose pruned
 * weights are zero: a skipped block contributes nothing, and the folded bias uses the
 * pruned weights.
 *
 * Same A panel as mt_conv_s8_opt (a FULLY_CONNECTED layer is a 1 x batches x depth
 * image under a 1x1 filter). The skip pattern lives in the weight stream and the loop
 * bounds, never in a branch: per channel tile (nr channels), kept[t] k-blocks, each
 * stored as
 *
 *     [delta, w_0, ..., w_{nr-1}]   (int32 words; w_j = 4 int8 weights of channel j,
 *                                    or with c.g.wide two words of int16 pairs
 *                                    (w0, w2), (w1, w3), pre-extended as in mt_matmul_opt)
 *
 * where delta is the byte distance from the panel position after the previous kept
 * block (the panel start for the first) to this block's panel rows. Tiles: 3x2 with
 * int8 weights (the exact kernel's tile: one LDM reads delta, w_0, w_1; as many
 * instructions per block as the exact kernel), 4x1 and 1x4 with int8 or int16 (one ADD
 * more than the exact int8 block, two for int16). Every skipped block removes its
 * loads, SXTB16s and SMLADs. */
#ifndef MT_PRUNED_OPT_H
#define MT_PRUNED_OPT_H

#include <stdint.h>

#include "mt_matmul_opt.h"

typedef struct {
    mt_conv_opt_params c;     /* geometry + gemm; c.g.weights is the pruned stream */
    const int32_t *kept;      /* [c.g.n_tiles] kept k-blocks per channel tile */
} mt_pruned_opt_params;

void mt_pruned_s8_opt(const mt_pruned_opt_params *p, const int8_t *input, int8_t *output,
                      uint64_t *scratch);

#endif /* MT_PRUNED_OPT_H */

/* Fused depthwise tiling (host/microtile/passes/fdt.py, ops/partial.py): the last
 * layer of a path split by input channel. Each partition adds its slice's sums into an
 * int32 accumulator; one requantisation at the end gives the layer's int8 output,
 * bit-exact with TFLM (int32 sums wrap alike in any order).
 *
 * acc_in: the bias (first partition; NULL for none) indexed by output channel, else the
 * accumulator so far, indexed like acc. acc_in may equal acc (updated in place: each
 * element is read before it is written). */
#ifndef MT_PARTIAL_H
#define MT_PARTIAL_H

#include <stdint.h>

typedef struct {
    int32_t batches;
    int32_t depth;            /* the slice's input channels */
    int32_t out_c;
    int32_t input_offset;     /* -input zero point */
    int32_t weights_offset;   /* -weights zero point (per-tensor weights only) */
    int32_t first;            /* acc_in is the bias */
} mt_partial_fc_params;

typedef struct {
    int32_t n, h, w, c;       /* input [n, h, w, c]: c = the slice's channels */
    int32_t oh, ow, out_c;
    int32_t kh, kw, sh, sw, ph, pw;
    int32_t input_offset;     /* -input zero point */
    int32_t first;
} mt_partial_conv_params;

typedef struct {
    int32_t count;            /* accumulator elements */
    int32_t channels;         /* output channels (the last axis) */
    int32_t output_offset;
    int32_t act_min, act_max;
    const int32_t *multiplier; /* [channels] */
    const int32_t *shift;      /* [channels], positive = left */
} mt_requant_acc_params;

/* weights [out_c, depth] (the slice's columns), input [batches, depth], acc [batches, out_c] */
void mt_partial_fc_s8(const mt_partial_fc_params *p, const int8_t *input, const int8_t *weights,
                      const int32_t *acc_in, int32_t *acc);
/* weights [out_c, kh, kw, c], acc [n, oh, ow, out_c]; out-of-image taps are skipped */
void mt_partial_conv_s8(const mt_partial_conv_params *p, const int8_t *input, const int8_t *weights,
                        const int32_t *acc_in, int32_t *acc);
void mt_requant_acc_s8(const mt_requant_acc_params *p, const int32_t *acc, int8_t *output);

#endif /* MT_PARTIAL_H */

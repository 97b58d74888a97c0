/* CONV_2D, int8 (TFLM reference semantics): NHWC input, OHWI filter, int32 bias
 * (optional), per-output-channel requantisation. All multipliers are computed on
 * the host (host/microtile/ops/conv.py). */
#ifndef MT_CONV_H
#define MT_CONV_H

#include <stdint.h>

typedef struct {
    int32_t batches;
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_h, pad_w;         /* padding before (top, left) */
    int32_t input_offset;         /* -input zero point */
    int32_t output_offset;        /* output zero point */
    int32_t act_min, act_max;
    const int32_t *multiplier;    /* [out_c] */
    const int32_t *shift;         /* [out_c], positive = left */
} mt_conv_params;

void mt_conv_s8_ref(const mt_conv_params *p, const int8_t *input, const int8_t *filter,
                    const int32_t *bias, int8_t *output);

#endif /* MT_CONV_H */

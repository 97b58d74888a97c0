/* AVERAGE_POOL_2D and MAX_POOL_2D, int8 (TFLM reference semantics): NHWC,
 * windows clipped to the image, input and output share quantisation. */
#ifndef MT_POOL_H
#define MT_POOL_H

#include <stdint.h>

typedef struct {
    int32_t batches;
    int32_t in_h, in_w, channels;
    int32_t out_h, out_w;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_h, pad_w;         /* padding before (top, left) */
    int32_t act_min, act_max;
} mt_pool_params;

void mt_avg_pool_s8_ref(const mt_pool_params *p, const int8_t *input, int8_t *output);
void mt_max_pool_s8_ref(const mt_pool_params *p, const int8_t *input, int8_t *output);

#endif /* MT_POOL_H */

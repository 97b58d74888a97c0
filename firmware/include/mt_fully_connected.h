/* FULLY_CONNECTED, int8 (TFLM reference semantics): input [batches, depth],
 * weights [out_c, depth], optional int32 bias. Per-tensor weights broadcast their
 * multiplier to every channel and may carry a zero point (weights_offset);
 * per-channel weights have weights_offset 0, as in TFLM. */
#ifndef MT_FULLY_CONNECTED_H
#define MT_FULLY_CONNECTED_H

#include <stdint.h>

typedef struct {
    int32_t batches;
    int32_t depth;
    int32_t out_c;
    int32_t input_offset;         /* -input zero point */
    int32_t weights_offset;       /* -weights zero point (per-tensor only) */
    int32_t output_offset;        /* output zero point */
    int32_t act_min, act_max;
    const int32_t *multiplier;    /* [out_c] */
    const int32_t *shift;         /* [out_c], positive = left */
} mt_fully_connected_params;

void mt_fully_connected_s8_ref(const mt_fully_connected_params *p, const int8_t *input,
                               const int8_t *weights, const int32_t *bias, int8_t *output);

#endif /* MT_FULLY_CONNECTED_H */

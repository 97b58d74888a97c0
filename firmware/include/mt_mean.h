/* MEAN, int8 (TFLM reference semantics): reduce a tensor (up to 4-D, shape
 * extended with leading 1s) over the dimensions flagged in `reduce`; the sum minus
 * count * input zero point is requantised with a multiplier that already holds
 * input_scale / (output_scale * count). The output is the input shape with the
 * reduced dimensions removed (keep_dims only changes the shape, not the layout). */
#ifndef MT_MEAN_H
#define MT_MEAN_H

#include <stdint.h>

typedef struct {
    int32_t dims[4];
    int32_t reduce[4];            /* 1 = reduced dimension */
    int32_t count;                /* product of the reduced dimensions */
    int32_t input_offset;         /* -input zero point */
    int32_t output_offset;        /* output zero point */
    int32_t multiplier;
    int32_t shift;                /* positive = left */
} mt_mean_params;

void mt_mean_s8_ref(const mt_mean_params *p, const int8_t *input, int8_t *output);

#endif /* MT_MEAN_H */

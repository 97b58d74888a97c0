/* int8 -> int8 QUANTIZE (TFLM Requantize). Float boundary QUANTIZE/DEQUANTIZE run on
 * the host (host/microtile/ops/quantize.py). */
#ifndef MT_QUANTIZE_H
#define MT_QUANTIZE_H

#include <stdint.h>

typedef struct {
    int32_t input_zero_point;
    int32_t output_zero_point;
    int32_t multiplier; /* QuantizeMultiplier(s_in / s_out) */
    int32_t shift;
    uint32_t size;
} mt_requantize_params;

void mt_requantize_s8_ref(const mt_requantize_params *p, const int8_t *in, int8_t *out);

#endif /* MT_QUANTIZE_H */

/* Reference int8 -> int8 requantisation, bit-exact with TFLM's Requantize. */
#include "mt_quantize.h"

#include "mt_quant.h"

void mt_requantize_s8_ref(const mt_requantize_params *p, const int8_t *in, int8_t *out)
{
    uint32_t i;
    for (i = 0; i < p->size; ++i) {
        int32_t v = mt_requantize((int32_t)in[i] - p->input_zero_point, p->multiplier, p->shift);
        out[i] = (int8_t)mt_clamp(v + p->output_zero_point, INT8_MIN, INT8_MAX);
    }
}

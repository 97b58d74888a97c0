/* Portable reference FULLY_CONNECTED int8 kernel; bit-exact with TFLM's
 * FullyConnected (per-tensor) and FullyConnectedPerChannel. */
#include "mt_fully_connected.h"

#include "mt_quant.h"

void mt_fully_connected_s8_ref(const mt_fully_connected_params *p, const int8_t *input,
                               const int8_t *weights, const int32_t *bias, int8_t *output)
{
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in = input + b * p->depth;
        for (int32_t oc = 0; oc < p->out_c; oc++) {
            const int8_t *w = weights + oc * p->depth;
            int32_t acc = 0;
            for (int32_t d = 0; d < p->depth; d++) {
                acc += ((int32_t)w[d] + p->weights_offset) * ((int32_t)in[d] + p->input_offset);
            }
            if (bias != 0) {
                acc = (int32_t)((uint32_t)acc + (uint32_t)bias[oc]);
            }
            acc = mt_requantize(acc, p->multiplier[oc], p->shift[oc]) + p->output_offset;
            *output++ = (int8_t)mt_clamp(acc, p->act_min, p->act_max);
        }
    }
}

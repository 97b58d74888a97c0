/* Portable reference CONV_2D int8 kernel; bit-exact with TFLM's ConvPerChannel. */
#include "mt_conv.h"

#include "mt_quant.h"

void mt_conv_s8_ref(const mt_conv_params *p, const int8_t *input, const int8_t *filter,
                    const int32_t *bias, int8_t *output)
{
    const int32_t in_row = p->in_w * p->in_c;
    const int32_t filter_size = p->k_h * p->k_w * p->in_c;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + (int32_t)b * p->in_h * in_row;
        for (int32_t oy = 0; oy < p->out_h; oy++) {
            const int32_t y0 = oy * p->stride_h - p->pad_h;
            for (int32_t ox = 0; ox < p->out_w; ox++) {
                const int32_t x0 = ox * p->stride_w - p->pad_w;
                for (int32_t oc = 0; oc < p->out_c; oc++) {
                    const int8_t *f = filter + oc * filter_size;
                    int32_t acc = 0;
                    for (int32_t ky = 0; ky < p->k_h; ky++) {
                        const int32_t y = y0 + ky;
                        if (y < 0 || y >= p->in_h) {
                            continue; /* padding contributes nothing */
                        }
                        for (int32_t kx = 0; kx < p->k_w; kx++) {
                            const int32_t x = x0 + kx;
                            if (x < 0 || x >= p->in_w) {
                                continue;
                            }
                            const int8_t *in = in_b + y * in_row + x * p->in_c;
                            const int8_t *fw = f + (ky * p->k_w + kx) * p->in_c;
                            for (int32_t ic = 0; ic < p->in_c; ic++) {
                                acc += (int32_t)fw[ic] * ((int32_t)in[ic] + p->input_offset);
                            }
                        }
                    }
                    if (bias != 0) {
                        acc = (int32_t)((uint32_t)acc + (uint32_t)bias[oc]);
                    }
                    acc = mt_requantize(acc, p->multiplier[oc], p->shift[oc]) + p->output_offset;
                    *output++ = (int8_t)mt_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}

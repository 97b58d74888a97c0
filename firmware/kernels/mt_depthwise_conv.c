/* Portable reference DEPTHWISE_CONV_2D int8 kernel; bit-exact with TFLM's
 * DepthwiseConvPerChannel. Each output pixel clips the filter window to the
 * image once (taps outside contribute nothing). */
#include "mt_depthwise_conv.h"

#include "mt_quant.h"
#include "mt_window.h"


void mt_depthwise_conv_s8_ref(const mt_depthwise_conv_params *p, const int8_t *input,
                              const int8_t *filter, const int32_t *bias, int8_t *output)
{
    const int32_t out_c = p->in_c * p->depth_multiplier;
    const int32_t in_row = p->in_w * p->in_c;
    const int32_t filter_row = p->k_w * out_c;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + b * p->in_h * in_row;
        for (int32_t oy = 0; oy < p->out_h; oy++) {
            const int32_t y0 = oy * p->stride_h - p->pad_h;
            int32_t ky_lo, ky_hi;
            mt_window_taps(y0, p->k_h, p->in_h, &ky_lo, &ky_hi);
            for (int32_t ox = 0; ox < p->out_w; ox++) {
                const int32_t x0 = ox * p->stride_w - p->pad_w;
                int32_t kx_lo, kx_hi;
                mt_window_taps(x0, p->k_w, p->in_w, &kx_lo, &kx_hi);
                const int32_t in0 = y0 * in_row + x0 * p->in_c; /* index: may lie outside before clipping */
                for (int32_t ic = 0; ic < p->in_c; ic++) {
                    for (int32_t m = 0; m < p->depth_multiplier; m++) {
                        const int32_t oc = ic * p->depth_multiplier + m;
                        int32_t acc = 0;
                        for (int32_t ky = ky_lo; ky < ky_hi; ky++) {
                            const int32_t row = in0 + ky * in_row + ic;
                            const int8_t *f = filter + ky * filter_row + oc;
                            for (int32_t kx = kx_lo; kx < kx_hi; kx++) {
                                acc += (int32_t)f[kx * out_c] *
                                       ((int32_t)in_b[row + kx * p->in_c] + p->input_offset);
                            }
                        }
                        if (bias != 0) {
                            acc = (int32_t)((uint32_t)acc + (uint32_t)bias[oc]);
                        }
                        acc = mt_requantize(acc, p->multiplier[oc], p->shift[oc]) + p->output_offset;
                        output[oc] = (int8_t)mt_clamp(acc, p->act_min, p->act_max);
                    }
                }
                output += out_c;
            }
        }
    }
}

/* Portable reference CONV_2D int8 kernel; bit-exact with TFLM's ConvPerChannel.
 *
 * Taps outside the image contribute nothing, so each output pixel clips the
 * filter window to the image once; in NHWC / OHWI a clipped filter row is then
 * one contiguous run of (taps * in_c) values in both input and filter. */
#include "mt_conv.h"

#include "mt_quant.h"
#include "mt_window.h"


void mt_conv_s8_ref(const mt_conv_params *p, const int8_t *input, const int8_t *filter,
                    const int32_t *bias, int8_t *output)
{
    const int32_t in_row = p->in_w * p->in_c;
    const int32_t filter_row = p->k_w * p->in_c;
    const int32_t filter_size = p->k_h * filter_row;
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
                const int32_t run = (kx_hi - kx_lo) * p->in_c; /* contiguous values per filter row */
                /* an index, not a pointer: before clipping it may point outside the image */
                const int32_t in0 = (y0 * p->in_w + x0 + kx_lo) * p->in_c;
                const int32_t f0 = kx_lo * p->in_c;
                for (int32_t oc = 0; oc < p->out_c; oc++) {
                    const int8_t *f = filter + oc * filter_size + f0;
                    int32_t acc = 0;
                    for (int32_t ky = ky_lo; ky < ky_hi; ky++) {
                        const int8_t *in = in_b + (in0 + ky * in_row);
                        const int8_t *fw = f + ky * filter_row;
                        for (int32_t i = 0; i < run; i++) {
                            acc += (int32_t)fw[i] * ((int32_t)in[i] + p->input_offset);
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

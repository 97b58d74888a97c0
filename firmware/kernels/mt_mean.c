/* Portable reference MEAN int8 kernel; bit-exact with TFLM's
 * reference_ops::QuantizedMeanOrSum (mean). */
#include "mt_mean.h"

#include "mt_quant.h"

void mt_mean_s8_ref(const mt_mean_params *p, const int8_t *input, int8_t *output)
{
    int32_t stride[4];
    int32_t outer[4]; /* output extent per dimension: 1 where reduced */
    int32_t inner[4]; /* reduction extent per dimension: 1 where kept */
    int32_t s = 1;
    for (int d = 3; d >= 0; d--) {
        stride[d] = s;
        s *= p->dims[d];
        outer[d] = p->reduce[d] ? 1 : p->dims[d];
        inner[d] = p->reduce[d] ? p->dims[d] : 1;
    }
    const int32_t bias = p->input_offset * p->count;
    for (int32_t o0 = 0; o0 < outer[0]; o0++) {
        for (int32_t o1 = 0; o1 < outer[1]; o1++) {
            for (int32_t o2 = 0; o2 < outer[2]; o2++) {
                for (int32_t o3 = 0; o3 < outer[3]; o3++) {
                    const int8_t *base = input + o0 * stride[0] + o1 * stride[1] + o2 * stride[2] + o3 * stride[3];
                    int32_t acc = 0;
                    for (int32_t i0 = 0; i0 < inner[0]; i0++) {
                        for (int32_t i1 = 0; i1 < inner[1]; i1++) {
                            for (int32_t i2 = 0; i2 < inner[2]; i2++) {
                                const int8_t *row = base + i0 * stride[0] + i1 * stride[1] + i2 * stride[2];
                                for (int32_t i3 = 0; i3 < inner[3]; i3++) {
                                    acc += row[i3 * stride[3]];
                                }
                            }
                        }
                    }
                    acc = mt_requantize(acc + bias, p->multiplier, p->shift) + p->output_offset;
                    *output++ = (int8_t)mt_clamp(acc, -128, 127);
                }
            }
        }
    }
}

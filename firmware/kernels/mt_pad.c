/* Portable reference PAD int8 kernel; same result as TFLM's reference_ops::Pad. */
#include "mt_pad.h"

#include <string.h>

void mt_pad_s8_ref(const mt_pad_params *p, const int8_t *input, int8_t *output)
{
    int32_t out_dims[4];
    for (int d = 0; d < 4; d++) {
        out_dims[d] = p->before[d] + p->dims[d] + p->after[d];
    }
    const int8_t fill = (int8_t)p->pad_value;
    const int32_t row = out_dims[3];
    for (int32_t o0 = 0; o0 < out_dims[0]; o0++) {
        const int32_t i0 = o0 - p->before[0];
        const int inside0 = i0 >= 0 && i0 < p->dims[0];
        for (int32_t o1 = 0; o1 < out_dims[1]; o1++) {
            const int32_t i1 = o1 - p->before[1];
            const int inside1 = inside0 && i1 >= 0 && i1 < p->dims[1];
            for (int32_t o2 = 0; o2 < out_dims[2]; o2++) {
                const int32_t i2 = o2 - p->before[2];
                if (!(inside1 && i2 >= 0 && i2 < p->dims[2])) {
                    memset(output, fill, (size_t)row);
                } else {
                    const int8_t *src = input + ((i0 * p->dims[1] + i1) * p->dims[2] + i2) * p->dims[3];
                    memset(output, fill, (size_t)p->before[3]);
                    memcpy(output + p->before[3], src, (size_t)p->dims[3]);
                    memset(output + p->before[3] + p->dims[3], fill, (size_t)p->after[3]);
                }
                output += row;
            }
        }
    }
}

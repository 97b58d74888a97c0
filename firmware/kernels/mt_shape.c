/* Reference shape / data-movement kernels (see mt_shape.h). */
#include "mt_shape.h"

#include <string.h>

void mt_reshape_ref(const void *input, void *output, uint32_t nbytes)
{
    if (input != output) {
        memmove(output, input, nbytes);
    }
}

void mt_concatenation_ref(const mt_concatenation_params *p, const void *const *inputs, void *output)
{
    uint8_t *out = (uint8_t *)output;
    int32_t o, i;
    for (o = 0; o < p->outer; o++) {
        for (i = 0; i < p->num_inputs; i++) {
            const int32_t n = p->row_bytes[i];
            memcpy(out, (const uint8_t *)inputs[i] + o * n, (size_t)n);
            out += n;
        }
    }
}

void mt_transpose_ref(const mt_transpose_params *p, const void *input, void *output)
{
    const uint8_t *in = (const uint8_t *)input;
    uint8_t *out = (uint8_t *)output;
    const int32_t *n = p->shape;
    const int32_t *s = p->stride;
    const size_t e = (size_t)p->elem_bytes;
    int32_t i0, i1, i2, i3, i4, i5;
    for (i0 = 0; i0 < n[0]; i0++) {
        const uint8_t *a0 = in + i0 * s[0];
        for (i1 = 0; i1 < n[1]; i1++) {
            const uint8_t *a1 = a0 + i1 * s[1];
            for (i2 = 0; i2 < n[2]; i2++) {
                const uint8_t *a2 = a1 + i2 * s[2];
                for (i3 = 0; i3 < n[3]; i3++) {
                    const uint8_t *a3 = a2 + i3 * s[3];
                    for (i4 = 0; i4 < n[4]; i4++) {
                        const uint8_t *a4 = a3 + i4 * s[4];
                        if (e == 1) {
                            for (i5 = 0; i5 < n[5]; i5++) {
                                *out++ = a4[i5 * s[5]];
                            }
                        } else {
                            for (i5 = 0; i5 < n[5]; i5++) {
                                memcpy(out, a4 + i5 * s[5], e);
                                out += e;
                            }
                        }
                    }
                }
            }
        }
    }
}

void mt_resize_nearest_ref(const mt_resize_nearest_params *p, const void *input, void *output)
{
    const uint8_t *in = (const uint8_t *)input;
    uint8_t *out = (uint8_t *)output;
    const size_t pixel = (size_t)p->pixel_bytes;
    int32_t b, y, x;
    for (b = 0; b < p->batches; b++) {
        for (y = 0; y < p->out_h; y++) {
            const uint8_t *row = in + p->row_offset[y];
            for (x = 0; x < p->out_w; x++) {
                memcpy(out, row + p->col_offset[x], pixel);
                out += pixel;
            }
        }
        in += p->image_bytes;
    }
}

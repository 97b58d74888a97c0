/* Portable kernels of fused depthwise tiling's partial sums (mt_partial.h). Sums are
 * taken through uint32 so an overflow wraps as TFLM's int32 accumulator does. */
#include "mt_partial.h"

#include "mt_quant.h"

static int32_t base_of(const int32_t *acc_in, int32_t first, int32_t index, int32_t channel)
{
    if (acc_in == 0) {
        return 0;
    }
    return first ? acc_in[channel] : acc_in[index];
}

void mt_partial_fc_s8(const mt_partial_fc_params *p, const int8_t *input, const int8_t *weights,
                      const int32_t *acc_in, int32_t *acc)
{
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in = input + b * p->depth;
        for (int32_t oc = 0; oc < p->out_c; oc++) {
            const int8_t *w = weights + oc * p->depth;
            uint32_t sum = 0; /* wraps like TFLM's int32 sums would, without undefined behaviour */
            for (int32_t d = 0; d < p->depth; d++) {
                sum += (uint32_t)(((int32_t)w[d] + p->weights_offset) * ((int32_t)in[d] + p->input_offset));
            }
            int32_t i = b * p->out_c + oc;
            acc[i] = (int32_t)((uint32_t)base_of(acc_in, p->first, i, oc) + sum);
        }
    }
}

void mt_partial_conv_s8(const mt_partial_conv_params *p, const int8_t *input, const int8_t *weights,
                        const int32_t *acc_in, int32_t *acc)
{
    for (int32_t n = 0; n < p->n; n++) {
        for (int32_t oy = 0; oy < p->oh; oy++) {
            for (int32_t ox = 0; ox < p->ow; ox++) {
                int32_t y0 = oy * p->sh - p->ph;
                int32_t x0 = ox * p->sw - p->pw;
                for (int32_t oc = 0; oc < p->out_c; oc++) {
                    uint32_t sum = 0;
                    for (int32_t ky = 0; ky < p->kh; ky++) {
                        int32_t y = y0 + ky;
                        if (y < 0 || y >= p->h) {
                            continue;
                        }
                        for (int32_t kx = 0; kx < p->kw; kx++) {
                            int32_t x = x0 + kx;
                            if (x < 0 || x >= p->w) {
                                continue;
                            }
                            const int8_t *in = input + ((n * p->h + y) * p->w + x) * p->c;
                            const int8_t *w = weights + ((oc * p->kh + ky) * p->kw + kx) * p->c;
                            for (int32_t c = 0; c < p->c; c++) {
                                sum += (uint32_t)((int32_t)w[c] * ((int32_t)in[c] + p->input_offset));
                            }
                        }
                    }
                    int32_t i = ((n * p->oh + oy) * p->ow + ox) * p->out_c + oc;
                    acc[i] = (int32_t)((uint32_t)base_of(acc_in, p->first, i, oc) + sum);
                }
            }
        }
    }
}

void mt_requant_acc_s8(const mt_requant_acc_params *p, const int32_t *acc, int8_t *output)
{
    for (int32_t i = 0, c = 0; i < p->count; i++) {
        int32_t y = mt_requantize(acc[i], p->multiplier[c], p->shift[c]) + p->output_offset;
        output[i] = (int8_t)mt_clamp(y, p->act_min, p->act_max);
        c = c + 1 == p->channels ? 0 : c + 1;
    }
}

/* Portable reference pooling kernels; bit-exact with TFLM's
 * reference_integer_ops::AveragePool / MaxPool. */
#include "mt_pool.h"

#include "mt_quant.h"
#include "mt_window.h"

/* The part of the window [start, start + k) inside [0, size), in image coordinates. */
static void mt_window(int32_t start, int32_t k, int32_t size, int32_t *lo, int32_t *hi)
{
    mt_window_taps(start, k, size, lo, hi);
    *lo += start;
    *hi += start;
}

void mt_avg_pool_s8_ref(const mt_pool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t c_n = p->channels;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + b * p->in_h * p->in_w * c_n;
        for (int32_t oy = 0; oy < p->out_h; oy++) {
            int32_t y_lo, y_hi;
            mt_window(oy * p->stride_h - p->pad_h, p->k_h, p->in_h, &y_lo, &y_hi);
            for (int32_t ox = 0; ox < p->out_w; ox++) {
                int32_t x_lo, x_hi;
                mt_window(ox * p->stride_w - p->pad_w, p->k_w, p->in_w, &x_lo, &x_hi);
                const int32_t count = (y_hi - y_lo) * (x_hi - x_lo);
                for (int32_t c = 0; c < c_n; c++) {
                    int32_t acc = 0;
                    for (int32_t y = y_lo; y < y_hi; y++) {
                        for (int32_t x = x_lo; x < x_hi; x++) {
                            acc += in_b[(y * p->in_w + x) * c_n + c];
                        }
                    }
                    /* round half away from zero, as TFLM does */
                    acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                    *output++ = (int8_t)mt_clamp(acc, p->act_min, p->act_max);
                }
            }
        }
    }
}

void mt_max_pool_s8_ref(const mt_pool_params *p, const int8_t *input, int8_t *output)
{
    const int32_t c_n = p->channels;
    for (int32_t b = 0; b < p->batches; b++) {
        const int8_t *in_b = input + b * p->in_h * p->in_w * c_n;
        for (int32_t oy = 0; oy < p->out_h; oy++) {
            int32_t y_lo, y_hi;
            mt_window(oy * p->stride_h - p->pad_h, p->k_h, p->in_h, &y_lo, &y_hi);
            for (int32_t ox = 0; ox < p->out_w; ox++) {
                int32_t x_lo, x_hi;
                mt_window(ox * p->stride_w - p->pad_w, p->k_w, p->in_w, &x_lo, &x_hi);
                for (int32_t c = 0; c < c_n; c++) {
                    int32_t m = -128;
                    for (int32_t y = y_lo; y < y_hi; y++) {
                        for (int32_t x = x_lo; x < x_hi; x++) {
                            const int32_t v = in_b[(y * p->in_w + x) * c_n + c];
                            m = v > m ? v : m;
                        }
                    }
                    *output++ = (int8_t)mt_clamp(m, p->act_min, p->act_max);
                }
            }
        }
    }
}

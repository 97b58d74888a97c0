/* SOFTMAX and LOG_SOFTMAX over the last axis, int8, bit-exact with TFLM's
 * reference kernels. host/microtile/ops/softmax.py computes the parameters
 * (TFLM's Prepare arithmetic) so the kernels are pure integer code. */
#ifndef MT_SOFTMAX_H
#define MT_SOFTMAX_H

#include <stdint.h>

typedef struct {
    int32_t outer;            /* number of rows (product of all but the last dim) */
    int32_t depth;            /* length of the last axis, < 4096 */
    int32_t input_multiplier; /* Q5.26 input scaling (beta * input scale) */
    int32_t input_left_shift;
    int32_t diff_min;         /* inputs further than this below the row max give 0 */
} mt_softmax_params;

/* int8 -> int8 (output scale 1/256, zero point -128). input == output is allowed.
 * Rows whose sum of exps reaches 512 (TFLM aborts on them) give -128 (probability 0). */
void mt_softmax_s8_ref(const mt_softmax_params *p, const int8_t *input, int8_t *output);
/* int8 -> int16 (output scale 1/65536, zero point -32768). No aliasing. */
void mt_softmax_s8_s16_ref(const mt_softmax_params *p, const int8_t *input, int16_t *output);

typedef struct {
    int32_t outer;
    int32_t depth;                       /* < 4096 */
    int32_t input_multiplier;
    int32_t input_left_shift;
    int32_t reverse_scaling_divisor;
    int32_t reverse_scaling_right_shift; /* >= 0 */
    int32_t diff_min;
} mt_log_softmax_params;

/* int8 -> int8 (output scale 16/256, zero point 127). input == output is allowed. */
void mt_log_softmax_s8_ref(const mt_log_softmax_params *p, const int8_t *input, int8_t *output);

#endif /* MT_SOFTMAX_H */

/* Activation operators (RELU, RELU6, LOGISTIC, HARD_SWISH), int8, bit-exact with
 * TFLM's reference kernels. Parameters come from host/microtile/ops/activation.py. */
#ifndef MT_ACTIVATION_H
#define MT_ACTIVATION_H

#include <stdint.h>

/* RELU: requantise input -> output, clamp at the output zero point (ReluQuantized). */
typedef struct {
    int32_t input_offset;  /* input zero point */
    int32_t output_offset; /* output zero point */
    int32_t output_multiplier;
    int32_t output_shift;
    int32_t act_min;
    int32_t act_max;
    uint32_t size;
} mt_relu_params;

/* RELU6: clamp the raw input to [lower, upper] (Relu6Quantized). */
typedef struct {
    int32_t lower; /* input zero point */
    int32_t upper; /* 6.0 quantised with the input parameters */
    uint32_t size;
} mt_relu6_params;

/* LOGISTIC: gemmlowp fixed-point logistic on Q4.27 (reference_integer_ops::Logistic). */
typedef struct {
    int32_t input_zero_point;
    int32_t input_range_radius;
    int32_t input_multiplier;
    int32_t input_left_shift;
    uint32_t size;
} mt_logistic_params;

/* HARD_SWISH: int16 fixed-point pipeline of reference_ops::HardSwish. */
typedef struct {
    int32_t input_zero_point;
    int32_t output_zero_point;
    int32_t output_multiplier_fixedpoint_int16;
    int32_t output_multiplier_exponent; /* <= 0 */
    int32_t reluish_multiplier_fixedpoint_int16;
    int32_t reluish_multiplier_exponent;
    uint32_t size;
} mt_hard_swish_params;

void mt_relu_s8_ref(const mt_relu_params *p, const int8_t *in, int8_t *out);
void mt_relu6_s8_ref(const mt_relu6_params *p, const int8_t *in, int8_t *out);
void mt_logistic_s8_ref(const mt_logistic_params *p, const int8_t *in, int8_t *out);
void mt_hard_swish_s8_ref(const mt_hard_swish_params *p, const int8_t *in, int8_t *out);

#endif /* MT_ACTIVATION_H */

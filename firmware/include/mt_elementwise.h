/* Elementwise binary operators (ADD, MUL), int8, bit-exact with TFLM's reference
 * kernels. All multipliers and shifts are computed on the host
 * (host/microtile/ops/elementwise.py); the kernels do integer work only. */
#ifndef MT_ELEMENTWISE_H
#define MT_ELEMENTWISE_H

#include <stdint.h>

#define MT_BCAST_MAX_DIMS 6

/* A broadcast walk over the output, outermost dimension first. ndims == 0 means
 * both inputs have the output's shape and are read with the same flat index. */
typedef struct {
    int32_t ndims;                       /* 0 or MT_BCAST_MAX_DIMS */
    int32_t dims[MT_BCAST_MAX_DIMS];     /* output extents (leading 1s pad) */
    int32_t strides1[MT_BCAST_MAX_DIMS]; /* input 1 element strides, 0 = broadcast */
    int32_t strides2[MT_BCAST_MAX_DIMS]; /* input 2 element strides, 0 = broadcast */
} mt_broadcast;

typedef struct {
    int32_t input1_offset; /* -zero_point */
    int32_t input2_offset; /* -zero_point */
    int32_t output_offset; /* +zero_point */
    int32_t left_shift;    /* 20 for int8 */
    int32_t input1_multiplier;
    int32_t input1_shift; /* <= 0 */
    int32_t input2_multiplier;
    int32_t input2_shift; /* <= 0 */
    int32_t output_multiplier;
    int32_t output_shift; /* <= 0 */
    int32_t act_min;
    int32_t act_max;
    uint32_t size; /* output elements */
    mt_broadcast bcast;
} mt_add_params;

typedef struct {
    int32_t input1_offset;
    int32_t input2_offset;
    int32_t output_offset;
    int32_t output_multiplier;
    int32_t output_shift;
    int32_t act_min;
    int32_t act_max;
    uint32_t size;
    mt_broadcast bcast;
} mt_mul_params;

void mt_add_s8_ref(const mt_add_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);
void mt_mul_s8_ref(const mt_mul_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);

#endif /* MT_ELEMENTWISE_H */

/* Shape and data-movement kernels: RESHAPE, CONCATENATION, TRANSPOSE,
 * RESIZE_NEAREST_NEIGHBOR. They move bytes, so one kernel serves every element
 * type; host/microtile/ops/shape.py folds element sizes into the parameters. */
#ifndef MT_SHAPE_H
#define MT_SHAPE_H

#include <stdint.h>

#define MT_SHAPE_MAX_RANK 6

/* RESHAPE: a copy (memmove semantics); nothing to do when input == output. */
void mt_reshape_ref(const void *input, void *output, uint32_t nbytes);

typedef struct {
    int32_t outer;              /* product of the output dims before the axis */
    int32_t num_inputs;
    int32_t out_row_bytes;      /* output bytes per outer index */
    const int32_t *row_bytes;   /* per input: bytes per outer index */
} mt_concatenation_params;

/* CONCATENATION: inputs[i] is the i-th input; output must not overlap them. */
void mt_concatenation_ref(const mt_concatenation_params *p, const void *const *inputs, void *output);

typedef struct {
    int32_t elem_bytes;
    int32_t shape[MT_SHAPE_MAX_RANK];    /* output dims, leading dims padded with 1 */
    int32_t stride[MT_SHAPE_MAX_RANK];   /* input byte stride of each output dim */
} mt_transpose_params;

/* TRANSPOSE: output[i0..i5] = input[sum(i_k * stride_k)]; no overlap. */
void mt_transpose_ref(const mt_transpose_params *p, const void *input, void *output);

typedef struct {
    int32_t batches;
    int32_t out_h;
    int32_t out_w;
    int32_t pixel_bytes;        /* channels * element size */
    int32_t image_bytes;        /* input bytes per batch */
    const int32_t *row_offset;  /* [out_h] input byte offset of the source row */
    const int32_t *col_offset;  /* [out_w] byte offset of the source pixel in a row */
} mt_resize_nearest_params;

/* RESIZE_NEAREST_NEIGHBOR (NHWC) with host-computed source indices; no overlap. */
void mt_resize_nearest_ref(const mt_resize_nearest_params *p, const void *input, void *output);

#endif /* MT_SHAPE_H */

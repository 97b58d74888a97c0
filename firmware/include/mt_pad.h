/* PAD / PADV2, int8: copy a tensor (up to 4-D, shape extended with leading 1s)
 * into a larger one, filling the border with a constant. */
#ifndef MT_PAD_H
#define MT_PAD_H

#include <stdint.h>

typedef struct {
    int32_t dims[4];              /* input shape */
    int32_t before[4];            /* padding before, per dimension */
    int32_t after[4];             /* padding after, per dimension */
    int32_t pad_value;
} mt_pad_params;

void mt_pad_s8_ref(const mt_pad_params *p, const int8_t *input, int8_t *output);

#endif /* MT_PAD_H */

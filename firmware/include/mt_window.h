/* Clipping a sliding window to the image, shared by the reference conv, depthwise
 * and pooling kernels: taps outside the image contribute nothing. */
#ifndef MT_WINDOW_H
#define MT_WINDOW_H

#include <stdint.h>

/* The taps [*lo, *hi) of a k-tap window starting at `start` that fall inside [0, size). */
static inline void mt_window_taps(int32_t start, int32_t k, int32_t size, int32_t *lo, int32_t *hi)
{
    *lo = start < 0 ? -start : 0;
    *hi = start + k > size ? size - start : k;
}

#endif /* MT_WINDOW_H */

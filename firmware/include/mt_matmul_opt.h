/* Optimised matmul-shaped int8 kernels: FULLY_CONNECTED, CONV_2D (1x1 and general,
 * as implicit GEMM over an int16 im2col panel). Bit-exact with TFLM.
 *
 * Every layer is C[M x N] = A[M x K] * B[N x K]^T, requantised per output channel.
 * The schedule (host/microtile/passes/schedule.py, docs/schedules.md) fixes the register
 * tile: mr rows of A (pixels) x nr rows of B (output channels) accumulate in
 * registers while the reduction runs in blocks of 4 (two SMLAD per operand pair).
 *
 * Data layouts (all 32-bit words, little-endian):
 *  - A panel (built at run time in the caller's scratch): for k-block b and row i,
 *    word 2*(b*mr+i) = int16 pair (x[4b], x[4b+2]), word +1 = (x[4b+1], x[4b+3]):
 *    exactly what SXTB16 and SXTB16-ROR8 make of one word of int8 input.
 *  - B (prepared offline, flash): output channels in tiles of nr; within a tile,
 *    k-block b, row j: one word of 4 int8 weights (wide = 0), or two words of
 *    int16 pairs ordered like the A panel (wide = 1). Rows past N are zero.
 *  - bias: input zero point folded in: bias'[n] = bias[n] - zp_in * sum_k w[n,k],
 *    so A holds raw inputs, and taps in the padding hold zp_in (they cancel).
 *  - bias and requant are padded to n_tiles * nr channels.
 */
#ifndef MT_MATMUL_OPT_H
#define MT_MATMUL_OPT_H

#include <stdint.h>

typedef struct mt_gemm_opt_s mt_gemm_opt;

/* The tile kernel of a layer: rows (<= mr) panel rows x all N channels. */
typedef void (*mt_gemm_rows_fn)(const mt_gemm_opt *g, const uint64_t *panel, int32_t rows, int8_t *output);

struct mt_gemm_opt_s {
    int32_t mr, nr;             /* register tile: rows of A x output channels */
    int32_t wide;               /* 1: weights pre-extended to int16 pairs */
    int32_t k_blocks;           /* ceil(K / 4) */
    int32_t out_c;              /* N: output channels (row stride of C) */
    int32_t n_tiles;            /* ceil(N / nr) */
    int32_t output_offset;      /* output zero point */
    int32_t act_min, act_max;
    int32_t fast;               /* 1: requant holds (mult, k, right) for mt_requant_fast
                                   (host-checked: no overflow, every shift < 0);
                                   0: (mult, shift, 0), exact 64-bit path */
    const void *weights;        /* packed B (4-byte aligned) */
    const int32_t *bias;        /* [n_tiles * nr], input zero point folded in */
    const int32_t *requant;     /* [n_tiles * nr][3], see fast */
    mt_gemm_rows_fn rows;       /* mt_gemm_rows_<mr>x<nr>_w<wide>_m<mode>, chosen by the host: a
                                   direct pointer, so the linker keeps only the tiles a model uses */
};

/* The tile kernels (mode 0: exact requantisation + clamp, 1: mt_requant_fast + clamp,
 * 2: mt_requant_fast + SSAT when the activation range is the int8 range). */
#define MT_GEMM_ROWS_DECL(mr, nr, wide, mode)                                         \
    void mt_gemm_rows_##mr##x##nr##_w##wide##_m##mode(const mt_gemm_opt *g, const uint64_t *panel, \
                                                       int32_t rows, int8_t *output);
#define MT_GEMM_ROWS_DECL_TILE(mr, nr, wide)                                          \
    MT_GEMM_ROWS_DECL(mr, nr, wide, 0) MT_GEMM_ROWS_DECL(mr, nr, wide, 1) MT_GEMM_ROWS_DECL(mr, nr, wide, 2)
MT_GEMM_ROWS_DECL_TILE(1, 4, 0)
MT_GEMM_ROWS_DECL_TILE(1, 4, 1)
MT_GEMM_ROWS_DECL_TILE(4, 1, 0)
MT_GEMM_ROWS_DECL_TILE(4, 1, 1)
MT_GEMM_ROWS_DECL_TILE(3, 2, 0)
MT_GEMM_ROWS_DECL_TILE(3, 2, 1)
/* Direct 1x4 tiles (FC only): read the int8 input row and extend each word where it
 * is used, so the layer needs no scratch (mt_fully_connected_s8_opt with scratch NULL). */
#define MT_GEMM_ROWS_DECL_DIRECT(wide, mode)                                          \
    void mt_gemm_rows_1x4d_w##wide##_m##mode(const mt_gemm_opt *g, const uint64_t *panel, \
                                             int32_t rows, int8_t *output);
MT_GEMM_ROWS_DECL_DIRECT(0, 0) MT_GEMM_ROWS_DECL_DIRECT(0, 1) MT_GEMM_ROWS_DECL_DIRECT(0, 2)
MT_GEMM_ROWS_DECL_DIRECT(1, 0) MT_GEMM_ROWS_DECL_DIRECT(1, 1) MT_GEMM_ROWS_DECL_DIRECT(1, 2)

typedef struct {
    mt_gemm_opt g;
    int32_t batches;            /* rows of the input */
    int32_t depth;              /* K */
} mt_fully_connected_opt_params;

typedef struct {
    mt_gemm_opt g;
    int32_t batches;
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_h, pad_w;       /* padding before (top, left) */
    int32_t input_zp;           /* raw input zero point: the value of padding taps */
} mt_conv_opt_params;

/* Scratch (uint64_t elements) the kernels need: the A panel (one element per
 * k-block and row) plus a byte row for gathers. */
#define MT_GEMM_SCRATCH_U64(mr, k_blocks) ((mr) * (k_blocks) + ((k_blocks) + 1) / 2)

/* scratch NULL: g.rows is a direct 1x4 tile (no panel). */
void mt_fully_connected_s8_opt(const mt_fully_connected_opt_params *p, const int8_t *input,
                               int8_t *output, uint64_t *scratch);

void mt_conv_s8_opt(const mt_conv_opt_params *p, const int8_t *input, int8_t *output,
                    uint64_t *scratch);

/* Panel row `row` <- the receptive field of output pixel (oy, ox); `bytes` is the
 * gather row after the panel in the scratch. */
void mt_conv_row(const mt_conv_opt_params *p, const int8_t *in_b, int32_t oy, int32_t ox,
                 uint64_t *panel, int32_t row, int8_t *bytes);

/* One block of up to mr rows: panel (already built) -> rows x N outputs. */
void mt_gemm_s8_opt_rows(const mt_gemm_opt *g, const uint64_t *panel, int32_t rows, int8_t *output);

/* The requantisation of the optimised kernels (exposed for tests): equal to
 * mt_requantize in mt_quant.h for every input, with one 32x32->64 multiply. */
int32_t mt_requantize_opt(int32_t acc, int32_t multiplier, int32_t shift);

#endif /* MT_MATMUL_OPT_H */

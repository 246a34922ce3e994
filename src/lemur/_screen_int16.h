/* The rerank screen's int16 products (declared for Cython in
 * _screen_int16.pxd): where the CPU has AVX512-VNNI but neither AMX tiles nor
 * a VDPBF16PS faster than float32 FMA (Intel's processors without AMX, as
 * cloud VMs often expose them), tokens become int16 codes with a scale per
 * token and VPDPWSSD multiplies them: 32 multiply-adds an instruction, the
 * sums exact in int32. lemur/screening.py has the bound these products give.
 *
 * Codes: a token x of dim values has the scale s = max|x| / limit (float32;
 * 2^-149 where that underflows, 1 for a token of zeros) and the codes
 * c = round(x / s) (to nearest even; or of x (1 / s), lemur_int16_codes
 * says where), clamped to [-limit, limit], with
 * limit = lemur_int16_limit(dim): dim limit^2 < 2^31, so that no sum of
 * products of codes leaves int32.
 *   document rows: `rows` tokens, each `stride` codes (stride >= dim, a
 *     multiple of 32; codes past dim 0) and its scale; zero rows (scale 0) up
 *     to a multiple of LEMUR_INT16_ROWS
 *   query panels: 32 tokens a panel (its last one zero-padded), in steps of
 *     32 values along the tokens' dimension; a step is two tiles of 16 rows
 *     x 32 codes (tokens 0-15, then 16-31), row p of a tile holding, for
 *     each of its 16 tokens, the pair of codes 2p, 2p + 1 of the step: the
 *     layout of lemur_amx_pack_k_contiguous's B panels, with int16 codes
 *     for bfloat16 values.
 *
 * Only the AVX-512 kernel variant compiles the kernels (GCC or Clang on
 * x86-64); elsewhere lemur_int16_screen_compiled() says 0 and the rerank
 * runs without this screen. */
#ifndef LEMUR_SCREEN_INT16_H
#define LEMUR_SCREEN_INT16_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_amx.h"   /* the panels' layout (LEMUR_PANEL, LEMUR_STEP_VALUES) and lemur_lanes */

#if defined(__AVX512F__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LEMUR_SCREEN_INT16 1
#include <immintrin.h>
#endif

/* document rows multiplied at a time (and the multiple their count is padded to) */
#define LEMUR_INT16_ROWS 8

/* The largest code magnitude for tokens of `dim` values: the largest limit
 * with dim limit^2 <= 2^31 - 1, at most 32767. */
static inline int lemur_int16_limit(ptrdiff_t dim)
{
    double most = floor(sqrt(2147483647.0 / (double)(dim > 0 ? dim : 1)));
    int limit = most < 32767.0 ? (int)most : 32767;
    while ((double)dim * limit * limit > 2147483647.0)   /* (sqrt's rounding) */
        limit--;
    return limit;
}

/* The scale of a token whose largest magnitude is `largest` (see above). */
static inline float lemur_int16_scale(float largest, int limit)
{
    float scale = largest / (float)limit;
    if (largest == 0)
        return 1;
    return scale > 0 ? scale : 0x1p-149f;
}

/* Panel `panel` of a query's codes (tokens x stride int16, as
 * lemur_int16_codes leaves them; `tokens` of them) in the layout above:
 * steps x LEMUR_STEP_VALUES codes at out. */
static inline void lemur_int16_pack_panel(const int16_t *codes, ptrdiff_t stride, ptrdiff_t tokens,
                                          ptrdiff_t steps, ptrdiff_t panel, int16_t *out)
{
    ptrdiff_t step, t, p;
    memset(out, 0, (size_t)(steps * LEMUR_STEP_VALUES) * sizeof(int16_t));
    for (t = 0; t < LEMUR_PANEL && panel * LEMUR_PANEL + t < tokens; t++) {
        const int16_t *row = codes + (panel * LEMUR_PANEL + t) * stride;
        for (step = 0; step < steps; step++) {
            int16_t *tile = out + step * LEMUR_STEP_VALUES + (t / 16) * LEMUR_TILE_VALUES;
            for (p = 0; p < 16; p++) {
                tile[p * 32 + (t % 16) * 2] = row[step * 32 + 2 * p];
                tile[p * 32 + (t % 16) * 2 + 1] = row[step * 32 + 2 * p + 1];
            }
        }
    }
}

#if defined(LEMUR_SCREEN_INT16)
#define LEMUR_INT16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

static inline int lemur_int16_screen_compiled(void) { return 1; }

/* One token x (dim floats) -> its codes (stride int16, zero past dim) and
 * scale; squares[0] and squares[1] receive the float32 sums (any order) of
 * x_i^2 and of the errors (s c_i - x_i)^2, each error rounded once (FMA). */
LEMUR_INT16_TARGET static inline float lemur_int16_codes(const float *x, ptrdiff_t dim, ptrdiff_t stride,
                                                        int limit, int16_t *codes, float *squares)
{
    __m512 largest = _mm512_setzero_ps(), norm = _mm512_setzero_ps(), error = _mm512_setzero_ps();
    __m512i top = _mm512_set1_epi32(limit), bottom = _mm512_set1_epi32(-limit);
    ptrdiff_t k;
    float scale;
    for (k = 0; k < dim; k += 16)
        largest = _mm512_max_ps(largest, _mm512_abs_ps(_mm512_maskz_loadu_ps(lemur_lanes(dim - k), x + k)));
    scale = lemur_int16_scale(_mm512_reduce_max_ps(largest), limit);
    /* x times 1 / s rather than x / s (a division a vector costs more than the
     * rest of the loop): a code may differ by one from round(x / s), and the
     * errors summed below are those of the codes as they are; where 1 / s
     * overflows (s below 2^-128), the division */
    int divide = !(1.0f / scale < INFINITY);
    __m512 inverse = _mm512_set1_ps(1.0f / scale);
    for (k = 0; k < stride; k += 16) {
        __m512 values = _mm512_maskz_loadu_ps(lemur_lanes(dim - k), x + k);
        __m512i rounded = _mm512_cvtps_epi32(divide ? _mm512_div_ps(values, _mm512_set1_ps(scale))
                                                    : _mm512_mul_ps(values, inverse));
        __m512 residual;
        rounded = _mm512_max_epi32(bottom, _mm512_min_epi32(top, rounded));
        _mm256_storeu_si256((__m256i *)(codes + k), _mm512_cvtepi32_epi16(rounded));
        residual = _mm512_fmsub_ps(_mm512_set1_ps(scale), _mm512_cvtepi32_ps(rounded), values);
        norm = _mm512_fmadd_ps(values, values, norm);
        error = _mm512_fmadd_ps(residual, residual, error);
    }
    squares[0] = _mm512_reduce_add_ps(norm);
    squares[1] = _mm512_reduce_add_ps(error);
    return scale;
}

/* Document tokens (rows x dim float32) -> codes (row r at out + r * stride)
 * and scales, zero rows up to a multiple of LEMUR_INT16_ROWS; largest[0]
 * and largest[1] become the largest of the rows' squares[0] and squares[1]
 * (lemur_int16_codes), a NaN counting as infinite. */
LEMUR_INT16_TARGET static inline void lemur_int16_round_rows(const float *values, ptrdiff_t rows, ptrdiff_t dim,
                                                            ptrdiff_t stride, int limit, int16_t *out,
                                                            float *scales, float *largest)
{
    float most = 0, most_error = 0, squares[2];
    ptrdiff_t r, padded = (rows + LEMUR_INT16_ROWS - 1) / LEMUR_INT16_ROWS * LEMUR_INT16_ROWS;
    for (r = 0; r < rows; r++) {
        scales[r] = lemur_int16_codes(values + r * dim, dim, stride, limit, out + r * stride, squares);
        if (!(squares[0] <= most))
            most = squares[0] == squares[0] ? squares[0] : INFINITY;
        if (!(squares[1] <= most_error))
            most_error = squares[1] == squares[1] ? squares[1] : INFINITY;
    }
    memset(out + rows * stride, 0, (size_t)((padded - rows) * stride) * sizeof(int16_t));
    for (r = rows; r < padded; r++)
        scales[r] = 0;
    largest[0] = most;
    largest[1] = most_error;
}

/* acc += the pairwise products of a and b (VPDPWSSD), in place: GCC 12
 * wrapped the intrinsic in a copy of acc to and from another register at
 * every use in this loop nest (half the instructions of the loop). */
#define LEMUR_DPWSSD(acc, a, b) __asm__("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))

/* Running maxima over a document's rows (a_rows, a_scales: `rows` tokens
 * as lemur_int16_round_rows leaves them) of the products with a query's
 * tokens (b_packed: its panels; b_scales: its tokens' scales, zero-padded
 * to whole panels; `columns` tokens): maxima[j] = max(itself, max_i X_ij)
 * over i < rows, or that max alone unless resume, where X_ij =
 * fl(fl(fl(D_ij) a_i) b_j), D_ij the codes' exact int32 dot product. For 8
 * rows at a time and each 32-token panel: row p of a step's tile holds 16
 * tokens' pair p, which VPDPWSSD multiplies by each row's pair p broadcast,
 * into 8 x 2 int32 accumulators. Rows past `rows` are computed but not
 * taken. While the first panel's rows are multiplied, the next_bytes at
 * `next` (NULL: none) are prefetched, a share with each block of rows. */
LEMUR_INT16_TARGET static inline void lemur_int16_column_maxima(const int16_t *a_rows, const float *a_scales,
                                                               ptrdiff_t rows, ptrdiff_t stride,
                                                               const int16_t *b_packed, const float *b_scales,
                                                               ptrdiff_t columns, ptrdiff_t steps, int resume,
                                                               const char *next, ptrdiff_t next_bytes,
                                                               float *maxima)
{
    ptrdiff_t panels = lemur_amx_panels(columns), prefetched = 0;
    for (ptrdiff_t q = 0; q < panels; q++) {
        const int16_t *b_panel = b_packed + q * steps * LEMUR_STEP_VALUES;
        __m512 scale_low = _mm512_loadu_ps(b_scales + q * LEMUR_PANEL);
        __m512 scale_high = _mm512_loadu_ps(b_scales + q * LEMUR_PANEL + 16);
        __m512 low = resume ? _mm512_loadu_ps(maxima + q * LEMUR_PANEL) : _mm512_set1_ps(-INFINITY);
        __m512 high = resume ? _mm512_loadu_ps(maxima + q * LEMUR_PANEL + 16) : _mm512_set1_ps(-INFINITY);
        for (ptrdiff_t r0 = 0; r0 < rows; r0 += LEMUR_INT16_ROWS) {
            __m512i acc[LEMUR_INT16_ROWS][2];
            const int32_t *pairs[LEMUR_INT16_ROWS];
            ptrdiff_t present = rows - r0 < LEMUR_INT16_ROWS ? rows - r0 : LEMUR_INT16_ROWS;
            if (next != NULL && q == 0)
                for (ptrdiff_t end = next_bytes * (r0 + present) / rows; prefetched < end; prefetched += 64)
                    _mm_prefetch(next + prefetched, _MM_HINT_T2);
            _Pragma("GCC unroll 8") for (int j = 0; j < LEMUR_INT16_ROWS; j++) {
                acc[j][0] = _mm512_setzero_si512();
                acc[j][1] = _mm512_setzero_si512();
                pairs[j] = (const int32_t *)(a_rows + (r0 + j) * stride);
            }
            for (ptrdiff_t step = 0; step < steps; step++) {
                const int16_t *b = b_panel + step * LEMUR_STEP_VALUES;
                for (int p = 0; p < 16; p++) {
                    __m512i tokens_low = _mm512_loadu_si512((const void *)(b + p * 32));
                    __m512i tokens_high = _mm512_loadu_si512((const void *)(b + LEMUR_TILE_VALUES + p * 32));
                    _Pragma("GCC unroll 8") for (int j = 0; j < LEMUR_INT16_ROWS; j++) {
                        __m512i pair = _mm512_set1_epi32(pairs[j][step * 16 + p]);
                        LEMUR_DPWSSD(acc[j][0], tokens_low, pair);
                        LEMUR_DPWSSD(acc[j][1], tokens_high, pair);
                    }
                }
            }
            _Pragma("GCC unroll 8") for (int j = 0; j < LEMUR_INT16_ROWS; j++) {
                if (j >= present)
                    break;
                __m512 row_scale = _mm512_set1_ps(a_scales[r0 + j]);
                low = _mm512_max_ps(low, _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[j][0]), row_scale),
                                                       scale_low));
                high = _mm512_max_ps(high, _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[j][1]), row_scale),
                                                         scale_high));
            }
        }
        _mm512_storeu_ps(maxima + q * LEMUR_PANEL, low);
        _mm512_storeu_ps(maxima + q * LEMUR_PANEL + 16, high);
    }
}

#else

/* Without AVX-512 (never called: lemur_int16_screen_compiled() says 0) */
static inline int lemur_int16_screen_compiled(void) { return 0; }
static inline float lemur_int16_codes(const float *x, ptrdiff_t dim, ptrdiff_t stride, int limit, int16_t *codes,
                                      float *squares) { return 0; }
static inline void lemur_int16_round_rows(const float *values, ptrdiff_t rows, ptrdiff_t dim, ptrdiff_t stride,
                                          int limit, int16_t *out, float *scales, float *largest) {}
static inline void lemur_int16_column_maxima(const int16_t *a_rows, const float *a_scales, ptrdiff_t rows,
                                             ptrdiff_t stride, const int16_t *b_packed, const float *b_scales,
                                             ptrdiff_t columns, ptrdiff_t steps, int resume, const char *next,
                                             ptrdiff_t next_bytes, float *maxima) {}

#endif

#endif

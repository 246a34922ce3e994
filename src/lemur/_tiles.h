/* Register-tiled microkernels with a fixed order of operations (declared for
 * Cython in _tiles.pxd, built on the vectors of _simd.h).
 *
 * Both kernels give every output the same float32 value whatever else is
 * computed with it: the shape of the batch, the position of a row in a tile or
 * a block, how the work is split over threads. lemur's results are therefore
 * bitwise independent of num_threads, a query scores a document the same in
 * any batch, equal rows get equal scores, and a document's row of W does not
 * depend on the documents fitted with it.
 *
 * 1. Scores (the first stage): score(f, w) = <f, w> for rows of length h,
 *    computed as VECTOR_FLOATS lane-wise chains of multiply-adds (lane l
 *    takes the elements j = l mod VECTOR_FLOATS below the last full vector, in
 *    increasing j), the lanes added pairwise (lemur_vector_sum), then the
 *    remaining elements one by one. lemur_score_tile computes a tile of up to
 *    LEMUR_TILE_QUERIES x LEMUR_TILE_DOCS such scores at once, one
 *    accumulator register per pair; lemur_score_pair one alone.
 *
 * 2. Products C = A B (the feature map's layers, the projection that fits W):
 *    every C[i, j] is one chain of multiply-adds over k = 0, 1, ..., K-1 in
 *    increasing order, starting from 0. B is packed once into panels of
 *    LEMUR_GEMM_PANEL columns (lemur_gemm_pack); a unit of work computes the
 *    rows [row0, row0 + count) of one panel, in chunks of LEMUR_GEMM_DEPTH
 *    values of k: a chunk leaves its running sums in C (float32) and the next
 *    one resumes from them, which changes none of the numbers. The register
 *    tile is LEMUR_GEMM_ROWS rows of A by the LEMUR_GEMM_VECTORS vectors of a
 *    panel: each k loads the panel's row once and broadcasts one value of A
 *    per row.
 *
 * Multiply-adds are fused (one rounding) where the instruction set has FMA
 * (x86-64-v3 and up, arm64) and two roundings elsewhere; either way the same
 * in every code path of one build.
 */
#ifndef LEMUR_TILES_H
#define LEMUR_TILES_H

#include <stddef.h>
#include <string.h>

#include "_simd.h"

#if defined(__GNUC__) || defined(__clang__)
#define LEMUR_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define LEMUR_ALWAYS_INLINE static __forceinline
#endif

/* The product's register tile: LEMUR_GEMM_ROWS x LEMUR_GEMM_VECTORS
 * accumulators, plus the panel's row and one broadcast value (24 + 5 zmm of
 * 32; 12 + 3 ymm or 8 + 3 xmm of 16). */
#if defined(__AVX512F__)
#define LEMUR_GEMM_ROWS 6
#define LEMUR_GEMM_VECTORS 4
#elif defined(__AVX__)
#define LEMUR_GEMM_ROWS 6
#define LEMUR_GEMM_VECTORS 2
#else
#define LEMUR_GEMM_ROWS 4
#define LEMUR_GEMM_VECTORS 2
#endif
#define LEMUR_GEMM_PANEL (LEMUR_GEMM_VECTORS * LEMUR_VECTOR_FLOATS)
/* k values per chunk: a chunk of a panel (DEPTH x PANEL floats, 64 KiB with
 * AVX-512) stays in L2 while every row tile of a unit passes over it */
#define LEMUR_GEMM_DEPTH 256
/* the most rows of A in a unit of work: the more rows, the less the first
 * tile's wait for a chunk of the panel counts (with K = 16384, 256 rows run
 * as fast as OpenBLAS's sgemm, 64 rows 20% slower) */
#define LEMUR_GEMM_BLOCK_ROWS 256

/* ---- scores ------------------------------------------------------------- */

/* the pairwise sum of an accumulator's lanes plus the elements past the last
 * full vector: the end of every score */
LEMUR_ALWAYS_INLINE float lemur_score_finish(lemur_vector accumulator, const float *f,
                                             const float *w, ptrdiff_t h)
{
    float total = lemur_vector_sum(accumulator);
    ptrdiff_t j;
    for (j = (h / LEMUR_VECTOR_FLOATS) * LEMUR_VECTOR_FLOATS; j < h; j++)
        total += f[j] * w[j];
    return total;
}

/* out[q * out_stride + d] = score(queries[q], docs[d]) for q < num_queries,
 * d < num_docs (compile-time constants after inlining: callers switch over
 * them), rows h floats long */
LEMUR_ALWAYS_INLINE void lemur_score_tile_fixed(const float *const *queries, int num_queries,
                                                const float *const *docs, int num_docs,
                                                ptrdiff_t h, float *out, ptrdiff_t out_stride)
{
    lemur_vector accumulators[LEMUR_TILE_QUERIES][LEMUR_TILE_DOCS];
    lemur_vector query_part[LEMUR_TILE_QUERIES];
    lemur_vector doc_part;
    ptrdiff_t offset, full = (h / LEMUR_VECTOR_FLOATS) * LEMUR_VECTOR_FLOATS;
    int q, d;
    for (q = 0; q < num_queries; q++)
        for (d = 0; d < num_docs; d++)
            accumulators[q][d] = lemur_vector_zero();
    for (offset = 0; offset < full; offset += LEMUR_VECTOR_FLOATS) {
        for (q = 0; q < num_queries; q++)
            query_part[q] = lemur_vector_load(queries[q] + offset);
        for (d = 0; d < num_docs; d++) {
            doc_part = lemur_vector_load(docs[d] + offset);
            for (q = 0; q < num_queries; q++)
                accumulators[q][d] = lemur_vector_fma_lanes(accumulators[q][d], query_part[q], doc_part);
        }
    }
    for (q = 0; q < num_queries; q++)
        for (d = 0; d < num_docs; d++)
            out[q * out_stride + d] = lemur_score_finish(accumulators[q][d], queries[q], docs[d], h);
}

/* lemur_score_tile_fixed for any num_queries <= LEMUR_TILE_QUERIES and
 * num_docs <= LEMUR_TILE_DOCS */
static inline void lemur_score_tile(const float *const *queries, int num_queries,
                                    const float *const *docs, int num_docs, ptrdiff_t h,
                                    float *out, ptrdiff_t out_stride)
{
#define LEMUR_SCORE_CASE(Q, D) \
    case (Q) * 16 + (D): lemur_score_tile_fixed(queries, Q, docs, D, h, out, out_stride); return;
#if LEMUR_TILE_DOCS >= 6
#define LEMUR_SCORE_ROW(Q) LEMUR_SCORE_CASE(Q, 1) LEMUR_SCORE_CASE(Q, 2) LEMUR_SCORE_CASE(Q, 3) \
    LEMUR_SCORE_CASE(Q, 4) LEMUR_SCORE_CASE(Q, 5) LEMUR_SCORE_CASE(Q, 6)
#else
#define LEMUR_SCORE_ROW(Q) LEMUR_SCORE_CASE(Q, 1) LEMUR_SCORE_CASE(Q, 2) LEMUR_SCORE_CASE(Q, 3) \
    LEMUR_SCORE_CASE(Q, 4)
#endif
    switch (num_queries * 16 + num_docs) {
    LEMUR_SCORE_ROW(1)
    LEMUR_SCORE_ROW(2)
#if LEMUR_TILE_QUERIES >= 3
    LEMUR_SCORE_ROW(3)
#endif
#if LEMUR_TILE_QUERIES >= 4
    LEMUR_SCORE_ROW(4)
#endif
    default: return;
    }
#undef LEMUR_SCORE_ROW
#undef LEMUR_SCORE_CASE
}

/* score(f, w) of one pair */
static inline float lemur_score_pair(const float *f, const float *w, ptrdiff_t h)
{
    float out;
    lemur_score_tile_fixed(&f, 1, &w, 1, h, &out, 1);
    return out;
}

/* ---- products C = A B ---------------------------------------------------- */

/* floats of B packed: ceil(n / PANEL) panels of K x PANEL */
static inline ptrdiff_t lemur_gemm_packed_size(ptrdiff_t K, ptrdiff_t n)
{
    return ((n + LEMUR_GEMM_PANEL - 1) / LEMUR_GEMM_PANEL) * K * LEMUR_GEMM_PANEL;
}

/* packed[p][k][c] = B[k][p * PANEL + c] (0 past n), where
 * B[k][j] = source[k * row_stride + j * column_stride] */
static inline void lemur_gemm_pack(const float *source, ptrdiff_t K, ptrdiff_t n,
                                   ptrdiff_t row_stride, ptrdiff_t column_stride, float *packed)
{
    ptrdiff_t panel, k, c, column;
    for (panel = 0; panel * LEMUR_GEMM_PANEL < n; panel++)
        for (k = 0; k < K; k++)
            for (c = 0; c < LEMUR_GEMM_PANEL; c++) {
                column = panel * LEMUR_GEMM_PANEL + c;
                *packed++ = column < n ? source[k * row_stride + column * column_stride] : 0.0f;
            }
}

/* c[r][0:PANEL] (row stride ldc) for r < rows, over k < depth of a chunk:
 * c = (resume ? c : 0) + sum over k of a[r][k] * panel[k][0:PANEL] */
LEMUR_ALWAYS_INLINE void lemur_gemm_tile_fixed(int rows, const float *a, ptrdiff_t lda,
                                               const float *panel, ptrdiff_t depth, float *c,
                                               ptrdiff_t ldc, int resume)
{
    lemur_vector accumulators[LEMUR_GEMM_ROWS][LEMUR_GEMM_VECTORS];
    lemur_vector panel_row[LEMUR_GEMM_VECTORS];
    ptrdiff_t k;
    int r, v;
    for (r = 0; r < rows; r++)
        for (v = 0; v < LEMUR_GEMM_VECTORS; v++)
            accumulators[r][v] = resume ? lemur_vector_load(c + r * ldc + v * LEMUR_VECTOR_FLOATS)
                                        : lemur_vector_zero();
    for (k = 0; k < depth; k++) {
        for (v = 0; v < LEMUR_GEMM_VECTORS; v++)
            panel_row[v] = lemur_vector_load(panel + k * LEMUR_GEMM_PANEL + v * LEMUR_VECTOR_FLOATS);
        for (r = 0; r < rows; r++) {
            float value = a[r * lda + k];
            for (v = 0; v < LEMUR_GEMM_VECTORS; v++)
                accumulators[r][v] = lemur_vector_fma(accumulators[r][v], panel_row[v], value);
        }
    }
    for (r = 0; r < rows; r++)
        for (v = 0; v < LEMUR_GEMM_VECTORS; v++)
            lemur_vector_store(c + r * ldc + v * LEMUR_VECTOR_FLOATS, accumulators[r][v]);
}

static inline void lemur_gemm_tile(int rows, const float *a, ptrdiff_t lda, const float *panel,
                                   ptrdiff_t depth, float *c, ptrdiff_t ldc, int resume)
{
    switch (rows) {
    case 1: lemur_gemm_tile_fixed(1, a, lda, panel, depth, c, ldc, resume); return;
    case 2: lemur_gemm_tile_fixed(2, a, lda, panel, depth, c, ldc, resume); return;
    case 3: lemur_gemm_tile_fixed(3, a, lda, panel, depth, c, ldc, resume); return;
    case 4: lemur_gemm_tile_fixed(4, a, lda, panel, depth, c, ldc, resume); return;
#if LEMUR_GEMM_ROWS >= 6
    case 5: lemur_gemm_tile_fixed(5, a, lda, panel, depth, c, ldc, resume); return;
    case 6: lemur_gemm_tile_fixed(6, a, lda, panel, depth, c, ldc, resume); return;
#endif
    default: return;
    }
}

/* Prefetches share `tile` of `tiles` of the next chunk of a panel (its first
 * min(rest, DEPTH) rows), so that the chunk is in cache when the next round
 * of tiles starts on it. */
static inline void lemur_gemm_prefetch_share(const float *next_chunk, ptrdiff_t rest,
                                             ptrdiff_t tile, ptrdiff_t tiles)
{
    ptrdiff_t floats = (rest < LEMUR_GEMM_DEPTH ? rest : LEMUR_GEMM_DEPTH) * LEMUR_GEMM_PANEL;
    ptrdiff_t share = (floats + tiles - 1) / tiles, start = tile * share, f;
    for (f = start; f < start + share && f < floats; f += 64 / sizeof(float))
        lemur_prefetch(next_chunk + f);
}

/* One unit of work of C (m x n, row stride ldc) = A (m x K, row stride lda) B:
 * rows [row0, row0 + count) (count <= LEMUR_GEMM_BLOCK_ROWS) of panel
 * `panel_index` of B packed. scratch: LEMUR_GEMM_BLOCK_ROWS x PANEL floats,
 * for the last panel when it is narrower than PANEL. */
static inline void lemur_gemm_unit(const float *a, ptrdiff_t lda, ptrdiff_t K, const float *packed,
                                   ptrdiff_t n, ptrdiff_t panel_index, ptrdiff_t row0,
                                   ptrdiff_t count, float *c, ptrdiff_t ldc, float *scratch)
{
    const float *panel = packed + panel_index * K * LEMUR_GEMM_PANEL;
    ptrdiff_t first_column = panel_index * LEMUR_GEMM_PANEL;
    ptrdiff_t columns = n - first_column < LEMUR_GEMM_PANEL ? n - first_column : LEMUR_GEMM_PANEL;
    float *target = columns == LEMUR_GEMM_PANEL ? c + row0 * ldc + first_column : scratch;
    ptrdiff_t target_stride = columns == LEMUR_GEMM_PANEL ? ldc : LEMUR_GEMM_PANEL;
    ptrdiff_t k0, depth, r, rows;
    if (K == 0) {
        for (r = 0; r < count; r++)
            memset(c + (row0 + r) * ldc + first_column, 0, columns * sizeof(float));
        return;
    }
    for (k0 = 0; k0 < K; k0 += LEMUR_GEMM_DEPTH) {
        depth = K - k0 < LEMUR_GEMM_DEPTH ? K - k0 : LEMUR_GEMM_DEPTH;
        for (r = 0; r < count; r += LEMUR_GEMM_ROWS) {
            rows = count - r < LEMUR_GEMM_ROWS ? count - r : LEMUR_GEMM_ROWS;
            if (k0 + depth < K)
                lemur_gemm_prefetch_share(panel + (k0 + depth) * LEMUR_GEMM_PANEL,
                                          K - k0 - depth, r / LEMUR_GEMM_ROWS,
                                          (count + LEMUR_GEMM_ROWS - 1) / LEMUR_GEMM_ROWS);
            lemur_gemm_tile((int)rows, a + (row0 + r) * lda + k0, lda,
                            panel + k0 * LEMUR_GEMM_PANEL, depth,
                            target + r * target_stride, target_stride, k0 > 0);
        }
    }
    if (columns < LEMUR_GEMM_PANEL)
        for (r = 0; r < count; r++)
            memcpy(c + (row0 + r) * ldc + first_column, scratch + r * LEMUR_GEMM_PANEL,
                   columns * sizeof(float));
}

#endif

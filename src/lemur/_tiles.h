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
 *    remaining elements one by one. lemur_score_block computes them for a
 *    block of queries and rows of W, in register tiles of up to
 *    LEMUR_TILE_QUERIES x LEMUR_TILE_DOCS pairs, one accumulator per pair.
 *
 * 2. Products C = A B (the feature map's layers, the projection that fits W):
 *    every C[i, j] is one chain of multiply-adds over k = 0, 1, ..., K-1 in
 *    increasing order, starting from 0. B is packed once into panels of
 *    LEMUR_GEMM_PANEL columns (lemur_gemm_pack); a unit of work computes the
 *    rows [row0, row0 + count) of a range of panels, in chunks of LEMUR_GEMM_DEPTH
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
#include <stdint.h>
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
/* elements of the rows per span of lemur_score_block for batches of queries:
 * a tile of W's rows (6 x 4 KiB) stays in L1 while the query tiles pass */
#define LEMUR_SCORE_SPAN 2048

/* ---- scores ------------------------------------------------------------- */

/* The running sums of a tile over the elements [start, end) (multiples of
 * LEMUR_VECTOR_FLOATS) of its rows: state holds one accumulator per pair,
 * [q][d] with row stride LEMUR_TILE_DOCS, zero when `resume` is 0. Stopping
 * and resuming changes no value: each lane is the same chain of
 * multiply-adds. num_queries and num_docs are constants after inlining. */
LEMUR_ALWAYS_INLINE void lemur_score_tile_span(const float *const *queries, int num_queries,
                                               const float *const *docs, int num_docs,
                                               ptrdiff_t start, ptrdiff_t end,
                                               lemur_vector *state, int resume)
{
    lemur_vector accumulators[LEMUR_TILE_QUERIES][LEMUR_TILE_DOCS];
    lemur_vector query_part[LEMUR_TILE_QUERIES];
    lemur_vector doc_part;
    ptrdiff_t offset;
    int q, d;
    for (q = 0; q < num_queries; q++)
        for (d = 0; d < num_docs; d++)
            accumulators[q][d] = resume ? state[q * LEMUR_TILE_DOCS + d] : lemur_vector_zero();
    for (offset = start; offset < end; offset += LEMUR_VECTOR_FLOATS) {
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
            state[q * LEMUR_TILE_DOCS + d] = accumulators[q][d];
}

/* lemur_score_tile_span for any num_queries <= LEMUR_TILE_QUERIES and
 * num_docs <= LEMUR_TILE_DOCS */
static inline void lemur_score_span(const float *const *queries, int num_queries,
                                    const float *const *docs, int num_docs, ptrdiff_t start,
                                    ptrdiff_t end, lemur_vector *state, int resume)
{
#define LEMUR_SCORE_CASE(Q, D) \
    case (Q) * 16 + (D): \
        lemur_score_tile_span(queries, Q, docs, D, start, end, state, resume); return;
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

/* A score's end: its lanes' pairwise sum plus the elements of f and w past
 * the last full vector, one by one. */
LEMUR_ALWAYS_INLINE float lemur_score_tail(float lane_sum, const float *f, const float *w, ptrdiff_t h)
{
    ptrdiff_t j;
    for (j = (h / LEMUR_VECTOR_FLOATS) * LEMUR_VECTOR_FLOATS; j < h; j++)
        lane_sum += f[j] * w[j];
    return lane_sum;
}

/* The scores of a tile from its pairs' accumulators (state, as
 * lemur_score_tile_span leaves it): each pair's lanes added pairwise
 * (lemur_vector_sum), then its tail. */
static inline void lemur_score_tile_finish(const lemur_vector *state, const float *features,
                                           int num_queries, const float *W_rows, int num_docs,
                                           ptrdiff_t h, float *scores, ptrdiff_t scores_stride)
{
    int q, d;
    for (q = 0; q < num_queries; q++)
        for (d = 0; d < num_docs; d++)
            scores[q * scores_stride + d] = lemur_score_tail(
                lemur_vector_sum(state[q * LEMUR_TILE_DOCS + d]), features + q * h, W_rows + d * h, h);
}

/* Prefetches share `part` of `parts` of elements [start, end) of the rows of
 * the next doc tile (rows h floats apart, at most LEMUR_TILE_DOCS of them):
 * each row's span is a page or more of W, which the hardware prefetchers do
 * not cross on their own. */
static inline void lemur_score_prefetch_share(const float *next_rows, ptrdiff_t h, ptrdiff_t start,
                                              ptrdiff_t end, ptrdiff_t rows_left, ptrdiff_t part,
                                              ptrdiff_t parts)
{
    ptrdiff_t rows = rows_left < LEMUR_TILE_DOCS ? rows_left : LEMUR_TILE_DOCS;
    ptrdiff_t lines_per_row = ((end - start) * (ptrdiff_t)sizeof(float) + 63) / 64;
    ptrdiff_t lines = rows * lines_per_row, share = (lines + parts - 1) / parts, line;
    for (line = part * share; line < (part + 1) * share && line < lines; line++)
        lemur_prefetch(next_rows + (line / lines_per_row) * h + start + (line % lines_per_row) * 16);
}

/* Vectors of scratch that lemur_score_block needs for num_queries x num_docs. */
static inline ptrdiff_t lemur_score_state_size(ptrdiff_t num_queries, ptrdiff_t num_docs)
{
    return ((num_queries + LEMUR_TILE_QUERIES - 1) / LEMUR_TILE_QUERIES)
           * ((num_docs + LEMUR_TILE_DOCS - 1) / LEMUR_TILE_DOCS) * LEMUR_TILE_QUERIES * LEMUR_TILE_DOCS;
}

/* scores[q * scores_stride + d] = score(features[q], W_block[d]) for the
 * (num_queries, h) features and (num_docs, h) rows of a block of W.
 * `span` elements of the rows at a time (a multiple of LEMUR_VECTOR_FLOATS;
 * 0: all at once): for each span, doc tiles outermost, so that a tile of W's
 * rows stays in L1 while every query tile passes over it, and the pairs'
 * running sums wait in `state` (lemur_score_state_size vectors) between
 * spans. Either way every score is the same chain of operations. */
static inline void lemur_score_block(const float *features, ptrdiff_t num_queries,
                                     const float *W_block, ptrdiff_t num_docs, ptrdiff_t h,
                                     ptrdiff_t span, float *scores, ptrdiff_t scores_stride,
                                     lemur_vector *state)
{
    const float *query_rows[LEMUR_TILE_QUERIES];
    const float *doc_rows[LEMUR_TILE_DOCS];
    ptrdiff_t full = (h / LEMUR_VECTOR_FLOATS) * LEMUR_VECTOR_FLOATS;
    ptrdiff_t query_tiles = (num_queries + LEMUR_TILE_QUERIES - 1) / LEMUR_TILE_QUERIES;
    ptrdiff_t start, end, q0, d0, i;
    int tile_queries, tile_docs;
    if (span <= 0 || span > full)
        span = full;
    for (start = 0; start == 0 || start < full; start += span) {
        end = start + span < full ? start + span : full;
        for (d0 = 0; d0 < num_docs; d0 += LEMUR_TILE_DOCS) {
            tile_docs = (int)(num_docs - d0 < LEMUR_TILE_DOCS ? num_docs - d0 : LEMUR_TILE_DOCS);
            for (i = 0; i < tile_docs; i++)
                doc_rows[i] = W_block + (d0 + i) * h;
            for (q0 = 0; q0 < num_queries; q0 += LEMUR_TILE_QUERIES) {
                tile_queries = (int)(num_queries - q0 < LEMUR_TILE_QUERIES ? num_queries - q0 : LEMUR_TILE_QUERIES);
                for (i = 0; i < tile_queries; i++)
                    query_rows[i] = features + (q0 + i) * h;
                if (d0 + LEMUR_TILE_DOCS < num_docs)  /* the next doc tile's span, a share per query tile */
                    lemur_score_prefetch_share(W_block + (d0 + LEMUR_TILE_DOCS) * h, h, start, end,
                                               num_docs - d0 - LEMUR_TILE_DOCS, q0 / LEMUR_TILE_QUERIES,
                                               query_tiles);
                lemur_score_span(query_rows, tile_queries, doc_rows, tile_docs, start, end,
                                 state + ((d0 / LEMUR_TILE_DOCS) * query_tiles + q0 / LEMUR_TILE_QUERIES)
                                         * LEMUR_TILE_QUERIES * LEMUR_TILE_DOCS,
                                 start > 0);
            }
        }
        if (full == 0)
            break;
    }
    for (d0 = 0; d0 < num_docs; d0 += LEMUR_TILE_DOCS)
        for (q0 = 0; q0 < num_queries; q0 += LEMUR_TILE_QUERIES)
            lemur_score_tile_finish(
                state + ((d0 / LEMUR_TILE_DOCS) * query_tiles + q0 / LEMUR_TILE_QUERIES)
                        * LEMUR_TILE_QUERIES * LEMUR_TILE_DOCS,
                features + q0 * h,
                (int)(num_queries - q0 < LEMUR_TILE_QUERIES ? num_queries - q0 : LEMUR_TILE_QUERIES),
                W_block + d0 * h, (int)(num_docs - d0 < LEMUR_TILE_DOCS ? num_docs - d0 : LEMUR_TILE_DOCS),
                h, scores + q0 * scores_stride + d0, scores_stride);
}

/* ---- products C = A B ---------------------------------------------------- */

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
 * rows [row0, row0 + count) (count <= LEMUR_GEMM_BLOCK_ROWS) of panels
 * [first_panel, end_panel) of B packed. For each chunk of k, each tile of A's
 * rows passes over all the unit's panels while it is in L1 (a long K reads A
 * once per unit, not once per panel). scratch: LEMUR_GEMM_BLOCK_ROWS x PANEL
 * floats, for the last panel of B when it is narrower than PANEL. */
static inline void lemur_gemm_unit(const float *a, ptrdiff_t lda, ptrdiff_t K, const float *packed,
                                   ptrdiff_t n, ptrdiff_t first_panel, ptrdiff_t end_panel,
                                   ptrdiff_t row0, ptrdiff_t count, float *c, ptrdiff_t ldc,
                                   float *scratch)
{
    ptrdiff_t last_columns = n - (end_panel - 1) * LEMUR_GEMM_PANEL;
    int narrow_last = last_columns < LEMUR_GEMM_PANEL;
    ptrdiff_t tiles = (count + LEMUR_GEMM_ROWS - 1) / LEMUR_GEMM_ROWS;
    ptrdiff_t k0, depth, r, rows, panel, target_stride, columns;
    const float *panel_data;
    float *target;
    if (K == 0) {
        for (r = 0; r < count; r++)
            memset(c + (row0 + r) * ldc + first_panel * LEMUR_GEMM_PANEL, 0,
                   (n - first_panel * LEMUR_GEMM_PANEL < (end_panel - first_panel) * LEMUR_GEMM_PANEL
                        ? n - first_panel * LEMUR_GEMM_PANEL : (end_panel - first_panel) * LEMUR_GEMM_PANEL)
                       * sizeof(float));
        return;
    }
    for (k0 = 0; k0 < K; k0 += LEMUR_GEMM_DEPTH) {
        depth = K - k0 < LEMUR_GEMM_DEPTH ? K - k0 : LEMUR_GEMM_DEPTH;
        for (r = 0; r < count; r += LEMUR_GEMM_ROWS) {
            rows = count - r < LEMUR_GEMM_ROWS ? count - r : LEMUR_GEMM_ROWS;
            for (panel = first_panel; panel < end_panel; panel++) {
                panel_data = packed + panel * K * LEMUR_GEMM_PANEL;
                if (narrow_last && panel == end_panel - 1) {
                    target = scratch + r * LEMUR_GEMM_PANEL;
                    target_stride = LEMUR_GEMM_PANEL;
                } else {
                    target = c + (row0 + r) * ldc + panel * LEMUR_GEMM_PANEL;
                    target_stride = ldc;
                }
                if (k0 + depth < K)
                    lemur_gemm_prefetch_share(panel_data + (k0 + depth) * LEMUR_GEMM_PANEL,
                                              K - k0 - depth, r / LEMUR_GEMM_ROWS, tiles);
                lemur_gemm_tile((int)rows, a + (row0 + r) * lda + k0, lda,
                                panel_data + k0 * LEMUR_GEMM_PANEL, depth, target, target_stride,
                                k0 > 0);
            }
        }
    }
    if (narrow_last)
        for (r = 0; r < count; r++)
            memcpy(c + (row0 + r) * ldc + (end_panel - 1) * LEMUR_GEMM_PANEL,
                   scratch + r * LEMUR_GEMM_PANEL, last_columns * sizeof(float));
    (void)columns;
}

/* out[q * out_stride + d] = score(query_rows[q], doc_rows[d]) for one tile
 * of gathered rows (h floats each; at most LEMUR_TILE_QUERIES x
 * LEMUR_TILE_DOCS), whole rows at once. */
static inline void lemur_score_gathered_tile(const float *const *query_rows, int num_queries,
                                             const float *const *doc_rows, int num_docs, ptrdiff_t h,
                                             float *out, ptrdiff_t out_stride)
{
    lemur_vector state[LEMUR_TILE_QUERIES * LEMUR_TILE_DOCS];
    int q, d;
    lemur_score_span(query_rows, num_queries, doc_rows, num_docs, 0, (h / LEMUR_VECTOR_FLOATS) * LEMUR_VECTOR_FLOATS,
                     state, 0);
    for (q = 0; q < num_queries; q++)
        for (d = 0; d < num_docs; d++)
            out[q * out_stride + d] = lemur_score_tail(lemur_vector_sum(state[q * LEMUR_TILE_DOCS + d]),
                                                       query_rows[q], doc_rows[d], h);
}

/* out[i] = score(features[queries[i]], w) for i < count, for one row w of
 * W (h floats) and queries' features of h floats each: tiles of up to
 * LEMUR_TILE_QUERIES queries and that row, which is read once. */
static inline void lemur_score_row_pairs(const float *features, const float *w, ptrdiff_t h,
                                         const int32_t *queries, ptrdiff_t count, float *out)
{
    const float *query_rows[LEMUR_TILE_QUERIES];
    ptrdiff_t first;
    int tile, i;
    for (first = 0; first < count; first += LEMUR_TILE_QUERIES) {
        tile = (int)(count - first < LEMUR_TILE_QUERIES ? count - first : LEMUR_TILE_QUERIES);
        for (i = 0; i < tile; i++)
            query_rows[i] = features + (ptrdiff_t)queries[first + i] * h;
        lemur_score_gathered_tile(query_rows, tile, &w, 1, h, out + first, 1);
    }
}

/* out[i] = score(f, W[rows[i]]) for i < count, for one query's features f
 * and rows of W (h floats each, W's rows `h` apart): tiles of that query and
 * up to LEMUR_TILE_DOCS rows, whose chains of multiply-adds run side by side
 * (a row alone is one chain, bound by the multiply-add's latency). */
static inline void lemur_score_query_rows(const float *f, const float *W, ptrdiff_t h, const int64_t *rows,
                                          ptrdiff_t count, float *out)
{
    const float *doc_rows[LEMUR_TILE_DOCS];
    ptrdiff_t first;
    int tile, d;
    for (first = 0; first < count; first += LEMUR_TILE_DOCS) {
        tile = (int)(count - first < LEMUR_TILE_DOCS ? count - first : LEMUR_TILE_DOCS);
        for (d = 0; d < tile; d++)
            doc_rows[d] = W + rows[first + d] * h;
        lemur_score_gathered_tile(&f, 1, doc_rows, tile, h, out + first, tile);
    }
}

/* The most rounded operations on the way of one product into score(f, w)
 * for rows of length h: its lane's chain of h / VF multiply-adds, the
 * log2(VF) pairwise sums of the lanes and the tail's h mod VF additions (one
 * more for a product rounded on its own). |score - <f, w>| is at most
 * gamma(depth) sum_i |f_i w_i| (the compact first stage's bound uses it). */
static inline double lemur_score_depth(ptrdiff_t h)
{
    int levels = LEMUR_VECTOR_FLOATS == 16 ? 4 : LEMUR_VECTOR_FLOATS == 8 ? 3 : 2;
    return (double)(h / LEMUR_VECTOR_FLOATS) + levels + (double)(h % LEMUR_VECTOR_FLOATS) + 1;
}

/* ---- scores of a batch as lane-wise products ----------------------------- *
 * The same scores, for batches of queries, as products: lane l of score(f, w)
 * is the chain over k of f[l + VF k] w[l + VF k] (VF = LEMUR_VECTOR_FLOATS),
 * which is element (q, d) of the product of the queries' lane-l elements
 * (num_queries x h/VF) with the documents' (h/VF x num_docs) in the order of
 * lemur_gemm_tile. So a block of LEMUR_GEMM_PANEL rows of W is transposed
 * into one packed panel per lane (lemur_lanes_pack_panel), the queries into
 * their lanes once (lemur_lanes_of_queries), and each tile of queries runs
 * lemur_gemm_tile once per lane, then adds the lanes pairwise as
 * lemur_vector_sum does: bitwise the scores of lemur_score_block, at the
 * speed of a product whose operands are packed (and whatever W's alignment). */

/* floats of a lane-packed panel of W: VF lanes x (h / VF) x PANEL */
static inline ptrdiff_t lemur_lanes_panel_size(ptrdiff_t h)
{
    return (h / LEMUR_VECTOR_FLOATS) * LEMUR_VECTOR_FLOATS * LEMUR_GEMM_PANEL;
}

/* packed[l][k][c] = W_rows[c * h + l + VF k] for c < count (<= PANEL), 0 past
 * count; k < h / VF. VF rows at a time, one VF x VF transpose per vector. */
static inline void lemur_lanes_pack_panel(const float *W_rows, ptrdiff_t count, ptrdiff_t h,
                                          float *packed)
{
    lemur_vector block[LEMUR_VECTOR_FLOATS];
    ptrdiff_t depth = h / LEMUR_VECTOR_FLOATS, c0, k, lane;
    int i;
    for (c0 = 0; c0 < LEMUR_GEMM_PANEL; c0 += LEMUR_VECTOR_FLOATS)
        for (k = 0; k < depth; k++) {
            for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
                block[i] = c0 + i < count ? lemur_vector_load(W_rows + (c0 + i) * h + k * LEMUR_VECTOR_FLOATS)
                                          : lemur_vector_zero();
            lemur_transpose(block);
            for (lane = 0; lane < LEMUR_VECTOR_FLOATS; lane++)
                lemur_vector_store(packed + (lane * depth + k) * LEMUR_GEMM_PANEL + c0, block[lane]);
        }
}

/* out[l][q][k] = features[q * h + l + VF k] for q < num_queries, k < h / VF */
static inline void lemur_lanes_of_queries(const float *features, ptrdiff_t num_queries, ptrdiff_t h,
                                          float *out)
{
    ptrdiff_t depth = h / LEMUR_VECTOR_FLOATS, q, k, lane;
    for (lane = 0; lane < LEMUR_VECTOR_FLOATS; lane++)
        for (q = 0; q < num_queries; q++)
            for (k = 0; k < depth; k++)
                out[(lane * num_queries + q) * depth + k] = features[q * h + lane + k * LEMUR_VECTOR_FLOATS];
}

/* scores[q * scores_stride + c] = score(features[q], W_rows[c]) for
 * q < num_queries, c < count (<= PANEL), from the queries' lanes and the
 * rows' lane-packed panel. For each tile of queries: its lanes one after the
 * other (lemur_gemm_tile), then their pairwise sum and the tails. lanes:
 * LEMUR_LANES_SCRATCH floats of scratch. */
#define LEMUR_LANES_SCRATCH (LEMUR_VECTOR_FLOATS * LEMUR_GEMM_ROWS * LEMUR_GEMM_PANEL)

static inline void lemur_score_panel(const float *query_lanes, const float *features,
                                     ptrdiff_t num_queries, const float *panel, const float *W_rows,
                                     ptrdiff_t count, ptrdiff_t h, float *scores,
                                     ptrdiff_t scores_stride, float *lanes)
{
    ptrdiff_t depth = h / LEMUR_VECTOR_FLOATS, tile = LEMUR_GEMM_ROWS * LEMUR_GEMM_PANEL;
    ptrdiff_t q0, lane, i, width, c;
    int rows, r;
    for (q0 = 0; q0 < num_queries; q0 += LEMUR_GEMM_ROWS) {
        rows = (int)(num_queries - q0 < LEMUR_GEMM_ROWS ? num_queries - q0 : LEMUR_GEMM_ROWS);
        for (lane = 0; lane < LEMUR_VECTOR_FLOATS; lane++)
            lemur_gemm_tile(rows, query_lanes + (lane * num_queries + q0) * depth, depth,
                            panel + lane * depth * LEMUR_GEMM_PANEL, depth, lanes + lane * tile,
                            LEMUR_GEMM_PANEL, 0);
        for (width = LEMUR_VECTOR_FLOATS / 2; width >= 1; width /= 2)  /* lemur_vector_sum's pairs */
            for (lane = 0; lane < width; lane++)
                for (i = 0; i < rows * LEMUR_GEMM_PANEL; i++)
                    lanes[lane * tile + i] += lanes[(lane + width) * tile + i];
        for (r = 0; r < rows; r++)
            for (c = 0; c < count; c++)
                scores[(q0 + r) * scores_stride + c] = lemur_score_tail(
                    lanes[r * LEMUR_GEMM_PANEL + c], features + (q0 + r) * h, W_rows + c * h, h);
    }
}

/* ---- scores of a batch, whichever way ------------------------------------ */

/* Batches of at least this many queries score W as lane-wise products (the
 * register tiles are faster below it). */
#define LEMUR_PANEL_BATCH 32
/* Batches of at most this many queries read each row of W once, whole (like
 * a GEMV); larger ones in spans of LEMUR_SCORE_SPAN. */
#define LEMUR_SMALL_BATCH 4

typedef struct {
    const float *features;     /* (num_queries, h) */
    ptrdiff_t num_queries;
    ptrdiff_t h;
    const float *query_lanes;  /* lemur_lanes_of_queries(features), or NULL: register tiles */
} lemur_score_batch;

/* floats of per-thread scratch that lemur_score_rows needs for blocks of up to
 * block_docs rows */
static inline ptrdiff_t lemur_score_scratch_size(ptrdiff_t num_queries, ptrdiff_t h, ptrdiff_t block_docs)
{
    if (num_queries >= LEMUR_PANEL_BATCH)
        return lemur_lanes_panel_size(h) + LEMUR_LANES_SCRATCH;
    return lemur_score_state_size(num_queries, block_docs) * LEMUR_VECTOR_FLOATS;
}

/* scores[q * scores_stride + d] = score(features[q], W_rows[d]) for d < count:
 * lane-wise products panel by panel, or register tiles (the same numbers). */
static inline void lemur_score_rows(const lemur_score_batch *batch, const float *W_rows,
                                    ptrdiff_t count, float *scores, ptrdiff_t scores_stride,
                                    float *scratch)
{
    ptrdiff_t h = batch->h, first, width;
    if (batch->query_lanes == NULL) {
        lemur_score_block(batch->features, batch->num_queries, W_rows, count, h,
                          batch->num_queries <= LEMUR_SMALL_BATCH ? 0 : LEMUR_SCORE_SPAN,
                          scores, scores_stride, (lemur_vector *)scratch);
        return;
    }
    for (first = 0; first < count; first += LEMUR_GEMM_PANEL) {
        width = count - first < LEMUR_GEMM_PANEL ? count - first : LEMUR_GEMM_PANEL;
        lemur_lanes_pack_panel(W_rows + first * h, width, h, scratch);
        lemur_score_panel(batch->query_lanes, batch->features, batch->num_queries, scratch,
                          W_rows + first * h, width, h, scores + first, scores_stride,
                          scratch + lemur_lanes_panel_size(h));
    }
}

#endif

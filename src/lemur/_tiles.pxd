# cython: language_level=3
"""The register-tiled microkernels of _tiles.h: scores and products with a
fixed order of operations (see that file for what is fixed, and why)."""

from libc.stdint cimport int32_t, int64_t


cdef extern from "_tiles.h" nogil:
    enum:
        # columns per panel of a packed B, and rows of A per unit of work
        GEMM_PANEL "LEMUR_GEMM_PANEL"
        GEMM_BLOCK_ROWS "LEMUR_GEMM_BLOCK_ROWS"
        # batches of at least this many queries score W as lane-wise products
        PANEL_BATCH "LEMUR_PANEL_BATCH"
        # batches of at most this many queries read each row of W whole
        SMALL_BATCH "LEMUR_SMALL_BATCH"
    ctypedef struct score_batch "lemur_score_batch":
        const float *features
        Py_ssize_t num_queries
        Py_ssize_t h
        const float *query_lanes
    Py_ssize_t score_scratch_size "lemur_score_scratch_size"(Py_ssize_t num_queries, Py_ssize_t h,
                                                             Py_ssize_t block_docs)
    void lanes_of_queries "lemur_lanes_of_queries"(const float *features, Py_ssize_t num_queries,
                                                   Py_ssize_t h, float *out)
    void score_rows "lemur_score_rows"(const score_batch *batch, const float *W_rows,
                                       Py_ssize_t count, float *scores, Py_ssize_t scores_stride,
                                       float *scratch)
    void gemm_pack "lemur_gemm_pack"(const float *source, Py_ssize_t K, Py_ssize_t n,
                                     Py_ssize_t row_stride, Py_ssize_t column_stride,
                                     float *packed)
    void gemm_unit "lemur_gemm_unit"(const float *a, Py_ssize_t lda, Py_ssize_t K,
                                     const float *packed, Py_ssize_t n, Py_ssize_t first_panel,
                                     Py_ssize_t end_panel, Py_ssize_t row0, Py_ssize_t count,
                                     float *c, Py_ssize_t ldc, float *scratch)
    void score_row_pairs "lemur_score_row_pairs"(const float *features, const float *w, Py_ssize_t h,
                                                 const int32_t *queries, Py_ssize_t count, float *out)
    void score_query_rows "lemur_score_query_rows"(const float *f, const float *W, Py_ssize_t h,
                                                   const int64_t *rows, Py_ssize_t count, float *out)
    double score_depth "lemur_score_depth"(Py_ssize_t h)

# cython: language_level=3
"""The register-tiled microkernels of _tiles.h: scores and products with a
fixed order of operations (see that file for what is fixed, and why)."""

from lemur._simd cimport lemur_vector


cdef extern from "_tiles.h" nogil:
    enum:
        # columns per panel of a packed B, and rows of A per unit of work
        GEMM_PANEL "LEMUR_GEMM_PANEL"
        GEMM_BLOCK_ROWS "LEMUR_GEMM_BLOCK_ROWS"
        # elements of the rows per span of score_block, for batches of queries
        SCORE_SPAN "LEMUR_SCORE_SPAN"
    Py_ssize_t score_state_size "lemur_score_state_size"(Py_ssize_t num_queries,
                                                         Py_ssize_t num_docs)
    void score_block "lemur_score_block"(const float *features, Py_ssize_t num_queries,
                                         const float *W_block, Py_ssize_t num_docs, Py_ssize_t h,
                                         Py_ssize_t span, float *scores, Py_ssize_t scores_stride,
                                         lemur_vector *state)
    Py_ssize_t gemm_packed_size "lemur_gemm_packed_size"(Py_ssize_t K, Py_ssize_t n)
    void gemm_pack "lemur_gemm_pack"(const float *source, Py_ssize_t K, Py_ssize_t n,
                                     Py_ssize_t row_stride, Py_ssize_t column_stride,
                                     float *packed)
    void gemm_unit "lemur_gemm_unit"(const float *a, Py_ssize_t lda, Py_ssize_t K,
                                     const float *packed, Py_ssize_t n, Py_ssize_t first_panel,
                                     Py_ssize_t end_panel, Py_ssize_t row0, Py_ssize_t count,
                                     float *c, Py_ssize_t ldc, float *scratch)

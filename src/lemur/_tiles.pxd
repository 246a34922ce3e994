# cython: language_level=3
"""The register-tiled microkernels of _tiles.h: scores and products with a
fixed order of operations (see that file for what is fixed, and why)."""

cdef extern from "_tiles.h" nogil:
    enum:
        # columns per panel of a packed B, and rows of A per unit of work
        GEMM_PANEL "LEMUR_GEMM_PANEL"
        GEMM_BLOCK_ROWS "LEMUR_GEMM_BLOCK_ROWS"
    void score_tile "lemur_score_tile"(const float *const *queries, int num_queries,
                                       const float *const *docs, int num_docs, Py_ssize_t h,
                                       float *out, Py_ssize_t out_stride)
    float score_pair "lemur_score_pair"(const float *f, const float *w, Py_ssize_t h)
    Py_ssize_t gemm_packed_size "lemur_gemm_packed_size"(Py_ssize_t K, Py_ssize_t n)
    void gemm_pack "lemur_gemm_pack"(const float *source, Py_ssize_t K, Py_ssize_t n,
                                     Py_ssize_t row_stride, Py_ssize_t column_stride,
                                     float *packed)
    void gemm_unit "lemur_gemm_unit"(const float *a, Py_ssize_t lda, Py_ssize_t K,
                                     const float *packed, Py_ssize_t n, Py_ssize_t panel_index,
                                     Py_ssize_t row0, Py_ssize_t count, float *c, Py_ssize_t ldc,
                                     float *scratch)

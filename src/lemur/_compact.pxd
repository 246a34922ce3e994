# cython: language_level=3
"""The compact first stage's arithmetic of _compact.h: encoding rows and
queries as bfloat16 or int8, and certified bounds on their float32 scores."""

from libc.stdint cimport int32_t, int64_t, uint8_t


cdef extern from "_compact.h" nogil:
    enum:
        COMPACT_BLOCK "LEMUR_COMPACT_BLOCK"
        ROW_PARAMS "LEMUR_ROW_PARAMS"
        QUERY_PARAMS "LEMUR_QUERY_PARAMS"
        COMPACT_INT8 "LEMUR_INT8"
        COMPACT_BFLOAT16 "LEMUR_BFLOAT16"
        MAX_TILE_QUERIES "LEMUR_MAX_TILE_QUERIES"
    ctypedef struct compact_cpu "lemur_compact_cpu":
        int vnni512
        int avx_vnni
        int avx2
        int bf16_512
        int bf16_dot
        int amx_int8
        int amx_bf16
    ctypedef struct compact_rows "lemur_compact_rows":
        int kind
        const uint8_t *codes
        const float *params
        Py_ssize_t num_docs
        Py_ssize_t h
        Py_ssize_t m
        Py_ssize_t steps
        compact_cpu cpu
    ctypedef struct compact_queries "lemur_compact_queries":
        const uint8_t *codes
        const float *params
        Py_ssize_t num_queries
    ctypedef struct survivors_list "lemur_survivors":
        int64_t *rows
        int32_t *queries
        float *lower
        float *upper
        Py_ssize_t count
        Py_ssize_t capacity
        int status
    ctypedef struct scan_state "lemur_scan_state":
        float *heaps
        Py_ssize_t *sizes
        float *thresholds
        void *dots
        survivors_list survivors
    ctypedef void (*block_kernel "lemur_block_kernel")(const compact_rows *rows, const compact_queries *queries,
                                                      const uint8_t *block, Py_ssize_t q0, int num_queries,
                                                      void *out)
    ctypedef struct block_kernel_info "lemur_block_kernel_info":
        const char *name
        block_kernel kernel
        int tile_queries
        Py_ssize_t min_queries
    enum:
        MAX_BLOCK_KERNELS "LEMUR_MAX_BLOCK_KERNELS"
    int block_kernels "lemur_block_kernels"(const compact_rows *rows, int query_limit,
                                            block_kernel_info *kernels)
    compact_cpu compact_detect "lemur_compact_detect"()
    int float_environment_default "lemur_float_environment_default"()
    double gamma_of "lemur_gamma"(double n)
    Py_ssize_t compact_steps "lemur_compact_steps"(int kind, Py_ssize_t h)
    Py_ssize_t query_step_bytes "lemur_query_step_bytes"(int kind, Py_ssize_t steps, compact_cpu cpu)
    int int8_query_limit "lemur_int8_query_limit"(compact_cpu cpu)
    void encode_row "lemur_compact_encode_row"(int kind, const float *w, Py_ssize_t h, const float *basis,
                                               Py_ssize_t m, uint8_t *block_codes, float *block_params,
                                               Py_ssize_t lane, uint8_t *work)
    void encode_query "lemur_compact_encode_query"(const compact_rows *rows, const float *basis,
                                                   double score_depth, const float *f, uint8_t *codes,
                                                   float *params, double *exact, float *perp)
    float kth_largest "lemur_kth_largest"(float *values, Py_ssize_t n, Py_ssize_t k, float *heap)
    int survivors_reset "lemur_survivors_reset"(survivors_list *survivors, Py_ssize_t capacity,
                                                Py_ssize_t limit)
    void survivors_free "lemur_survivors_free"(survivors_list *survivors)
    int scan_block "lemur_compact_scan_block"(const compact_rows *rows, const compact_queries *queries,
                                              Py_ssize_t k, Py_ssize_t d0, Py_ssize_t width,
                                              scan_state *state)

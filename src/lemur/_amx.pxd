# cython: language_level=3
"""bfloat16 matrix products on AMX tiles (_amx.h)."""

from libc.stdint cimport int64_t, uint16_t


cdef extern from "_amx.h" nogil:
    enum:
        AMX_PANEL "LEMUR_PANEL"
        AMX_STEP_VALUES "LEMUR_STEP_VALUES"
        AMX_BLOCK_ROWS "LEMUR_AMX_BLOCK_ROWS"
        AMX_BLOCK_COLUMNS "LEMUR_AMX_BLOCK_COLUMNS"
    int amx_detect "lemur_amx_detect"()
    void amx_begin "lemur_amx_begin"()
    void amx_end "lemur_amx_end"()
    Py_ssize_t amx_steps "lemur_amx_steps"(Py_ssize_t depth)
    Py_ssize_t amx_panels "lemur_amx_panels"(Py_ssize_t size)
    void amx_pack_k_contiguous "lemur_amx_pack_k_contiguous"(const float *source, Py_ssize_t stride,
                                                            Py_ssize_t rows, Py_ssize_t depth, Py_ssize_t panel,
                                                            int vnni, uint16_t *out)
    void amx_pack_k_strided "lemur_amx_pack_k_strided"(const float *source, Py_ssize_t stride, Py_ssize_t size,
                                                      Py_ssize_t depth, Py_ssize_t step, int vnni, uint16_t *out)
    void amx_products "lemur_amx_products"(const uint16_t *a_packed, const uint16_t *b_packed, Py_ssize_t steps,
                                           Py_ssize_t m, Py_ssize_t n, Py_ssize_t block_row,
                                           Py_ssize_t block_column, float *buffer)
    void amx_store "lemur_amx_store"(const float *buffer, Py_ssize_t m, Py_ssize_t n, Py_ssize_t block_row,
                                     Py_ssize_t block_column, float *out, Py_ssize_t ldo, int accumulate)
    void amx_maxima "lemur_amx_maxima"(const float *buffer, Py_ssize_t m, Py_ssize_t n, Py_ssize_t block_row,
                                       Py_ssize_t block_column, const int64_t *row_group, float *out,
                                       Py_ssize_t ldo)
    void amx_column_maxima "lemur_amx_column_maxima"(const uint16_t *a_rows, Py_ssize_t rows, Py_ssize_t stride,
                                                     const uint16_t *b_packed, Py_ssize_t columns,
                                                     Py_ssize_t steps, int resume, const char *next,
                                                     Py_ssize_t next_bytes, float *c, float *maxima)
    void bf16_dot_column_maxima "lemur_bf16_dot_column_maxima"(const uint16_t *a_rows, Py_ssize_t rows,
                                                               Py_ssize_t stride, const uint16_t *b_packed,
                                                               Py_ssize_t columns, Py_ssize_t steps, int resume,
                                                               const char *next, Py_ssize_t next_bytes,
                                                               float *maxima)
    void amx_round_rows "lemur_amx_round_rows"(const float *values, Py_ssize_t rows, Py_ssize_t dim,
                                               Py_ssize_t stride, uint16_t *out, float *largest)

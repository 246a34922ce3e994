# cython: language_level=3
"""The rerank screen's int16 products on AVX512-VNNI (_screen_int16.h)."""

from libc.stdint cimport int16_t


cdef extern from "_screen_int16.h" nogil:
    enum:
        INT16_ROWS "LEMUR_INT16_ROWS"
    int int16_screen_compiled "lemur_int16_screen_compiled"()
    int int16_limit "lemur_int16_limit"(Py_ssize_t dim)
    float int16_codes "lemur_int16_codes"(const float *x, Py_ssize_t dim, Py_ssize_t stride, int limit,
                                          int16_t *codes, float *squares)
    void int16_round_rows "lemur_int16_round_rows"(const float *values, Py_ssize_t rows, Py_ssize_t dim,
                                                   Py_ssize_t stride, int limit, int16_t *out, float *scales,
                                                   float *largest)
    void int16_pack_panel "lemur_int16_pack_panel"(const int16_t *codes, Py_ssize_t stride, Py_ssize_t tokens,
                                                   Py_ssize_t steps, Py_ssize_t panel, int16_t *out)
    void int16_column_maxima "lemur_int16_column_maxima"(const int16_t *a_rows, const float *a_scales,
                                                         Py_ssize_t rows, Py_ssize_t stride,
                                                         const int16_t *b_packed, const float *b_scales,
                                                         Py_ssize_t columns, Py_ssize_t steps, int resume,
                                                         const char *next, Py_ssize_t next_bytes, float *maxima)

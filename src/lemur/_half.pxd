# cython: language_level=3
"""float16 values widened to float32 (_half.h)."""

from libc.stdint cimport uint16_t


cdef extern from "_half.h" nogil:
    float half_value "lemur_half_value"(uint16_t half)
    void half_to_float "lemur_half_to_float"(const uint16_t *values, float *out, Py_ssize_t n)

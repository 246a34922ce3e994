# cython: language_level=3
"""16-bit floats (_half.h): float16 widened to float32, float32 rounded to bfloat16."""

from libc.stdint cimport uint16_t


cdef extern from "_half.h" nogil:
    float half_value "lemur_half_value"(uint16_t half)
    void half_to_float "lemur_half_to_float"(const uint16_t *values, float *out, Py_ssize_t n)
    void round_bfloat16 "lemur_round_bfloat16"(float *values, Py_ssize_t n)
    uint16_t bfloat16_bits "lemur_bfloat16_bits"(float value)
    float bfloat16_value "lemur_bfloat16_value"(uint16_t bits)

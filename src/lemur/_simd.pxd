# cython: language_level=3
"""The portable SIMD vector of _simd.h, for the kernels and _vector_math.pxd."""

cdef extern from "_simd.h" nogil:
    ctypedef struct lemur_vector:
        pass
    enum:
        # floats per vector register (16 with AVX-512, 8 with AVX, else 4)
        VECTOR_FLOATS "LEMUR_VECTOR_FLOATS"
        # document tokens per register block of the MaxSim kernel, and query
        # tokens per transposed chunk
        DOC_ROWS "LEMUR_DOC_ROWS"
        QUERY_LANES "LEMUR_QUERY_LANES"
        # the register tile of the first-stage scoring kernel
        TILE_QUERIES "LEMUR_TILE_QUERIES"
        TILE_DOCS "LEMUR_TILE_DOCS"
        # vectors holding 16 lane-wise partial sums (_vector_math.LANES)
        PARTIAL_VECTORS "LEMUR_PARTIAL_VECTORS"
    lemur_vector vector_zero "lemur_vector_zero"()
    lemur_vector vector_broadcast "lemur_vector_broadcast"(float value)
    lemur_vector vector_load "lemur_vector_load"(const float *source)
    void vector_store "lemur_vector_store"(float *target, lemur_vector value)
    lemur_vector vector_add "lemur_vector_add"(lemur_vector a, lemur_vector b)
    lemur_vector vector_subtract "lemur_vector_subtract"(lemur_vector a, lemur_vector b)
    lemur_vector vector_scale "lemur_vector_scale"(lemur_vector a, float b)
    lemur_vector vector_fma "lemur_vector_fma"(lemur_vector accumulator, lemur_vector a, float b)
    lemur_vector vector_fma_lanes "lemur_vector_fma_lanes"(lemur_vector accumulator, lemur_vector a, lemur_vector b)
    lemur_vector vector_max "lemur_vector_max"(lemur_vector a, lemur_vector b)
    void prefetch "lemur_prefetch"(const void *address)

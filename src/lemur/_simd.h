/* A minimal portable SIMD vector of floats for the register-blocked kernels in
 * _kernels.pyx and the row reductions in _vector_math.pxd (declared for Cython
 * in _simd.pxd).
 *
 * GCC and Clang: their vector extensions, as wide as the instruction set the
 * file is compiled for (16 floats with AVX-512, 8 with AVX, 4 otherwise; the
 * compiler emits the matching instructions). Other compilers (MSVC): a struct
 * of 4 floats handled lane by lane.
 *
 * Register blocks, sized to the register file (32 zmm with AVX-512, else 16):
 * LEMUR_DOC_ROWS x LEMUR_QUERY_LANES: document tokens per block of the MaxSim
 *   kernel, and query tokens (transposed) per chunk: LEMUR_DOC_ROWS x
 *   (LEMUR_QUERY_LANES / LEMUR_VECTOR_FLOATS) accumulators (16 zmm, 12 ymm,
 *   12 xmm), so that each broadcast document value feeds two vectors.
 * LEMUR_TILE_QUERIES x LEMUR_TILE_DOCS: the tile of the first-stage scoring
 *   kernel, one accumulator per (query, document) plus one register per query
 *   and one for the document (24 + 5 zmm, 12 + 4 ymm, 8 + 3 xmm).
 */
#ifndef LEMUR_SIMD_H
#define LEMUR_SIMD_H

#include <string.h>

#if defined(__AVX512F__)
#define LEMUR_VECTOR_FLOATS 16
#define LEMUR_QUERY_LANES 32
#define LEMUR_DOC_ROWS 8
#define LEMUR_TILE_QUERIES 4
#define LEMUR_TILE_DOCS 6
#elif defined(__AVX__)
#define LEMUR_VECTOR_FLOATS 8
#define LEMUR_QUERY_LANES 16
#define LEMUR_DOC_ROWS 6
#define LEMUR_TILE_QUERIES 3
#define LEMUR_TILE_DOCS 4
#else
#define LEMUR_VECTOR_FLOATS 4
#define LEMUR_QUERY_LANES 16
#define LEMUR_DOC_ROWS 3
#define LEMUR_TILE_QUERIES 2
#define LEMUR_TILE_DOCS 4
#endif

/* vectors that hold the 16 lane-wise partial sums of the row reductions */
#define LEMUR_PARTIAL_VECTORS (16 / LEMUR_VECTOR_FLOATS)

#if defined(__GNUC__) || defined(__clang__)

typedef float lemur_vector __attribute__((vector_size(4 * LEMUR_VECTOR_FLOATS)));
typedef int lemur_vector_mask __attribute__((vector_size(4 * LEMUR_VECTOR_FLOATS)));

static inline lemur_vector lemur_vector_zero(void) { return (lemur_vector){0}; }

static inline lemur_vector lemur_vector_broadcast(float value) { return lemur_vector_zero() + value; }

static inline lemur_vector lemur_vector_add(lemur_vector a, lemur_vector b) { return a + b; }

static inline lemur_vector lemur_vector_subtract(lemur_vector a, lemur_vector b) { return a - b; }

static inline lemur_vector lemur_vector_scale(lemur_vector a, float b) { return a * b; }

static inline lemur_vector lemur_vector_load(const float *source)
{
    lemur_vector value;
    memcpy(&value, source, sizeof value);
    return value;
}

static inline void lemur_vector_store(float *target, lemur_vector value)
{
    memcpy(target, &value, sizeof value);
}

/* accumulator + a * b, with b broadcast to every lane (one FMA instruction) */
static inline lemur_vector lemur_vector_fma(lemur_vector accumulator, lemur_vector a, float b)
{
    return accumulator + a * b;
}

/* accumulator + a * b, lane by lane */
static inline lemur_vector lemur_vector_fma_lanes(lemur_vector accumulator, lemur_vector a, lemur_vector b)
{
    return accumulator + a * b;
}

#if defined(__clang__)
#define LEMUR_SWAP_LANES(value, ...) __builtin_shufflevector(value, value, __VA_ARGS__)
#define LEMUR_SHUFFLE2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define LEMUR_SWAP_LANES(value, ...) __builtin_shuffle(value, (lemur_vector_mask){__VA_ARGS__})
#define LEMUR_SHUFFLE2(a, b, ...) __builtin_shuffle(a, b, (lemur_vector_mask){__VA_ARGS__})
#endif

/* One stage of lemur_transpose: vectors i and i + t (i without bit t) trade
 * halves, lanes taken by the index lists LOW and HIGH over (a, b). */
#define LEMUR_TRANSPOSE_STAGE(t, LOW, HIGH)                 \
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)               \
        if (!(i & (t))) {                                   \
            a = rows[i];                                    \
            b = rows[i + (t)];                              \
            rows[i] = LEMUR_SHUFFLE2(a, b, LOW);            \
            rows[i + (t)] = LEMUR_SHUFFLE2(a, b, HIGH);     \
        }
#if LEMUR_VECTOR_FLOATS == 16
#define LEMUR_T8_LOW 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define LEMUR_T8_HIGH 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define LEMUR_T4_LOW 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define LEMUR_T4_HIGH 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define LEMUR_T2_LOW 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define LEMUR_T2_HIGH 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define LEMUR_T1_LOW 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define LEMUR_T1_HIGH 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31
#elif LEMUR_VECTOR_FLOATS == 8
#define LEMUR_T4_LOW 0, 1, 2, 3, 8, 9, 10, 11
#define LEMUR_T4_HIGH 4, 5, 6, 7, 12, 13, 14, 15
#define LEMUR_T2_LOW 0, 1, 8, 9, 4, 5, 12, 13
#define LEMUR_T2_HIGH 2, 3, 10, 11, 6, 7, 14, 15
#define LEMUR_T1_LOW 0, 8, 2, 10, 4, 12, 6, 14
#define LEMUR_T1_HIGH 1, 9, 3, 11, 5, 13, 7, 15
#else
#define LEMUR_T2_LOW 0, 1, 4, 5
#define LEMUR_T2_HIGH 2, 3, 6, 7
#define LEMUR_T1_LOW 0, 4, 2, 6
#define LEMUR_T1_HIGH 1, 5, 3, 7
#endif

/* rows[i][j] <- rows[j][i] for a square block of LEMUR_VECTOR_FLOATS vectors */
static inline void lemur_transpose(lemur_vector *rows)
{
    lemur_vector a, b;
    int i;
#if LEMUR_VECTOR_FLOATS == 16
    LEMUR_TRANSPOSE_STAGE(8, LEMUR_T8_LOW, LEMUR_T8_HIGH)
#endif
#if LEMUR_VECTOR_FLOATS >= 8
    LEMUR_TRANSPOSE_STAGE(4, LEMUR_T4_LOW, LEMUR_T4_HIGH)
#endif
    LEMUR_TRANSPOSE_STAGE(2, LEMUR_T2_LOW, LEMUR_T2_HIGH)
    LEMUR_TRANSPOSE_STAGE(1, LEMUR_T1_LOW, LEMUR_T1_HIGH)
}

/* the sum of the lanes, pairwise: lane i + lane i + w for w = half the width,
 * then a quarter, ... down to 1 (the lanes past w are don't-cares); one
 * shuffle and one add per level */
static inline float lemur_vector_sum(lemur_vector value)
{
#if LEMUR_VECTOR_FLOATS == 16
    value = value + LEMUR_SWAP_LANES(value, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    value = value + LEMUR_SWAP_LANES(value, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    value = value + LEMUR_SWAP_LANES(value, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    value = value + LEMUR_SWAP_LANES(value, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
#elif LEMUR_VECTOR_FLOATS == 8
    value = value + LEMUR_SWAP_LANES(value, 4, 5, 6, 7, 0, 1, 2, 3);
    value = value + LEMUR_SWAP_LANES(value, 2, 3, 0, 1, 6, 7, 4, 5);
    value = value + LEMUR_SWAP_LANES(value, 1, 0, 3, 2, 5, 4, 7, 6);
#else
    value = value + LEMUR_SWAP_LANES(value, 2, 3, 0, 1);
    value = value + LEMUR_SWAP_LANES(value, 1, 0, 3, 2);
#endif
    return value[0];
}

static inline lemur_vector lemur_vector_max(lemur_vector a, lemur_vector b)
{
    lemur_vector_mask a_larger = a > b;
    return (lemur_vector)(((lemur_vector_mask)a & a_larger) | ((lemur_vector_mask)b & ~a_larger));
}

/* a read prefetch with low temporal locality (PREFETCHT2 on x86): for the rerank's next document,
 * 200 candidates of one query, 5-8% faster than into L2 (T1) both from L3 and from memory */
static inline void lemur_prefetch(const void *address) { __builtin_prefetch(address, 0, 1); }

#else

typedef struct { float lane[LEMUR_VECTOR_FLOATS]; } lemur_vector;

static inline lemur_vector lemur_vector_zero(void)
{
    lemur_vector value;
    memset(&value, 0, sizeof value);
    return value;
}

static inline lemur_vector lemur_vector_broadcast(float value)
{
    lemur_vector result;
    int i;
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
        result.lane[i] = value;
    return result;
}

static inline lemur_vector lemur_vector_add(lemur_vector a, lemur_vector b)
{
    int i;
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
        a.lane[i] += b.lane[i];
    return a;
}

static inline lemur_vector lemur_vector_subtract(lemur_vector a, lemur_vector b)
{
    int i;
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
        a.lane[i] -= b.lane[i];
    return a;
}

static inline lemur_vector lemur_vector_scale(lemur_vector a, float b)
{
    int i;
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
        a.lane[i] *= b;
    return a;
}

static inline lemur_vector lemur_vector_load(const float *source)
{
    lemur_vector value;
    memcpy(value.lane, source, sizeof value);
    return value;
}

static inline void lemur_vector_store(float *target, lemur_vector value)
{
    memcpy(target, value.lane, sizeof value);
}

static inline lemur_vector lemur_vector_fma(lemur_vector accumulator, lemur_vector a, float b)
{
    int i;
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
        accumulator.lane[i] += a.lane[i] * b;
    return accumulator;
}

static inline lemur_vector lemur_vector_fma_lanes(lemur_vector accumulator, lemur_vector a, lemur_vector b)
{
    int i;
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
        accumulator.lane[i] += a.lane[i] * b.lane[i];
    return accumulator;
}

static inline float lemur_vector_sum(lemur_vector value)
{
    int width, i;
    for (width = LEMUR_VECTOR_FLOATS / 2; width > 0; width /= 2)
        for (i = 0; i < width; i++)
            value.lane[i] += value.lane[i + width];
    return value.lane[0];
}

static inline lemur_vector lemur_vector_max(lemur_vector a, lemur_vector b)
{
    int i;
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
        a.lane[i] = a.lane[i] > b.lane[i] ? a.lane[i] : b.lane[i];
    return a;
}

static inline void lemur_transpose(lemur_vector *rows)
{
    float swapped;
    int i, j;
    for (i = 0; i < LEMUR_VECTOR_FLOATS; i++)
        for (j = i + 1; j < LEMUR_VECTOR_FLOATS; j++) {
            swapped = rows[i].lane[j];
            rows[i].lane[j] = rows[j].lane[i];
            rows[j].lane[i] = swapped;
        }
}

static inline void lemur_prefetch(const void *address) { (void)address; }

#endif

#endif

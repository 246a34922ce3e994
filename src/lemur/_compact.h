/* The compact first stage's arithmetic (declared for Cython in _compact.pxd):
 * rows of W and queries' features encoded as bfloat16 or int8, approximate
 * scores from those codes, and lower and upper bounds on each pair's float32
 * score that certify which documents must be rescored exactly. The bound and
 * its proof are in lemur/first_stage/compact.py; this file computes it.
 *
 * Layout of the codes: lanes-packed blocks. Rows go in blocks of
 * LEMUR_COMPACT_BLOCK (64); a block stores its rows step by step, a step
 * being 4 bytes of each of its 64 rows (256 bytes): four int8 codes (each
 * + 128, unsigned), or two bfloat16 values. So one vector of the scan holds
 * one step of 16 (zmm), 8 (ymm) or 4 (xmm) consecutive rows, and every lane
 * of an accumulator is one row's dot product: no horizontal sums.
 *   codes: uint8 (num_blocks, steps, LEMUR_COMPACT_BLOCK * 4); steps =
 *          ceil(h / 4) (int8) or ceil(h / 2) (bfloat16); padding is code 0
 *   row params: float32 (num_blocks, LEMUR_ROW_PARAMS + m, LEMUR_COMPACT_BLOCK):
 *          one line per row parameter (lemur_row_param), then the m
 *          projections; lanes past num_docs are 0
 *   basis: float32 (m, h), the exact directions
 *   query codes: (num_queries, steps * step bytes): int8 codes (4 a step), or
 *          bfloat16 bits (VDPBF16PS, 2 a step), or float32 values (widened
 *          rows, 2 a step), zero-padded; query params: float32 (num_queries,
 *          LEMUR_QUERY_PARAMS + m), the m coefficients last.
 *
 * Dot products: int8 with AVX512-VNNI's VPDPBUSD (the query's 4 codes of a
 * step broadcast to every lane) or AVX-VNNI's where the CPU has them, else
 * AVX2's VPMADDUBSW (with query codes of half the range:
 * lemur_int8_query_limit), else plain vector code; exact int32 sums.
 * bfloat16 with AVX512_BF16's VDPBF16PS on AMD processors, where it runs at twice the rate of float32
 * multiply-adds; elsewhere, Intel's without AMX included (where it runs at
 * half of it), the rows' values widened to float32 (a shift) and
 * multiply-added with the query's float32 values, in vector code for every
 * instruction set. Where the CPU has AMX (Intel), rows of whole tiles
 * (int8: h a multiple of 64; bfloat16: of 32) take tile products (TDPBSUD,
 * TDPBF16PS) for batches of 8 queries and more, VPDPBUSD / VDPBF16PS for
 * smaller ones: the query codes' format depends on the CPU and h, not on
 * the batch.
 */
#ifndef LEMUR_COMPACT_H
#define LEMUR_COMPACT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_amx.h"

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(_M_X64))
#include <immintrin.h>
#define LEMUR_X86_INTRINSICS 1
#endif
#if defined(__GNUC__) || defined(__clang__)
#define LEMUR_VECTOR_EXTENSIONS 1
#endif

/* rows per block of the codes, of the row parameters and of the scan */
#define LEMUR_COMPACT_BLOCK 64
/* bytes of one row in one step */
#define LEMUR_STEP_BYTES 4
/* the most exact directions an index may have */
#define LEMUR_MAX_DIRECTIONS 64
/* float32's unit roundoff */
#define LEMUR_UNIT 0x1p-24
/* every bound term is computed in float64 and stored multiplied by this
 * before its rounding to float32, so that the stored value is not below it */
#define LEMUR_ROUND_UP (1.0 + 0x1p-20)

/* row parameters, in order; the projections follow */
enum lemur_row_param {
    LEMUR_ROW_NORM = 0,      /* ||w||, the float32 row's norm */
    LEMUR_ROW_PROJECTION,    /* ||p||, the norm of the stored projections p */
    LEMUR_ROW_RESIDUAL,      /* ||w - w^||, w^ the value the codes stand for */
    LEMUR_ROW_COMPACT,       /* ||w^|| */
    LEMUR_ROW_SCALE,         /* int8: a, w^ = a * codes; bfloat16: 1 */
    LEMUR_ROW_PARAMS
};

/* query parameters, in order; the m coefficients follow */
enum lemur_query_param {
    LEMUR_QUERY_NORM = 0,       /* the bound's factor of ||w|| */
    LEMUR_QUERY_PROJECTION,     /* of ||p|| */
    LEMUR_QUERY_RESIDUAL,       /* of ||w - w^||: ||f_perp|| */
    LEMUR_QUERY_COMPACT,        /* of ||w^|| */
    LEMUR_QUERY_SCALE,          /* int8: b, f_perp ~ b * codes; bfloat16: 1 */
    LEMUR_QUERY_CODE_SUM,       /* int8: the sum of the codes (exact in float32), to undo the rows' + 128 */
    LEMUR_QUERY_PARAMS
};

enum lemur_compact_kind { LEMUR_INT8 = 0, LEMUR_BFLOAT16 = 1 };

/* ---- which instructions the CPU has ------------------------------------- */

typedef struct {
    int vnni512;     /* AVX512-VNNI: used */
    int avx_vnni;    /* AVX-VNNI (VEX): used by the AVX2 variant */
    int avx2;        /* AVX2 (this variant is built for it): VPMADDUBSW where there is no VNNI */
    int bf16_512;    /* AVX512_BF16 present */
    int bf16_dot;    /* ... and used (AMD processors) */
    int amx_int8;    /* AMX-INT8 tiles, granted by Linux: used by the AVX-512 variant */
    int amx_bf16;    /* AMX-BF16 tiles, likewise */
} lemur_compact_cpu;

/* What this kernel variant may use, if the CPU has it: the AVX-512 variant
 * the 512-bit instructions (and AVX2), the AVX2 one AVX2 and AVX-VNNI, the
 * others vector code (so that LEMUR_KERNELS=baseline tests it on any
 * machine). */
static inline lemur_compact_cpu lemur_compact_detect(void)
{
    lemur_compact_cpu cpu = {0, 0, 0, 0, 0, 0, 0};
#if defined(LEMUR_X86_INTRINSICS) && (defined(__AVX512F__) || defined(__AVX2__))
    __builtin_cpu_init();
    cpu.avx2 = 1;
#if defined(__AVX512F__)
    cpu.vnni512 = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
    cpu.bf16_512 = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
    cpu.bf16_dot = cpu.bf16_512 && __builtin_cpu_is("amd");
    cpu.amx_int8 = lemur_amx_usable(1);
    cpu.amx_bf16 = lemur_amx_usable(0);
#else
    cpu.avx_vnni = __builtin_cpu_supports("avxvnni");
#endif
#endif
    return cpu;
}

/* 1 where this thread's floating point runs as the bounds of the compact
 * first stage and of the rerank's screen assume: rounding to nearest, and
 * gradual underflow (neither flush-to-zero nor denormals-are-zero, which a
 * library built with -ffast-math may have set for the process); 0
 * otherwise, and the callers then score in float32 alone. (MSVC, and CPUs
 * other than x86-64 and arm64: 1, nothing to read.) */
static inline int lemur_float_environment_default(void)
{
#if defined(LEMUR_X86_INTRINSICS)
    return (_mm_getcsr() & 0xE040u) == 0;   /* FTZ (bit 15), rounding (13-14), DAZ (6) */
#elif (defined(__GNUC__) || defined(__clang__)) && defined(__aarch64__)
    uint64_t control;
    __asm__ volatile("mrs %0, fpcr" : "=r"(control));
    return (control & 0x01C00000u) == 0;     /* FZ (bit 24), rounding (22-23) */
#else
    return 1;
#endif
}

/* The compact rows, their parameters, and what the CPU can do with them. */
typedef struct {
    int kind;                 /* lemur_compact_kind */
    const uint8_t *codes;     /* (num_blocks, steps, LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES) */
    const float *params;      /* (num_blocks, LEMUR_ROW_PARAMS + m, LEMUR_COMPACT_BLOCK) */
    ptrdiff_t num_docs, h, m, steps;
    lemur_compact_cpu cpu;
} lemur_compact_rows;

/* A batch of queries as the scan takes them. */
typedef struct {
    const uint8_t *codes;     /* (num_queries, steps * lemur_query_step_bytes) */
    const float *params;      /* (num_queries, LEMUR_QUERY_PARAMS + m) */
    ptrdiff_t num_queries;
} lemur_compact_queries;

static inline ptrdiff_t lemur_compact_steps(int kind, ptrdiff_t h)
{
    return kind == LEMUR_INT8 ? (h + 3) / 4 : (h + 1) / 2;
}

/* 1 when bfloat16 rows of `steps` steps are multiplied by the query's
 * bfloat16 values (VDPBF16PS on AMD; on Intel with AMX, rows of whole tiles:
 * AMX-BF16 for batches of 8 queries and more, VDPBF16PS for the smaller
 * ones, which are bound by reading the rows), 0 when widened to meet its
 * float32 ones */
static inline int lemur_bf16_query_rounded(lemur_compact_cpu cpu, ptrdiff_t steps)
{
    return cpu.bf16_dot || (cpu.amx_bf16 && steps % 16 == 0);
}

/* bytes of one query's codes per step, for rows of `steps` steps */
static inline ptrdiff_t lemur_query_step_bytes(int kind, ptrdiff_t steps, lemur_compact_cpu cpu)
{
    return kind == LEMUR_BFLOAT16 && !lemur_bf16_query_rounded(cpu, steps) ? 8 : 4;
}

/* The largest magnitude of a query's int8 codes: 64 where the int8 kernel
 * is AVX2's VPMADDUBSW (no VNNI: its sums of two products saturate at 16
 * bits, and 2 * 255 * 64 < 2^15), else 127 */
static inline int lemur_int8_query_limit(lemur_compact_cpu cpu)
{
    return cpu.avx2 && !cpu.vnni512 && !cpu.avx_vnni && !cpu.amx_int8 ? 64 : 127;
}

/* ---- rounding -------------------------------------------------------------- */

/* gamma_n = n u / (1 - n u): a sum of n rounded operations is off by at most
 * gamma_n times the sum of the magnitudes of its terms */
static inline double lemur_gamma(double n) { return n * LEMUR_UNIT / (1.0 - n * LEMUR_UNIT); }

/* the nearest float32 at or above a non-negative float64 (a stored bound term) */
static inline float lemur_rounded_up(double value) { return (float)(value * LEMUR_ROUND_UP); }

/* The most rounded operations on the way of one product into a compact dot
 * product X of rows with `steps` steps (compact.py's d_X): each lane is one
 * row's chain over the steps, two values a step; VDPBF16PS rounds twice a
 * step, widened multiply-adds at most twice a value (product and sum), and
 * AMX-BF16 is given the same (its order of additions is the
 * implementation's; the SDM's is VDPBF16PS's). int8 sums are exact. */
static inline double lemur_compact_sum_depth(const lemur_compact_rows *rows)
{
    if (rows->kind == LEMUR_BFLOAT16 && rows->cpu.bf16_dot && !rows->cpu.amx_bf16)
        return 2.0 * (double)rows->steps + 2.0;
    return 4.0 * (double)rows->steps + 2.0;
}

/* ---- encoding ---------------------------------------------------------- *
 * Sums here are float64, kept in LEMUR_PARTIALS interleaved partial sums (so
 * that they vectorise); the bound's margins cover any order of them. */

#define LEMUR_PARTIALS 8

static inline double lemur_partials_total(const double *partial)
{
    double total = 0;
    int j;
    for (j = 0; j < LEMUR_PARTIALS; j++)
        total += partial[j];
    return total;
}

/* sum_i a[i] b[i] in float64, in 32 partial sums (four vectors of eight:
 * enough independent chains to keep the multiply-adds busy) */
static inline double lemur_dot64(const float *a, const float *b, ptrdiff_t n)
{
    double partial[32] = {0}, total = 0;
    ptrdiff_t i, full = n / 32 * 32;
    int j;
    for (i = 0; i < full; i += 32)
        for (j = 0; j < 32; j++)
            partial[j] += (double)a[i + j] * (double)b[i + j];
    for (i = full; i < n; i++)
        partial[0] += (double)a[i] * (double)b[i];
    for (j = 0; j < 32; j++)
        total += partial[j];
    return total;
}

/* max_i |a[i]| */
static inline float lemur_largest_magnitude(const float *a, ptrdiff_t n)
{
    float lanes[16] = {0}, best = 0;
    ptrdiff_t i, full = n / 16 * 16;
    int j;
    for (i = 0; i < full; i += 16)
        for (j = 0; j < 16; j++)
            lanes[j] = fabsf(a[i + j]) > lanes[j] ? fabsf(a[i + j]) : lanes[j];
    for (i = full; i < n; i++)
        lanes[0] = fabsf(a[i]) > lanes[0] ? fabsf(a[i]) : lanes[0];
    for (j = 0; j < 16; j++)
        best = lanes[j] > best ? lanes[j] : best;
    return best;
}

/* The int8 codes of values x (n floats): scale = max|x| / limit (float32;
 * the smallest positive float where that underflows, 1 for all zeros),
 * codes = round(x / scale) in [-limit, limit] (limit <= 127) plus `shift`
 * (0, or 128 for unsigned codes). Returns the scale; residual and compact
 * receive the float64 sums of (x - scale * code)^2 and (scale * code)^2, and
 * code_sum the codes' sum. */
static inline float lemur_int8_codes(const float *x, ptrdiff_t n, int limit, int shift, void *codes,
                                     double *residual, double *compact, double *code_sum)
{
    double partial_residual[LEMUR_PARTIALS] = {0}, partial_compact[LEMUR_PARTIALS] = {0};
    double partial_codes[LEMUR_PARTIALS] = {0};
    float largest = lemur_largest_magnitude(x, n), scale, inverse;
    ptrdiff_t i0, i, full = n / LEMUR_PARTIALS * LEMUR_PARTIALS;
    int j;
    scale = largest > 0 ? (float)((double)largest / limit) : 1.0f;
    if (!(scale > 0))  /* largest / limit underflowed */
        scale = 0x1p-149f;
    /* any code is exact for the bound (its error is measured); the nearest
     * one, near enough, from a product */
    inverse = 1.0f / scale;
    for (i0 = 0; i0 < n; i0 += LEMUR_PARTIALS)
        for (j = 0; j < LEMUR_PARTIALS; j++) {
            float code;
            double value, error;
            i = i0 + j;
            if (i0 >= full && i >= n)
                break;
            code = nearbyintf(x[i] * inverse);
            code = code > limit ? (float)limit : code < -limit ? (float)-limit : code;
            if (shift)
                ((uint8_t *)codes)[i] = (uint8_t)(int)(code + (float)shift);
            else
                ((int8_t *)codes)[i] = (int8_t)code;
            value = (double)scale * (double)code;
            error = (double)x[i] - value;
            partial_codes[j] += (double)code;
            partial_residual[j] += error * error;
            partial_compact[j] += value * value;
        }
    *residual = lemur_partials_total(partial_residual);
    *compact = lemur_partials_total(partial_compact);
    *code_sum = lemur_partials_total(partial_codes);
    return scale;
}

/* The bfloat16 bits of values x (n floats); residual and compact as above. */
static inline void lemur_bfloat16_codes(const float *x, ptrdiff_t n, uint16_t *codes, double *residual,
                                        double *compact)
{
    double partial_residual[LEMUR_PARTIALS] = {0}, partial_compact[LEMUR_PARTIALS] = {0};
    ptrdiff_t i0, i;
    int j;
    for (i0 = 0; i0 < n; i0 += LEMUR_PARTIALS)
        for (j = 0; j < LEMUR_PARTIALS; j++) {
            double value;
            i = i0 + j;
            if (i >= n)
                break;
            codes[i] = lemur_bfloat16_bits(x[i]);
            value = (double)lemur_bfloat16_value(codes[i]);
            partial_residual[j] += ((double)x[i] - value) * ((double)x[i] - value);
            partial_compact[j] += value * value;
        }
    *residual = lemur_partials_total(partial_residual);
    *compact = lemur_partials_total(partial_compact);
}

/* One row w (h floats) of W, lane `lane` of its block: its codes into the
 * block's codes (block_codes: steps x LEMUR_COMPACT_BLOCK x 4 bytes) and
 * its parameters into the block's (block_params: (LEMUR_ROW_PARAMS + m) x
 * LEMUR_COMPACT_BLOCK). work: h floats of scratch. */
static inline void lemur_compact_encode_row(int kind, const float *w, ptrdiff_t h, const float *basis,
                                            ptrdiff_t m, uint8_t *block_codes, float *block_params,
                                            ptrdiff_t lane, uint8_t *work)
{
    double projection = 0, residual, compact, code_sum = 0;
    float scale = 1, *params = block_params + lane;
    ptrdiff_t k, steps = lemur_compact_steps(kind, h), s, per_step = kind == LEMUR_INT8 ? 4 : 2;
    ptrdiff_t code_bytes = kind == LEMUR_INT8 ? 1 : 2;
    for (k = 0; k < m; k++) {
        float stored = (float)lemur_dot64(basis + k * h, w, h);
        params[(LEMUR_ROW_PARAMS + k) * LEMUR_COMPACT_BLOCK] = stored;
        projection += (double)stored * (double)stored;
    }
    memset(work, kind == LEMUR_INT8 ? 128 : 0, (size_t)(steps * 4));
    if (kind == LEMUR_INT8)
        scale = lemur_int8_codes(w, h, 127, 128, work, &residual, &compact, &code_sum);
    else
        lemur_bfloat16_codes(w, h, (uint16_t *)work, &residual, &compact);
    for (s = 0; s < steps; s++)
        memcpy(block_codes + (s * LEMUR_COMPACT_BLOCK + lane) * LEMUR_STEP_BYTES,
               work + s * per_step * code_bytes, LEMUR_STEP_BYTES);
    params[LEMUR_ROW_NORM * LEMUR_COMPACT_BLOCK] = lemur_rounded_up(sqrt(lemur_dot64(w, w, h)));
    params[LEMUR_ROW_PROJECTION * LEMUR_COMPACT_BLOCK] = lemur_rounded_up(sqrt(projection));
    params[LEMUR_ROW_RESIDUAL * LEMUR_COMPACT_BLOCK] = lemur_rounded_up(sqrt(residual));
    params[LEMUR_ROW_COMPACT * LEMUR_COMPACT_BLOCK] = lemur_rounded_up(sqrt(compact));
    params[LEMUR_ROW_SCALE * LEMUR_COMPACT_BLOCK] = scale;
}

/* One query's features f (h floats): its codes (steps * step bytes,
 * zero-padded) and parameters (the bound's factors, compact.py).
 * score_depth: the rounded operations on the way of a product into a
 * float32 score (_tiles.h); exact, perp: h doubles and h floats of scratch.
 * The basis's rows must have norms of at most 2 (they are orthonormal). */
static inline void lemur_compact_encode_query(const lemur_compact_rows *rows, const float *basis,
                                              double score_depth, const float *f, uint8_t *codes,
                                              float *params, double *exact, float *perp)
{
    ptrdiff_t h = rows->h, m = rows->m, i, k;
    double c_norm = 0, c_sum = 0, f_norm, perp_norm, delta, rounded_norm, code_sum, split_error;
    double partial_split[LEMUR_PARTIALS] = {0};
    float *coefficients = params + LEMUR_QUERY_PARAMS;
    for (k = 0; k < m; k++) {
        coefficients[k] = (float)lemur_dot64(basis + k * h, f, h);
        c_norm += (double)coefficients[k] * (double)coefficients[k];
        c_sum += fabs((double)coefficients[k]);
    }
    /* f_perp = fl32(f - g), g = sum_k c_k v_k, in float64 element by element */
    for (i = 0; i < h; i++)
        exact[i] = (double)f[i];
    for (k = 0; k < m; k++)
        for (i = 0; i < h; i++)
            exact[i] -= (double)coefficients[k] * (double)basis[k * h + i];
    for (i = 0; i < h; i++) {
        perp[i] = (float)exact[i];
        exact[i] -= (double)perp[i];  /* the split's error f - g - f_perp, exactly */
    }
    for (i = 0; i < h; i++)
        partial_split[i & (LEMUR_PARTIALS - 1)] += exact[i] * exact[i];
    f_norm = sqrt(lemur_dot64(f, f, h));
    c_norm = sqrt(c_norm);
    perp_norm = sqrt(lemur_dot64(perp, perp, h));
    /* plus the float64 roundings of g and f - g, with basis rows of norm <= 2 */
    split_error = sqrt(lemur_partials_total(partial_split)) + 0x1p-40 * (f_norm + 2 * c_sum);
    memset(codes, 0, (size_t)(rows->steps * lemur_query_step_bytes(rows->kind, rows->steps, rows->cpu)));
    params[LEMUR_QUERY_CODE_SUM] = 0;
    params[LEMUR_QUERY_SCALE] = 1;
    if (rows->kind == LEMUR_INT8) {
        params[LEMUR_QUERY_SCALE] = lemur_int8_codes(perp, h, lemur_int8_query_limit(rows->cpu), 0, codes,
                                                     &delta, &rounded_norm, &code_sum);
        params[LEMUR_QUERY_CODE_SUM] = (float)code_sum;
        delta = sqrt(delta);
    } else if (lemur_bf16_query_rounded(rows->cpu, rows->steps)) {
        lemur_bfloat16_codes(perp, h, (uint16_t *)codes, &delta, &rounded_norm);
        delta = sqrt(delta) + lemur_gamma(lemur_compact_sum_depth(rows)) * sqrt(rounded_norm);
    } else {
        /* the rows widened: the query's own float32 values, no rounding of them */
        memcpy(codes, perp, (size_t)h * sizeof(float));
        delta = lemur_gamma(lemur_compact_sum_depth(rows)) * perp_norm;
    }
    params[LEMUR_QUERY_NORM] = lemur_rounded_up(lemur_gamma(score_depth) * f_norm + split_error
                                                + 2 * LEMUR_UNIT * c_norm);
    params[LEMUR_QUERY_PROJECTION] = lemur_rounded_up((2 * LEMUR_UNIT + lemur_gamma((double)m + 2)) * c_norm);
    params[LEMUR_QUERY_RESIDUAL] = lemur_rounded_up(perp_norm);
    params[LEMUR_QUERY_COMPACT] = lemur_rounded_up(delta);
}

/* ---- dot products of a tile of queries with a block's rows ------------- *
 * out[q * LEMUR_COMPACT_BLOCK + r] for the tile's NQ queries and the block's
 * 64 rows: int32 for int8, float32 for bfloat16. Each instruction set's tile
 * is one body for a constant NQ (its accumulators stay in registers),
 * instantiated for every NQ by a switch. */

#define LEMUR_NQ_SWITCH(NQ_MAX, BODY, ...)                        \
    switch (num_queries) {                                        \
    case 1: BODY(1, __VA_ARGS__); return;                         \
    case 2: if (NQ_MAX >= 2) { BODY(2, __VA_ARGS__); } return;    \
    case 3: if (NQ_MAX >= 3) { BODY(3, __VA_ARGS__); } return;    \
    case 4: if (NQ_MAX >= 4) { BODY(4, __VA_ARGS__); } return;    \
    case 5: if (NQ_MAX >= 5) { BODY(5, __VA_ARGS__); } return;    \
    case 6: if (NQ_MAX >= 6) { BODY(6, __VA_ARGS__); } return;    \
    default: return;                                              \
    }

#if defined(LEMUR_VECTOR_EXTENSIONS)
/* the widest vectors this variant has */
#if defined(__AVX512F__)
#define LEMUR_LANES 16
#define LEMUR_TILE_NQ 4
#elif defined(__AVX__)
#define LEMUR_LANES 8
#define LEMUR_TILE_NQ 2
#else
#define LEMUR_LANES 4
#define LEMUR_TILE_NQ 2
#endif
typedef float lemur_fvec __attribute__((vector_size(4 * LEMUR_LANES)));
typedef uint32_t lemur_uvec __attribute__((vector_size(4 * LEMUR_LANES)));
typedef int32_t lemur_ivec __attribute__((vector_size(4 * LEMUR_LANES)));
/* vectors per tile: a single query takes the block's whole width at once
 * (up to 8 vectors: 64 rows with AVX2, 32 with SSE), so that each step reads
 * its 256 bytes in one stretch and the scan streams the codes in order; a
 * tile of more queries takes 4 vectors (4 x LEMUR_LANES rows) a part, the
 * block already in L2 after its first tile. On Zen 3 (AVX2), half-block
 * parts made a single query's bfloat16 scan read each step's 256 bytes in
 * two passes over the 256 KB block and run at 10 GB/s. */
#define LEMUR_TILE_VECTORS(NQ)                                                                     \
    ((NQ) == 1 ? (LEMUR_COMPACT_BLOCK / LEMUR_LANES < 8 ? LEMUR_COMPACT_BLOCK / LEMUR_LANES : 8) : 4)

static inline lemur_uvec lemur_load_uvec(const uint8_t *source)
{
    lemur_uvec value;
    memcpy(&value, source, sizeof value);
    return value;
}

/* bfloat16, rows widened: per step, a lane's two values (low and high half
 * of its 32 bits) times the query's two float32 values */
#define LEMUR_WIDEN_TILE(NQ, rows, queries, q0, out)                                               \
    do {                                                                                           \
        const float *fq_[NQ];                                                                      \
        enum { V_ = LEMUR_TILE_VECTORS(NQ) };                                                      \
        ptrdiff_t part_, s_;                                                                       \
        int q_, v_;                                                                                \
        for (q_ = 0; q_ < NQ; q_++)                                                                \
            fq_[q_] = (const float *)((queries)->codes + ((q0) + q_) * (rows)->steps * 8);         \
        for (part_ = 0; part_ < LEMUR_COMPACT_BLOCK; part_ += V_ * LEMUR_LANES) {                  \
            lemur_fvec acc_[NQ][V_];                                                               \
            const uint8_t *at_ = block + part_ * LEMUR_STEP_BYTES;                                 \
            _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                    \
                _Pragma("GCC unroll 8") for (v_ = 0; v_ < V_; v_++)                                \
                    acc_[q_][v_] = (lemur_fvec){0};                                                \
            for (s_ = 0; s_ < (rows)->steps; s_++, at_ += LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES) { \
                _Pragma("GCC unroll 8") for (v_ = 0; v_ < V_; v_++) {                              \
                    lemur_uvec x_ = lemur_load_uvec(at_ + v_ * LEMUR_LANES * LEMUR_STEP_BYTES);    \
                    lemur_fvec even_ = (lemur_fvec)(x_ << 16);                                     \
                    lemur_fvec odd_ = (lemur_fvec)(x_ & 0xFFFF0000u);                              \
                    _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++) {                          \
                        acc_[q_][v_] += even_ * fq_[q_][2 * s_];                                   \
                        acc_[q_][v_] += odd_ * fq_[q_][2 * s_ + 1];                                \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
            for (q_ = 0; q_ < NQ; q_++)                                                            \
                for (v_ = 0; v_ < V_; v_++)                                                        \
                    memcpy((float *)(out) + q_ * LEMUR_COMPACT_BLOCK + part_ + v_ * LEMUR_LANES,   \
                           &acc_[q_][v_], sizeof acc_[q_][v_]);                                    \
        }                                                                                          \
    } while (0)

static void lemur_bf16_widen_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                   const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    LEMUR_NQ_SWITCH(LEMUR_TILE_NQ, LEMUR_WIDEN_TILE, rows, queries, q0, out)
}

/* int8 in vector code: a lane's four unsigned codes times the query's four
 * signed codes, exact in int32 */
#define LEMUR_INT8_VECTOR_TILE(NQ, rows, queries, q0, out)                                         \
    do {                                                                                           \
        const int8_t *cq_[NQ];                                                                     \
        enum { V_ = LEMUR_TILE_VECTORS(NQ) };                                                      \
        ptrdiff_t part_, s_;                                                                       \
        int q_, v_;                                                                                \
        for (q_ = 0; q_ < NQ; q_++)                                                                \
            cq_[q_] = (const int8_t *)((queries)->codes + ((q0) + q_) * (rows)->steps * 4);        \
        for (part_ = 0; part_ < LEMUR_COMPACT_BLOCK; part_ += V_ * LEMUR_LANES) {                  \
            lemur_ivec acc_[NQ][V_];                                                               \
            const uint8_t *at_ = block + part_ * LEMUR_STEP_BYTES;                                 \
            for (q_ = 0; q_ < NQ; q_++)                                                            \
                for (v_ = 0; v_ < V_; v_++)                                                        \
                    acc_[q_][v_] = (lemur_ivec){0};                                                \
            for (s_ = 0; s_ < (rows)->steps; s_++, at_ += LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES) { \
                _Pragma("GCC unroll 8") for (v_ = 0; v_ < V_; v_++) {                              \
                    lemur_uvec x_ = lemur_load_uvec(at_ + v_ * LEMUR_LANES * LEMUR_STEP_BYTES);    \
                    lemur_ivec b0_ = (lemur_ivec)(x_ & 255u), b1_ = (lemur_ivec)((x_ >> 8) & 255u); \
                    lemur_ivec b2_ = (lemur_ivec)((x_ >> 16) & 255u), b3_ = (lemur_ivec)(x_ >> 24); \
                    _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                            \
                        acc_[q_][v_] += b0_ * (int32_t)cq_[q_][4 * s_] + b1_ * (int32_t)cq_[q_][4 * s_ + 1] \
                                      + b2_ * (int32_t)cq_[q_][4 * s_ + 2] + b3_ * (int32_t)cq_[q_][4 * s_ + 3]; \
                }                                                                                  \
            }                                                                                      \
            for (q_ = 0; q_ < NQ; q_++)                                                            \
                for (v_ = 0; v_ < V_; v_++)                                                        \
                    memcpy((int32_t *)(out) + q_ * LEMUR_COMPACT_BLOCK + part_ + v_ * LEMUR_LANES, \
                           &acc_[q_][v_], sizeof acc_[q_][v_]);                                    \
        }                                                                                          \
    } while (0)

static void lemur_int8_vector_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                    const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    LEMUR_NQ_SWITCH(LEMUR_TILE_NQ, LEMUR_INT8_VECTOR_TILE, rows, queries, q0, out)
}
#define LEMUR_PLAIN_NQ LEMUR_TILE_NQ

#else /* no vector extensions (MSVC): plain loops */
#define LEMUR_PLAIN_NQ 1

static void lemur_bf16_widen_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                   const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    const float *fq = (const float *)(queries->codes + q0 * rows->steps * 8);
    float *sums = (float *)out;
    ptrdiff_t s, r;
    (void)num_queries;
    for (r = 0; r < LEMUR_COMPACT_BLOCK; r++)
        sums[r] = 0;
    for (s = 0; s < rows->steps; s++)
        for (r = 0; r < LEMUR_COMPACT_BLOCK; r++) {
            uint16_t pair[2];
            memcpy(pair, block + (s * LEMUR_COMPACT_BLOCK + r) * LEMUR_STEP_BYTES, 4);
            sums[r] += lemur_bfloat16_value(pair[0]) * fq[2 * s];
            sums[r] += lemur_bfloat16_value(pair[1]) * fq[2 * s + 1];
        }
}

static void lemur_int8_vector_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                    const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    const int8_t *cq = (const int8_t *)(queries->codes + q0 * rows->steps * 4);
    int32_t *sums = (int32_t *)out;
    ptrdiff_t s, r;
    int b;
    (void)num_queries;
    for (r = 0; r < LEMUR_COMPACT_BLOCK; r++)
        sums[r] = 0;
    for (s = 0; s < rows->steps; s++)
        for (r = 0; r < LEMUR_COMPACT_BLOCK; r++)
            for (b = 0; b < 4; b++)
                sums[r] += (int32_t)block[(s * LEMUR_COMPACT_BLOCK + r) * LEMUR_STEP_BYTES + b]
                           * (int32_t)cq[4 * s + b];
}
#endif /* LEMUR_VECTOR_EXTENSIONS */

#if defined(LEMUR_X86_INTRINSICS)

/* AVX512-VNNI: NQ queries x the block's four vectors of 16 rows; each step
 * one VPDPBUSD per pair, the query's four codes broadcast */
#define LEMUR_VNNI512_TILE(NQ, rows, queries, q0, out)                                             \
    do {                                                                                           \
        __m512i acc_[NQ][4];                                                                       \
        const int32_t *cq_[NQ];                                                                    \
        const uint8_t *at_ = block;                                                                \
        ptrdiff_t s_;                                                                              \
        int q_, v_;                                                                                \
        for (q_ = 0; q_ < NQ; q_++)                                                                \
            cq_[q_] = (const int32_t *)((queries)->codes + ((q0) + q_) * (rows)->steps * 4);        \
        _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                        \
            _Pragma("GCC unroll 4") for (v_ = 0; v_ < 4; v_++)                                     \
                acc_[q_][v_] = _mm512_setzero_si512();                                             \
        for (s_ = 0; s_ < (rows)->steps; s_++, at_ += LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES) {     \
            __m512i r0_ = _mm512_loadu_si512((const void *)at_);                                   \
            __m512i r1_ = _mm512_loadu_si512((const void *)(at_ + 64));                            \
            __m512i r2_ = _mm512_loadu_si512((const void *)(at_ + 128));                           \
            __m512i r3_ = _mm512_loadu_si512((const void *)(at_ + 192));                           \
            _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++) {                                  \
                __m512i b_ = _mm512_set1_epi32(cq_[q_][s_]);                                       \
                acc_[q_][0] = _mm512_dpbusd_epi32(acc_[q_][0], r0_, b_);                           \
                acc_[q_][1] = _mm512_dpbusd_epi32(acc_[q_][1], r1_, b_);                           \
                acc_[q_][2] = _mm512_dpbusd_epi32(acc_[q_][2], r2_, b_);                           \
                acc_[q_][3] = _mm512_dpbusd_epi32(acc_[q_][3], r3_, b_);                           \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                        \
            _Pragma("GCC unroll 4") for (v_ = 0; v_ < 4; v_++)                                     \
                _mm512_storeu_si512((void *)((int32_t *)(out) + q_ * LEMUR_COMPACT_BLOCK + 16 * v_), \
                                    acc_[q_][v_]);                                                 \
    } while (0)

__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void lemur_int8_vnni512_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                     const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    LEMUR_NQ_SWITCH(6, LEMUR_VNNI512_TILE, rows, queries, q0, out)
}

/* AVX-VNNI (256-bit, VEX): NQ queries x four vectors of 8 rows, the block in two halves */
#define LEMUR_AVX_VNNI_TILE(NQ, rows, queries, q0, out)                                            \
    do {                                                                                           \
        const int32_t *cq_[NQ];                                                                    \
        ptrdiff_t half_, s_;                                                                       \
        int q_, v_;                                                                                \
        for (q_ = 0; q_ < NQ; q_++)                                                                \
            cq_[q_] = (const int32_t *)((queries)->codes + ((q0) + q_) * (rows)->steps * 4);        \
        for (half_ = 0; half_ < 2; half_++) {                                                      \
            __m256i acc_[NQ][4];                                                                   \
            const uint8_t *at_ = block + half_ * 128;                                              \
            _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                    \
                _Pragma("GCC unroll 4") for (v_ = 0; v_ < 4; v_++)                                 \
                    acc_[q_][v_] = _mm256_setzero_si256();                                         \
            for (s_ = 0; s_ < (rows)->steps; s_++, at_ += LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES) { \
                __m256i r0_ = _mm256_loadu_si256((const __m256i *)at_);                            \
                __m256i r1_ = _mm256_loadu_si256((const __m256i *)(at_ + 32));                     \
                __m256i r2_ = _mm256_loadu_si256((const __m256i *)(at_ + 64));                     \
                __m256i r3_ = _mm256_loadu_si256((const __m256i *)(at_ + 96));                     \
                _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++) {                              \
                    __m256i b_ = _mm256_set1_epi32(cq_[q_][s_]);                                   \
                    acc_[q_][0] = _mm256_dpbusd_avx_epi32(acc_[q_][0], r0_, b_);                   \
                    acc_[q_][1] = _mm256_dpbusd_avx_epi32(acc_[q_][1], r1_, b_);                   \
                    acc_[q_][2] = _mm256_dpbusd_avx_epi32(acc_[q_][2], r2_, b_);                   \
                    acc_[q_][3] = _mm256_dpbusd_avx_epi32(acc_[q_][3], r3_, b_);                   \
                }                                                                                  \
            }                                                                                      \
            _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                    \
                _Pragma("GCC unroll 4") for (v_ = 0; v_ < 4; v_++)                                 \
                    _mm256_storeu_si256((__m256i *)((int32_t *)(out) + q_ * LEMUR_COMPACT_BLOCK    \
                                                    + 32 * half_ + 8 * v_), acc_[q_][v_]);         \
        }                                                                                          \
    } while (0)

__attribute__((target("avx2,avxvnni")))
static void lemur_int8_avx_vnni_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                      const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    LEMUR_NQ_SWITCH(2, LEMUR_AVX_VNNI_TILE, rows, queries, q0, out)
}

#if defined(__AVX2__)
/* AVX2 without VNNI: VPMADDUBSW multiplies a lane's four unsigned codes by
 * the query's four signed ones and adds them in pairs, at 16 bits with
 * saturation: exact for query codes of magnitude at most 64
 * (lemur_int8_query_limit; 2 * 255 * 64 < 2^15); VPMADDWD by ones sums each
 * pair into int32. NQ queries x LEMUR_AVX2_VECTORS(NQ) vectors of 8 rows
 * a part (the fastest on Zen 3, measured), the block in parts. */
#define LEMUR_AVX2_VECTORS(NQ) ((NQ) == 1 ? 8 : (NQ) <= 3 ? 2 : 1)
#define LEMUR_INT8_AVX2_TILE(NQ, rows, queries, q0, out)                                           \
    do {                                                                                           \
        enum { V_ = LEMUR_AVX2_VECTORS(NQ) };                                                      \
        const int32_t *cq_[NQ];                                                                    \
        const __m256i ones_ = _mm256_set1_epi16(1);                                                \
        ptrdiff_t part_, s_;                                                                       \
        int q_, v_;                                                                                \
        for (q_ = 0; q_ < NQ; q_++)                                                                \
            cq_[q_] = (const int32_t *)((queries)->codes + ((q0) + q_) * (rows)->steps * 4);        \
        for (part_ = 0; part_ < LEMUR_COMPACT_BLOCK; part_ += 8 * V_) {                            \
            __m256i acc_[NQ][V_];                                                                  \
            const uint8_t *at_ = block + part_ * LEMUR_STEP_BYTES;                                 \
            _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                    \
                _Pragma("GCC unroll 8") for (v_ = 0; v_ < V_; v_++)                                \
                    acc_[q_][v_] = _mm256_setzero_si256();                                         \
            for (s_ = 0; s_ < (rows)->steps; s_++, at_ += LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES) { \
                __m256i b_[NQ];                                                                    \
                _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                \
                    b_[q_] = _mm256_set1_epi32(cq_[q_][s_]);                                       \
                _Pragma("GCC unroll 8") for (v_ = 0; v_ < V_; v_++) {                              \
                    __m256i x_ = _mm256_loadu_si256((const __m256i *)(at_ + 32 * v_));             \
                    _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                            \
                        acc_[q_][v_] = _mm256_add_epi32(                                           \
                            acc_[q_][v_], _mm256_madd_epi16(_mm256_maddubs_epi16(x_, b_[q_]), ones_)); \
                }                                                                                  \
            }                                                                                      \
            _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                    \
                _Pragma("GCC unroll 8") for (v_ = 0; v_ < V_; v_++)                                \
                    _mm256_storeu_si256((__m256i *)((int32_t *)(out) + q_ * LEMUR_COMPACT_BLOCK    \
                                                    + part_ + 8 * v_), acc_[q_][v_]);              \
        }                                                                                          \
    } while (0)

__attribute__((target("avx2")))
static void lemur_int8_avx2_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                  const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    LEMUR_NQ_SWITCH(6, LEMUR_INT8_AVX2_TILE, rows, queries, q0, out)
}
#endif /* __AVX2__ */

/* AVX512_BF16: NQ queries x the block's four vectors of 16 rows; each step
 * one VDPBF16PS per pair, the query's two values broadcast */
#define LEMUR_BF16_512_TILE(NQ, rows, queries, q0, out)                                            \
    do {                                                                                           \
        __m512 acc_[NQ][4];                                                                        \
        const int32_t *cq_[NQ];                                                                    \
        const uint8_t *at_ = block;                                                                \
        ptrdiff_t s_;                                                                              \
        int q_, v_;                                                                                \
        for (q_ = 0; q_ < NQ; q_++)                                                                \
            cq_[q_] = (const int32_t *)((queries)->codes + ((q0) + q_) * (rows)->steps * 4);        \
        _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                        \
            _Pragma("GCC unroll 4") for (v_ = 0; v_ < 4; v_++)                                     \
                acc_[q_][v_] = _mm512_setzero_ps();                                                \
        for (s_ = 0; s_ < (rows)->steps; s_++, at_ += LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES) {     \
            __m512bh r0_ = (__m512bh)_mm512_loadu_si512((const void *)at_);                        \
            __m512bh r1_ = (__m512bh)_mm512_loadu_si512((const void *)(at_ + 64));                 \
            __m512bh r2_ = (__m512bh)_mm512_loadu_si512((const void *)(at_ + 128));                \
            __m512bh r3_ = (__m512bh)_mm512_loadu_si512((const void *)(at_ + 192));                \
            _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++) {                                  \
                __m512bh b_ = (__m512bh)_mm512_set1_epi32(cq_[q_][s_]);                            \
                acc_[q_][0] = _mm512_dpbf16_ps(acc_[q_][0], r0_, b_);                              \
                acc_[q_][1] = _mm512_dpbf16_ps(acc_[q_][1], r1_, b_);                              \
                acc_[q_][2] = _mm512_dpbf16_ps(acc_[q_][2], r2_, b_);                              \
                acc_[q_][3] = _mm512_dpbf16_ps(acc_[q_][3], r3_, b_);                              \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 6") for (q_ = 0; q_ < NQ; q_++)                                        \
            _Pragma("GCC unroll 4") for (v_ = 0; v_ < 4; v_++)                                     \
                _mm512_storeu_ps((float *)(out) + q_ * LEMUR_COMPACT_BLOCK + 16 * v_, acc_[q_][v_]); \
    } while (0)

__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void lemur_bf16_dot512_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                    const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    LEMUR_NQ_SWITCH(6, LEMUR_BF16_512_TILE, rows, queries, q0, out)
}

#endif /* LEMUR_X86_INTRINSICS */

#if defined(LEMUR_AMX)
/* AMX: up to 16 queries x the block's 64 rows, 16 steps a tile product:
 * the queries' codes as the left tile (int8 codes, signed; or bfloat16
 * pairs), the block's codes as they are stored (16 steps x 16 rows x 4
 * bytes: the right operand's layout, 256 bytes a step) as four right tiles.
 * int8: TDPBSUD sums exactly in int32, so the dots are VPDPBUSD's;
 * bfloat16: TDPBF16PS, float32 sums. Needs steps % 16 == 0. */
#define LEMUR_AMX_TILE_QUERIES 16
#define LEMUR_AMX_DOT(kind, c, a, b) \
    do { if ((kind) == LEMUR_INT8) _tile_dpbsud(c, a, b); else _tile_dpbf16ps(c, a, b); } while (0)
__attribute__((target("amx-tile,amx-int8,amx-bf16")))
static void lemur_amx_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                            const uint8_t *block, ptrdiff_t q0, int num_queries, void *out)
{
    ptrdiff_t stride = rows->steps * LEMUR_STEP_BYTES;
    const uint8_t *codes = queries->codes + q0 * stride;
    int kind = rows->kind;
    lemur_amx_configure(num_queries);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (ptrdiff_t s = 0; s < rows->steps; s += 16) {
        const uint8_t *at = block + s * LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES;
        _tile_loadd(4, codes + s * LEMUR_STEP_BYTES, stride);
        _tile_loadd(6, at, LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES);
        LEMUR_AMX_DOT(kind, 0, 4, 6);
        _tile_loadd(7, at + 64, LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES);
        LEMUR_AMX_DOT(kind, 1, 4, 7);
        _tile_loadd(6, at + 128, LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES);
        LEMUR_AMX_DOT(kind, 2, 4, 6);
        _tile_loadd(7, at + 192, LEMUR_COMPACT_BLOCK * LEMUR_STEP_BYTES);
        LEMUR_AMX_DOT(kind, 3, 4, 7);
    }
    _tile_stored(0, out, LEMUR_COMPACT_BLOCK * 4);
    _tile_stored(1, (int32_t *)out + 16, LEMUR_COMPACT_BLOCK * 4);
    _tile_stored(2, (int32_t *)out + 32, LEMUR_COMPACT_BLOCK * 4);
    _tile_stored(3, (int32_t *)out + 48, LEMUR_COMPACT_BLOCK * 4);
    _tile_release();
}
#endif

/* the most queries a block kernel takes at once (the scan's dots buffer) */
#define LEMUR_MAX_TILE_QUERIES 16

typedef void (*lemur_block_kernel)(const lemur_compact_rows *, const lemur_compact_queries *, const uint8_t *,
                                   ptrdiff_t, int, void *);

/* A dot-product kernel: its name, the most queries it takes a call, and the
 * batch from which it is the fastest. */
typedef struct {
    const char *name;
    lemur_block_kernel kernel;
    int tile_queries;
    ptrdiff_t min_queries;
} lemur_block_kernel_info;

/* the longest list: AMX, a VNNI kernel, AVX2's, the vector code */
#define LEMUR_MAX_BLOCK_KERNELS 4

/* The kernels that multiply these rows on this CPU (each takes the query
 * codes in this CPU's format, lemur_query_step_bytes), exact for int8 query
 * codes of magnitude at most query_limit (the scan's: lemur_int8_query_limit),
 * into `kernels`, in order of preference; returns their number. The last
 * takes any batch.
 * AMX's tiles from 8 queries on: with fewer, most of each tile product is
 * wasted and VNNI is faster (one query: 0.58 against 0.64 ms for 10k rows
 * of h = 2048, 100 queries: 7.8 against 6.0 ms). */
static inline int lemur_block_kernels(const lemur_compact_rows *rows, int query_limit,
                                      lemur_block_kernel_info *kernels)
{
    int n = 0;
#if defined(LEMUR_AMX)
    if ((rows->kind == LEMUR_INT8 ? rows->cpu.amx_int8 : rows->cpu.amx_bf16) && rows->steps % 16 == 0)
        kernels[n++] = (lemur_block_kernel_info){"AMX", lemur_amx_block, LEMUR_AMX_TILE_QUERIES, 8};
#endif
#if defined(LEMUR_X86_INTRINSICS)
    if (rows->kind == LEMUR_INT8 && rows->cpu.vnni512)
        kernels[n++] = (lemur_block_kernel_info){"AVX512-VNNI", lemur_int8_vnni512_block, 6, 1};
    if (rows->kind == LEMUR_INT8 && rows->cpu.avx_vnni)
        kernels[n++] = (lemur_block_kernel_info){"AVX-VNNI", lemur_int8_avx_vnni_block, 2, 1};
    if (rows->kind == LEMUR_BFLOAT16 && lemur_bf16_query_rounded(rows->cpu, rows->steps)) {
        /* the query's values are bfloat16: not the widened kernel's float32 */
        kernels[n++] = (lemur_block_kernel_info){"AVX512_BF16", lemur_bf16_dot512_block, 6, 1};
        return n;
    }
#if defined(__AVX2__)
    if (rows->kind == LEMUR_INT8 && rows->cpu.avx2 && query_limit <= 64)
        kernels[n++] = (lemur_block_kernel_info){"AVX2 (VPMADDUBSW)", lemur_int8_avx2_block, 6, 1};
#endif
#endif
    kernels[n++] = rows->kind == LEMUR_INT8
        ? (lemur_block_kernel_info){"vector code", lemur_int8_vector_block, LEMUR_PLAIN_NQ, 1}
        : (lemur_block_kernel_info){"widened to float32", lemur_bf16_widen_block, LEMUR_PLAIN_NQ, 1};
    return n;
}

/* The kernel of this CPU for these rows and a batch of num_queries. */
static inline lemur_block_kernel_info lemur_block_kernel_of(const lemur_compact_rows *rows,
                                                            ptrdiff_t num_queries)
{
    lemur_block_kernel_info kernels[LEMUR_MAX_BLOCK_KERNELS];
    int n = lemur_block_kernels(rows, lemur_int8_query_limit(rows->cpu), kernels), i = 0;
    while (i < n - 1 && num_queries < kernels[i].min_queries)
        i++;
    return kernels[i];
}

/* ---- bounds ------------------------------------------------------------ */

/* The bounds of query q against the rows [d0, d0 + width) of one block (d0
 * a multiple of LEMUR_COMPACT_BLOCK, width <= it), from the query's dot
 * products with the block (int32 for int8, float32 for bfloat16): lower and
 * upper (LEMUR_COMPACT_BLOCK each, -inf past width) such that every pair's
 * float32 score lies between them (compact.py says why). */
static inline void lemur_compact_bounds(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                        ptrdiff_t q, ptrdiff_t d0, ptrdiff_t width, const void *dots,
                                        float *lower, float *upper)
{
    const float unit = 0x1p-24f;
    ptrdiff_t m = rows->m, d, k;
    const float *rp = rows->params + (d0 / LEMUR_COMPACT_BLOCK) * (LEMUR_ROW_PARAMS + m) * LEMUR_COMPACT_BLOCK;
    const float *qp = queries->params + q * (LEMUR_QUERY_PARAMS + m);
    const float *coefficients = qp + LEMUR_QUERY_PARAMS;
    float approx[LEMUR_COMPACT_BLOCK], projected[LEMUR_COMPACT_BLOCK];
    if (rows->kind == LEMUR_INT8) {
        const int32_t *sums = (const int32_t *)dots;
        int32_t shift = 128 * (int32_t)qp[LEMUR_QUERY_CODE_SUM];
        for (d = 0; d < LEMUR_COMPACT_BLOCK; d++)
            approx[d] = (qp[LEMUR_QUERY_SCALE] * rp[LEMUR_ROW_SCALE * LEMUR_COMPACT_BLOCK + d])
                        * (float)(sums[d] - shift);
    } else {
        memcpy(approx, dots, sizeof approx);
    }
    for (d = 0; d < LEMUR_COMPACT_BLOCK; d++)
        projected[d] = 0;
    for (k = 0; k < m; k++)
        for (d = 0; d < LEMUR_COMPACT_BLOCK; d++)
            projected[d] += coefficients[k] * rp[(LEMUR_ROW_PARAMS + k) * LEMUR_COMPACT_BLOCK + d];
    for (d = 0; d < LEMUR_COMPACT_BLOCK; d++) {
        float score = projected[d] + approx[d];
        float error = qp[LEMUR_QUERY_NORM] * rp[LEMUR_ROW_NORM * LEMUR_COMPACT_BLOCK + d]
                    + qp[LEMUR_QUERY_PROJECTION] * rp[LEMUR_ROW_PROJECTION * LEMUR_COMPACT_BLOCK + d]
                    + qp[LEMUR_QUERY_RESIDUAL] * rp[LEMUR_ROW_RESIDUAL * LEMUR_COMPACT_BLOCK + d]
                    + qp[LEMUR_QUERY_COMPACT] * rp[LEMUR_ROW_COMPACT * LEMUR_COMPACT_BLOCK + d]
                    + 4 * unit * (fabsf(approx[d]) + fabsf(projected[d]));
        /* slack for the rounding of this arithmetic itself (compact.py) */
        error = error * (1 + 16 * unit) + 8 * unit * fabsf(score) + 1e-30f;
        lower[d] = d < width ? score - error : -INFINITY;
        upper[d] = d < width ? score + error : -INFINITY;
    }
}

/* bit d set where values[d] >= threshold (-inf lanes never are, but for a
 * threshold of -inf), for the LEMUR_COMPACT_BLOCK lanes */
static inline uint64_t lemur_reaching(const float *values, float threshold)
{
    uint64_t mask = 0;
    int d;
#if defined(LEMUR_X86_INTRINSICS) && defined(__AVX512F__)
    __m512 bar = _mm512_set1_ps(threshold), floor = _mm512_set1_ps(-INFINITY);
    for (d = 0; d < LEMUR_COMPACT_BLOCK; d += 16) {
        __m512 v = _mm512_loadu_ps(values + d);
        mask |= (uint64_t)(_mm512_cmp_ps_mask(v, bar, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, floor, _CMP_GT_OQ)) << d;
    }
#elif defined(LEMUR_X86_INTRINSICS) && defined(__AVX__)
    __m256 bar = _mm256_set1_ps(threshold), floor = _mm256_set1_ps(-INFINITY);
    for (d = 0; d < LEMUR_COMPACT_BLOCK; d += 8) {
        __m256 v = _mm256_loadu_ps(values + d);
        __m256 both = _mm256_and_ps(_mm256_cmp_ps(v, bar, _CMP_GE_OQ), _mm256_cmp_ps(v, floor, _CMP_GT_OQ));
        mask |= (uint64_t)(uint32_t)_mm256_movemask_ps(both) << d;
    }
#else
    for (d = 0; d < LEMUR_COMPACT_BLOCK; d++)
        mask |= (uint64_t)(values[d] >= threshold && values[d] > -INFINITY) << d;
#endif
    return mask;
}

static inline int lemur_lowest_bit(uint64_t mask)
{
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(mask);
#else
    int bit = 0;
    while (!(mask & 1)) {
        mask >>= 1;
        bit++;
    }
    return bit;
#endif
}

/* ---- keeping the largest bounds and the documents that may be among the best */

/* Keeps the `capacity` largest values pushed in a min-heap (root: the
 * smallest kept); returns the new size. A full heap's root is replaced
 * bottom-up (Floyd): the hole goes down to a leaf along the smaller
 * children, a choice made without a branch, then the value climbs back to
 * its place, mostly a level or two: where a value belongs is what a branch
 * cannot predict, and the top-down sift asked it at every level. With the
 * bar of lemur_compact_scan_block, the int8 scan of 100 queries over 10k
 * rows of h = 2048 took 6.57-6.70 ms against 6.88-6.95 (Intel Xeon, 2
 * threads). */
static inline ptrdiff_t lemur_push_largest(float *heap, ptrdiff_t size, ptrdiff_t capacity, float value)
{
    ptrdiff_t position, child, parent;
    if (size < capacity) {
        position = size;
        while (position > 0) {
            ptrdiff_t parent = (position - 1) / 2;
            if (heap[parent] <= value)
                break;
            heap[position] = heap[parent];
            position = parent;
        }
        heap[position] = value;
        return size + 1;
    }
    if (value <= heap[0])
        return size;
    position = 0;
    for (child = 1; child + 1 < size; child = 2 * position + 1) {
        child += heap[child + 1] < heap[child];
        heap[position] = heap[child];
        position = child;
    }
    if (child < size) {
        heap[position] = heap[child];
        position = child;
    }
    while (position > 0) {
        parent = (position - 1) / 2;
        if (heap[parent] <= value)
            break;
        heap[position] = heap[parent];
        position = parent;
    }
    heap[position] = value;
    return size;
}

/* The k-th largest of values[0..n) (1 <= k <= n), reordering them: an
 * introselect (three-way partitions around a median of three, so that ties
 * cost nothing; after 2 log2(n) rounds the rest goes through a heap). heap:
 * room for k values. */
static inline float lemur_kth_largest(float *values, ptrdiff_t n, ptrdiff_t k, float *heap)
{
    ptrdiff_t low = 0, high = n, target = k - 1, rounds = 0, limit = 2, i, size;
    for (i = n; i > 1; i >>= 1)
        limit += 2;
    while (high - low > 16 && rounds++ < limit) {
        float a = values[low], b = values[low + (high - low) / 2], c = values[high - 1], pivot;
        ptrdiff_t greater = low, equal = low, smaller = high;
        pivot = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b));
        /* [low, greater) > pivot, [greater, equal) == pivot, [smaller, high) < pivot */
        while (equal < smaller) {
            float value = values[equal];
            if (value > pivot) {
                values[equal] = values[greater];
                values[greater++] = value;
                equal++;
            } else if (value < pivot) {
                values[equal] = values[--smaller];
                values[smaller] = value;
            } else {
                equal++;
            }
        }
        if (target < greater)
            high = greater;
        else if (target < equal)
            return pivot;
        else
            low = equal;
    }
    size = 0;
    for (i = low; i < high; i++)
        size = lemur_push_largest(heap, size, target - low + 1, values[i]);
    return heap[0];
}

/* Documents that may be among a query's k best: (row, query, lower, upper). */
typedef struct {
    int64_t *rows;
    int32_t *queries;
    float *lower;
    float *upper;
    ptrdiff_t count, capacity, limit;
    int status;  /* 0 fine, 1 out of memory, 2 more than `limit` */
} lemur_survivors;

/* Readies a list for a scan: empty, room for `capacity` (allocated on first
 * use; a list reused from an earlier scan keeps its room). Returns 0 when
 * out of memory. */
static inline int lemur_survivors_reset(lemur_survivors *survivors, ptrdiff_t capacity, ptrdiff_t limit)
{
    survivors->count = 0;
    survivors->status = 0;
    survivors->limit = limit;
    if (survivors->rows != NULL)
        return 1;
    survivors->capacity = capacity < limit ? capacity : limit;
    survivors->rows = (int64_t *)malloc((size_t)survivors->capacity * sizeof(int64_t));
    survivors->queries = (int32_t *)malloc((size_t)survivors->capacity * sizeof(int32_t));
    survivors->lower = (float *)malloc((size_t)survivors->capacity * sizeof(float));
    survivors->upper = (float *)malloc((size_t)survivors->capacity * sizeof(float));
    if (!survivors->rows || !survivors->queries || !survivors->lower || !survivors->upper) {
        survivors->status = 1;
        return 0;
    }
    return 1;
}

static inline void lemur_survivors_free(lemur_survivors *survivors)
{
    free(survivors->rows);
    free(survivors->queries);
    free(survivors->lower);
    free(survivors->upper);
    memset(survivors, 0, sizeof(*survivors));
}

static inline int lemur_grow(void **buffer, size_t size)
{
    void *moved = realloc(*buffer, size);
    if (moved == NULL)
        return 0;
    *buffer = moved;
    return 1;
}

/* Makes room for one more: first drops those whose upper bound fell below
 * their query's threshold, then grows the buffers, up to the limit. Returns
 * whether there is room. */
static inline int lemur_survivors_room(lemur_survivors *survivors, const float *thresholds)
{
    ptrdiff_t kept = 0, i, grown;
    ptrdiff_t room = survivors->capacity < survivors->limit ? survivors->capacity : survivors->limit;
    if (survivors->count < room)
        return 1;
    for (i = 0; i < survivors->count; i++)
        if (survivors->upper[i] >= thresholds[survivors->queries[i]]) {
            survivors->rows[kept] = survivors->rows[i];
            survivors->queries[kept] = survivors->queries[i];
            survivors->lower[kept] = survivors->lower[i];
            survivors->upper[kept] = survivors->upper[i];
            kept++;
        }
    survivors->count = kept;
    if (kept <= room / 2)
        return 1;
    if (room >= survivors->limit) {
        survivors->status = 2;
        return 0;
    }
    grown = 2 * survivors->capacity < survivors->limit ? 2 * survivors->capacity : survivors->limit;
    if (!lemur_grow((void **)&survivors->rows, (size_t)grown * sizeof(int64_t))
        || !lemur_grow((void **)&survivors->queries, (size_t)grown * sizeof(int32_t))
        || !lemur_grow((void **)&survivors->lower, (size_t)grown * sizeof(float))
        || !lemur_grow((void **)&survivors->upper, (size_t)grown * sizeof(float))) {
        survivors->status = 1;
        return 0;
    }
    survivors->capacity = grown;
    return 1;
}

/* One thread's state of a scan over a batch of num_queries queries. */
typedef struct {
    float *heaps;            /* (num_queries, k): min-heaps of the k largest lower bounds above
                              * the threshold */
    ptrdiff_t *sizes;        /* (num_queries,) */
    float *thresholds;       /* (num_queries,): what a lower bound must beat to enter a heap
                              * that is not full, and an upper bound must reach to be kept: the
                              * k-th largest of some k rows' lower bounds, so at most the k-th
                              * largest over all rows */
    void *dots;              /* tile queries x LEMUR_COMPACT_BLOCK values */
    lemur_survivors survivors;
} lemur_scan_state;

/* The block of rows [d0, d0 + width) against every query: the lower bounds
 * above the threshold and above the root of a full heap go into the
 * thread's heaps, the threshold rising to that root; the pairs whose upper
 * bound reaches the threshold are kept. A block whose bounds all lie below
 * costs two vector comparisons per query. Returns 0 when out of room. */
static inline int lemur_compact_scan_block(const lemur_compact_rows *rows, const lemur_compact_queries *queries,
                                           ptrdiff_t k, ptrdiff_t d0, ptrdiff_t width, lemur_scan_state *state)
{
    ptrdiff_t count = queries->num_queries, q0, q, d;
    const uint8_t *block = rows->codes + (d0 / LEMUR_COMPACT_BLOCK) * rows->steps * LEMUR_COMPACT_BLOCK
                           * LEMUR_STEP_BYTES;
    lemur_block_kernel_info kernel = lemur_block_kernel_of(rows, count);
    int tile, i;
    lemur_survivors *survivors = &state->survivors;
    float lower[LEMUR_COMPACT_BLOCK], upper[LEMUR_COMPACT_BLOCK];
    uint64_t mask;
    for (q0 = 0; q0 < count; q0 += kernel.tile_queries) {
        tile = (int)(count - q0 < kernel.tile_queries ? count - q0 : kernel.tile_queries);
        kernel.kernel(rows, queries, block, q0, tile, state->dots);
        for (i = 0; i < tile; i++) {
            float *heap, bar;
            ptrdiff_t size;
            q = q0 + i;
            lemur_compact_bounds(rows, queries, q, d0, width,
                                 (const char *)state->dots + (size_t)i * LEMUR_COMPACT_BLOCK * 4, lower, upper);
            heap = state->heaps + q * k;
            size = state->sizes[q];
            /* what a lower bound must beat: the threshold, or a full heap's
             * root where that is higher (a value at most the threshold
             * cannot be among the k largest of all rows) */
            bar = state->thresholds[q];
            if (size == k && heap[0] > bar)
                bar = heap[0];
            for (mask = lemur_reaching(lower, bar); mask; mask &= mask - 1) {
                d = lemur_lowest_bit(mask);
                if (lower[d] > bar) {
                    size = lemur_push_largest(heap, size, k, lower[d]);
                    if (size == k && heap[0] > bar)
                        bar = heap[0];
                }
            }
            state->sizes[q] = size;
            state->thresholds[q] = bar;
            for (mask = lemur_reaching(upper, state->thresholds[q]); mask; mask &= mask - 1) {
                d = lemur_lowest_bit(mask);
                if (!lemur_survivors_room(survivors, state->thresholds))
                    return 0;
                survivors->rows[survivors->count] = d0 + d;
                survivors->queries[survivors->count] = (int32_t)q;
                survivors->lower[survivors->count] = lower[d];
                survivors->upper[survivors->count] = upper[d];
                survivors->count++;
            }
        }
    }
    return 1;
}

#endif

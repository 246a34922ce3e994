/* bfloat16 matrix products on Intel's AMX tiles (declared for Cython in
 * _amx.pxd), for lemur.train(matmul_precision="bfloat16"): out (m, n) =
 * A (m, k) B (k, n), float32 operands rounded to bfloat16 (to nearest even,
 * subnormals flushed to zero: VCVTNE2PS2BF16's rule) and multiplied on the
 * tiles with float32 accumulation (TDPBF16PS), as PyTorch's autocast does.
 *
 * Only the AVX-512 kernel variant compiles it, on Linux (the tiles' state
 * must be asked of the kernel: arch_prctl(ARCH_REQ_XCOMP_PERM)), with GCC
 * >= 11 or Clang >= 12; elsewhere lemur_amx_detect() says 0 and the callers
 * take the same arithmetic on float32 values (lemur_round_bfloat16 of
 * _half.h, then sgemm: a product of two bfloat16 values is exact in float32).
 *
 * Packed operands: A in panels of LEMUR_PANEL (32) rows, B in panels of 32
 * columns; a panel is its k steps of 32 values in order, a step two tiles
 * of 1 KiB (rows 0-15, then 16-31; columns 0-15, then 16-31). (The rerank's
 * screen loads A's tiles from rows of bfloat16 values in place instead:
 * lemur_amx_round_rows, lemur_amx_rows.)
 *   A tile: 16 rows x 32 bfloat16 along k (a row of A's step)
 *   B tile: 16 rows x 16 columns x 2: row p holds, for each column n, the
 *           pair B[2p, n], B[2p + 1, n] (the "VNNI" layout TDPBF16PS reads)
 * Rows, columns and k past the matrix are zero. Each operand is packed from
 * float32 whichever way it is stored (k contiguous or not: the packs that
 * transpose do it 16 x 16 in registers), so that op(A) and op(B) may be
 * transposed views.
 *
 * The product: blocks of LEMUR_AMX_BLOCK_ROWS x LEMUR_AMX_BLOCK_COLUMNS of
 * out, one block per unit of work (threads take units); inside a block, k
 * in slices of LEMUR_AMX_SLICE_STEPS steps, and for each slice every pair
 * of a 32-column B panel (kept in L1 across the block's A panels) and a
 * 32-row A panel (from L2): four float32 accumulator tiles (32 x 32 of out)
 * loaded from the block's float32 buffer, 4 tile products a step, stored
 * back. Then the block goes into out (lemur_amx_store: written or added) or
 * is folded into running maxima by rows (lemur_amx_maxima: the training
 * targets, max over a document's tokens). On this 2-core Sapphire Rapids
 * machine: 1.1-1.3 TFLOP/s at training's shapes, packing included (float32
 * sgemm: 0.3). */
#ifndef LEMUR_AMX_H
#define LEMUR_AMX_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_half.h"

#if defined(__AVX512F__) && defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define LEMUR_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/* the first `count` of 16 lanes (all for 16 and more, none for 0 and less);
 * also the int16 screen's (_screen_int16.h), where AMX is not built */
static inline __mmask16 lemur_lanes(ptrdiff_t count)
{
    return count >= 16 ? (__mmask16)0xFFFF : count <= 0 ? (__mmask16)0 : (__mmask16)((1u << count) - 1);
}
#endif

#define LEMUR_PANEL 32
#define LEMUR_TILE_VALUES 512          /* bfloat16 values in a tile (1 KiB) */
#define LEMUR_STEP_VALUES 1024         /* bfloat16 values in a panel's step: two tiles */
#define LEMUR_AMX_BLOCK_ROWS 128
#define LEMUR_AMX_BLOCK_COLUMNS 256
#define LEMUR_AMX_SLICE_STEPS 8        /* k = 256 a slice */

/* steps of 32 values along k */
static inline ptrdiff_t lemur_amx_steps(ptrdiff_t depth) { return (depth + 31) / 32; }
/* panels of 32 rows (or columns) */
static inline ptrdiff_t lemur_amx_panels(ptrdiff_t size) { return (size + LEMUR_PANEL - 1) / LEMUR_PANEL; }

#if defined(LEMUR_AMX)

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* 1 when the CPU has AMX-TILE and AMX-BF16 (with AVX512_BF16, for the
 * packs) or, with int8 set, AMX-INT8; the OS keeps the tiles' state; and
 * Linux lets this process use them (asked on every call; granted once). */
static inline int lemur_amx_usable(int int8)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    if (!((edx >> 24) & 1) || !((edx >> (int8 ? 25 : 22)) & 1))
        return 0;  /* AMX-TILE; AMX-INT8 or AMX-BF16 */
    if (!int8 && (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) || !((eax >> 5) & 1)))
        return 0;  /* leaf 7.1 EAX bit 5: AVX512_BF16 */
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 27) & 1))
        return 0;  /* OSXSAVE */
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0x60000u) != 0x60000u)
        return 0;  /* XTILECFG and XTILEDATA enabled */
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

static inline int lemur_amx_detect(void) { return lemur_amx_usable(0); }

typedef struct {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
} lemur_tile_config;

/* Every tile 64 bytes a row; tiles 0-4 `rows` rows (1-16: the accumulators
 * and the left operand, for fewer than 16 rows of out), tiles 5-7 16 rows.
 * Each thread, before its products. */
__attribute__((target("amx-tile")))
static inline void lemur_amx_configure(int rows)
{
    lemur_tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int tile = 0; tile < 8; tile++) {
        config.bytes_per_row[tile] = 64;
        config.rows[tile] = (uint8_t)(tile < 5 ? rows : 16);
    }
    /* GCC's _tile_loadconfig tells the compiler it reads 8 bytes of the
     * configuration, which lets it drop the stores above: a barrier keeps them */
    __asm__ volatile("" : : "r"(&config) : "memory");
    _tile_loadconfig(&config);
}

/* Every tile 16 rows of 64 bytes */
static inline void lemur_amx_begin(void) { lemur_amx_configure(16); }

__attribute__((target("amx-tile")))
static inline void lemur_amx_end(void) { _tile_release(); }

#define LEMUR_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

/* 32 float32 values (count of them present, the rest 0) as 32 bfloat16 */
LEMUR_BF16_TARGET static inline __m512i lemur_bfloat16_32(const float *values, ptrdiff_t count)
{
    __m512 low = _mm512_maskz_loadu_ps(lemur_lanes(count), values);
    __m512 high = _mm512_maskz_loadu_ps(lemur_lanes(count - 16), values + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(high, low);
}

/* lines[0..15], 16 x 16 32-bit values, transposed in registers: pairs,
 * quads, then 128-bit lanes twice */
LEMUR_BF16_TARGET static inline void lemur_transpose_16x16(__m512 *lines)
{
    __m512 t[16];
    for (int r = 0; r < 16; r += 2) {
        t[r] = _mm512_unpacklo_ps(lines[r], lines[r + 1]);
        t[r + 1] = _mm512_unpackhi_ps(lines[r], lines[r + 1]);
    }
    for (int r = 0; r < 16; r += 4) {
        lines[r] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[r]), _mm512_castps_pd(t[r + 2])));
        lines[r + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[r]), _mm512_castps_pd(t[r + 2])));
        lines[r + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[r + 1]), _mm512_castps_pd(t[r + 3])));
        lines[r + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[r + 1]), _mm512_castps_pd(t[r + 3])));
    }
    for (int r = 0; r < 4; r++) {
        t[r] = _mm512_shuffle_f32x4(lines[r], lines[r + 4], 0x88);
        t[r + 4] = _mm512_shuffle_f32x4(lines[r], lines[r + 4], 0xDD);
        t[r + 8] = _mm512_shuffle_f32x4(lines[r + 8], lines[r + 12], 0x88);
        t[r + 12] = _mm512_shuffle_f32x4(lines[r + 8], lines[r + 12], 0xDD);
    }
    for (int r = 0; r < 4; r++) {
        lines[r] = _mm512_shuffle_f32x4(t[r], t[r + 8], 0x88);
        lines[r + 8] = _mm512_shuffle_f32x4(t[r], t[r + 8], 0xDD);
        lines[r + 4] = _mm512_shuffle_f32x4(t[r + 4], t[r + 12], 0x88);
        lines[r + 12] = _mm512_shuffle_f32x4(t[r + 4], t[r + 12], 0xDD);
    }
}

/* One panel of an operand whose 32 rows (A's rows, or B's columns) each
 * hold their k values contiguously: source[row * stride + k], rows
 * first_row.., `rows` of them in all, `depth` k values. A: tiles of rows;
 * B (vnni set): each step's 16 x 16 pairs transposed into B's layout. */
LEMUR_BF16_TARGET static inline void lemur_amx_pack_k_contiguous(const float *source, ptrdiff_t stride,
                                                                 ptrdiff_t rows, ptrdiff_t depth, ptrdiff_t panel,
                                                                 int vnni, uint16_t *out)
{
    ptrdiff_t steps = lemur_amx_steps(depth);
    __m512 lines[16];
    for (ptrdiff_t step = 0; step < steps; step++) {
        ptrdiff_t k = step * 32;
        for (int half = 0; half < 2; half++) {
            uint16_t *tile = out + step * LEMUR_STEP_VALUES + half * LEMUR_TILE_VALUES;
            for (int r = 0; r < 16; r++) {
                ptrdiff_t row = panel * LEMUR_PANEL + half * 16 + r;
                lines[r] = _mm512_castsi512_ps(row < rows ? lemur_bfloat16_32(source + row * stride + k, depth - k)
                                                          : _mm512_setzero_si512());
            }
            /* B: row r holds column r's 16 pairs; the tile wants pair p of every column in its row p */
            if (vnni)
                lemur_transpose_16x16(lines);
            for (int r = 0; r < 16; r++)
                _mm512_storeu_ps((float *)(tile + r * 32), lines[r]);
        }
    }
}

/* One step (32 values of k) of every panel of an operand stored with k as
 * its slow index: source[k * stride + index], index = A's rows (or B's
 * columns), `size` of them in all (reading the step's 32 rows whole, rather
 * than a panel's 32 indices of every row, which touches a page a row). B
 * (vnni set): each pair of k rows interleaved; A: then 16 x 16 pairs
 * transposed into rows. */
LEMUR_BF16_TARGET static inline void lemur_amx_pack_k_strided(const float *source, ptrdiff_t stride,
                                                              ptrdiff_t size, ptrdiff_t depth, ptrdiff_t step,
                                                              int vnni, uint16_t *out)
{
    ptrdiff_t steps = lemur_amx_steps(depth), panels = lemur_amx_panels(size);
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    __m512 lines[16];
    for (ptrdiff_t panel = 0; panel < panels; panel++) {
        for (int half = 0; half < 2; half++) {
            uint16_t *tile = out + (panel * steps + step) * LEMUR_STEP_VALUES + half * LEMUR_TILE_VALUES;
            ptrdiff_t first = panel * LEMUR_PANEL + half * 16;
            __mmask16 lanes = lemur_lanes(size - first);
            /* line p: for each of the 16 indices, the pair of k = 2p, 2p + 1 (B's row p) */
            for (int p = 0; p < 16; p++) {
                ptrdiff_t k = step * 32 + 2 * p;
                __m512 even = k < depth ? _mm512_maskz_loadu_ps(lanes, source + k * stride + first)
                                        : _mm512_setzero_ps();
                __m512 odd = k + 1 < depth ? _mm512_maskz_loadu_ps(lanes, source + (k + 1) * stride + first)
                                           : _mm512_setzero_ps();
                lines[p] = _mm512_castsi512_ps(
                    _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(odd, even)));
            }
            /* A: row r wants index r's 32 values along k, its 16 pairs in order */
            if (!vnni)
                lemur_transpose_16x16(lines);
            for (int r = 0; r < 16; r++)
                _mm512_storeu_ps((float *)(tile + r * 32), lines[r]);
        }
    }
}

/* Where the A tiles of a 32-row panel lie: tile t (0: rows 0-15, 1: rows
 * 16-31) of step s at values + s * step_values + t * half_values, its rows
 * row_bytes apart. Packed panels: (64, LEMUR_STEP_VALUES, LEMUR_TILE_VALUES);
 * rows of `stride` bfloat16 values in place: (2 stride, 32, 16 stride). */
typedef struct {
    ptrdiff_t row_bytes, step_values, half_values;
} lemur_amx_rows;

static const lemur_amx_rows LEMUR_AMX_PACKED = {64, LEMUR_STEP_VALUES, LEMUR_TILE_VALUES};

/* 32 x 32 of out over steps [first_step, first_step + count): A's panel at
 * a_panel, laid out as `layout` says, B's packed; the accumulators start at
 * 0 (fresh) or from c (4 tiles of 16 x 16 float32: rows 0-15 x columns 0-15,
 * 0-15 x 16-31, 16-31 x 0-15, 16-31 x 16-31) and end in c. */
__attribute__((target("amx-tile,amx-bf16")))
static inline void lemur_amx_micro(const uint16_t *a_panel, lemur_amx_rows layout, const uint16_t *b_panel,
                                   ptrdiff_t first_step, ptrdiff_t count, int fresh, float *c)
{
    if (fresh) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        _tile_loadd(0, c, 64);
        _tile_loadd(1, c + 256, 64);
        _tile_loadd(2, c + 512, 64);
        _tile_loadd(3, c + 768, 64);
    }
    const uint16_t *a = a_panel + first_step * layout.step_values, *b = b_panel + first_step * LEMUR_STEP_VALUES;
    for (ptrdiff_t step = 0; step < count; step++, a += layout.step_values, b += LEMUR_STEP_VALUES) {
        _tile_loadd(4, a, layout.row_bytes);
        _tile_loadd(6, b, 64);
        _tile_loadd(5, a + layout.half_values, layout.row_bytes);
        _tile_loadd(7, b + LEMUR_TILE_VALUES, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, 64);
    _tile_stored(1, c + 256, 64);
    _tile_stored(2, c + 512, 64);
    _tile_stored(3, c + 768, 64);
}

/* One 16 x 16 tile of float32 values (rows x columns of it present) into
 * target[r * ldo + c], or added to it with accumulate. */
LEMUR_BF16_TARGET static inline void lemur_amx_tile_out(const float *tile, ptrdiff_t rows, ptrdiff_t columns,
                                                        float *target, ptrdiff_t ldo, int accumulate)
{
    __mmask16 lanes = lemur_lanes(columns);
    for (int r = 0; r < rows; r++) {
        float *line = target + r * ldo;
        __m512 value = _mm512_loadu_ps(tile + r * 16);
        if (accumulate)
            value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(lanes, line));
        _mm512_mask_storeu_ps(line, lanes, value);
    }
}

/* Panels of the block of an m x n product at block_row (rows) or
 * block_column (columns) */
static inline ptrdiff_t lemur_amx_row_panels(ptrdiff_t m, ptrdiff_t block_row)
{
    return lemur_amx_panels(m - block_row < LEMUR_AMX_BLOCK_ROWS ? m - block_row : LEMUR_AMX_BLOCK_ROWS);
}

static inline ptrdiff_t lemur_amx_column_panels(ptrdiff_t n, ptrdiff_t block_column)
{
    return lemur_amx_panels(n - block_column < LEMUR_AMX_BLOCK_COLUMNS ? n - block_column : LEMUR_AMX_BLOCK_COLUMNS);
}

/* The 16 values of row r of tile `tile` (0-3) of piece (p, q) in a block's
 * buffer with column_panels panels of columns */
static inline const float *lemur_amx_tile_row(const float *buffer, ptrdiff_t column_panels, ptrdiff_t p,
                                              ptrdiff_t q, int tile, int r)
{
    return buffer + ((p * column_panels + q) * 4 + tile) * 256 + r * 16;
}


/* One block of the product of the packed operands (a_packed: panels of A,
 * b_packed: panels of B, each steps x LEMUR_STEP_VALUES), m x n in all: rows
 * block_row.., columns block_column.. (each a multiple of 32), into buffer
 * (LEMUR_AMX_BLOCK_ROWS x LEMUR_AMX_BLOCK_COLUMNS float32, the thread's): its
 * 32 x 32 pieces in order (row panel, column panel), each four 16 x 16 tiles
 * as lemur_amx_micro leaves them. */
__attribute__((target("amx-tile,amx-bf16")))
static inline void lemur_amx_products(const uint16_t *a_packed, const uint16_t *b_packed, ptrdiff_t steps,
                                      ptrdiff_t m, ptrdiff_t n, ptrdiff_t block_row, ptrdiff_t block_column,
                                      float *buffer)
{
    ptrdiff_t row_panels = lemur_amx_row_panels(m, block_row), column_panels = lemur_amx_column_panels(n, block_column);
    for (ptrdiff_t first = 0; first < steps; first += LEMUR_AMX_SLICE_STEPS) {
        ptrdiff_t count = steps - first < LEMUR_AMX_SLICE_STEPS ? steps - first : LEMUR_AMX_SLICE_STEPS;
        for (ptrdiff_t q = 0; q < column_panels; q++) {
            const uint16_t *b_panel = b_packed + (block_column / LEMUR_PANEL + q) * steps * LEMUR_STEP_VALUES;
            for (ptrdiff_t p = 0; p < row_panels; p++) {
                const uint16_t *a_panel = a_packed + (block_row / LEMUR_PANEL + p) * steps * LEMUR_STEP_VALUES;
                lemur_amx_micro(a_panel, LEMUR_AMX_PACKED, b_panel, first, count, first == 0,
                                (float *)lemur_amx_tile_row(buffer, column_panels, p, q, 0, 0));
            }
        }
    }
}

/* A block from lemur_amx_products into out[i * ldo + j] (i < m, j < n), or
 * added to it with accumulate. */
LEMUR_BF16_TARGET static inline void lemur_amx_store(const float *buffer, ptrdiff_t m, ptrdiff_t n,
                                                     ptrdiff_t block_row, ptrdiff_t block_column, float *out,
                                                     ptrdiff_t ldo, int accumulate)
{
    ptrdiff_t row_panels = lemur_amx_row_panels(m, block_row), column_panels = lemur_amx_column_panels(n, block_column);
    for (ptrdiff_t p = 0; p < row_panels; p++)
        for (ptrdiff_t q = 0; q < column_panels; q++)
            for (int tile = 0; tile < 4; tile++) {
                ptrdiff_t i0 = block_row + p * LEMUR_PANEL + (tile >> 1) * 16;
                ptrdiff_t j0 = block_column + q * LEMUR_PANEL + (tile & 1) * 16;
                if (i0 < m && j0 < n)
                    lemur_amx_tile_out(lemur_amx_tile_row(buffer, column_panels, p, q, tile, 0),
                                       m - i0 < 16 ? m - i0 : 16, n - j0 < 16 ? n - j0 : 16,
                                       out + i0 * ldo + j0, ldo, accumulate);
            }
}

/* A block from lemur_amx_products folded into running maxima by rows:
 * out[row_group[i] * ldo + j] = max(itself, product[i, j]) for the block's
 * rows i < m and columns j < n (the training targets: rows are documents'
 * tokens, row_group their document). */
LEMUR_BF16_TARGET static inline void lemur_amx_maxima(const float *buffer, ptrdiff_t m, ptrdiff_t n,
                                                      ptrdiff_t block_row, ptrdiff_t block_column,
                                                      const int64_t *row_group, float *out, ptrdiff_t ldo)
{
    ptrdiff_t row_panels = lemur_amx_row_panels(m, block_row), column_panels = lemur_amx_column_panels(n, block_column);
    for (ptrdiff_t p = 0; p < row_panels; p++)
        for (int half = 0; half < 2; half++)
            for (int r = 0; r < 16; r++) {
                ptrdiff_t i = block_row + p * LEMUR_PANEL + half * 16 + r;
                if (i >= m)
                    return;
                float *target = out + row_group[i] * ldo;
                for (ptrdiff_t q = 0; q < column_panels; q++)
                    for (int column_half = 0; column_half < 2; column_half++) {
                        ptrdiff_t j = block_column + q * LEMUR_PANEL + column_half * 16;
                        __mmask16 lanes = lemur_lanes(n - j);
                        __m512 values = _mm512_loadu_ps(
                            lemur_amx_tile_row(buffer, column_panels, p, q, half * 2 + column_half, r));
                        _mm512_mask_storeu_ps(target + j, lanes,
                                              _mm512_max_ps(_mm512_maskz_loadu_ps(lanes, target + j), values));
                    }
            }
}

/* Rows of values (rows x dim float32) rounded to bfloat16 into out, row r
 * at out + r * stride (stride >= dim, a multiple of 32; values past dim 0),
 * then zero rows up to a multiple of LEMUR_PANEL: A tiles can be loaded from
 * them in place. largest[0] and largest[1] become the largest squared norm
 * of the rows and of their rounding errors (float32 sums in any order; the
 * differences are exact). */
LEMUR_BF16_TARGET static inline void lemur_amx_round_rows(const float *values, ptrdiff_t rows, ptrdiff_t dim,
                                                         ptrdiff_t stride, uint16_t *out, float *largest)
{
    float most = 0, most_error = 0;
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *row = values + r * dim;
        uint16_t *rounded = out + r * stride;
        __m512 squares = _mm512_setzero_ps(), errors = _mm512_setzero_ps();
        for (ptrdiff_t k = 0; k < stride; k += 32) {
            __m512 low = _mm512_maskz_loadu_ps(lemur_lanes(dim - k), row + k);
            __m512 high = _mm512_maskz_loadu_ps(lemur_lanes(dim - k - 16), row + k + 16);
            __m512i bits = (__m512i)_mm512_cvtne2ps_pbh(high, low);
            _mm512_storeu_si512((void *)(rounded + k), bits);
            __m512 low_error = _mm512_sub_ps(low, _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(bits)), 16)));
            __m512 high_error = _mm512_sub_ps(high, _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(bits, 1)), 16)));
            squares = _mm512_fmadd_ps(high, high, _mm512_fmadd_ps(low, low, squares));
            errors = _mm512_fmadd_ps(high_error, high_error, _mm512_fmadd_ps(low_error, low_error, errors));
        }
        float norm = _mm512_reduce_add_ps(squares), error = _mm512_reduce_add_ps(errors);
        /* a NaN (a value that is not finite) counts as infinite, which no later row undoes */
        if (!(norm <= most))
            most = norm == norm ? norm : INFINITY;
        if (!(error <= most_error))
            most_error = error == error ? error : INFINITY;
    }
    memset(out + rows * stride, 0, (size_t)((lemur_amx_panels(rows) * LEMUR_PANEL - rows) * stride) * sizeof(uint16_t));
    largest[0] = most;
    largest[1] = most_error;
}

/* Running maxima over rows of a product's columns, for MaxSim: A holds a
 * document's tokens (a_rows: `rows` of them, each `stride` bfloat16 values,
 * as lemur_amx_round_rows leaves them), B a query's (b_packed: its column
 * panels, `columns` tokens); maxima[j] (j < columns, room for the column
 * panels' 32 each) = max(itself, max_i <A_i, B_j>) over the rows i < rows,
 * or that max alone unless resume. c: 1,024 floats of scratch (one 32 x 32
 * piece). While the first column panel is multiplied, the next_bytes at
 * `next` (NULL: none) are prefetched, a share with each row panel. */
__attribute__((target("amx-tile,amx-bf16,avx512f")))
static inline void lemur_amx_column_maxima(const uint16_t *a_rows, ptrdiff_t rows, ptrdiff_t stride,
                                           const uint16_t *b_packed, ptrdiff_t columns, ptrdiff_t steps,
                                           int resume, const char *next, ptrdiff_t next_bytes, float *c,
                                           float *maxima)
{
    ptrdiff_t row_panels = lemur_amx_panels(rows), column_panels = lemur_amx_panels(columns), prefetched = 0;
    lemur_amx_rows layout = {2 * stride, 32, 16 * stride};
    for (ptrdiff_t q = 0; q < column_panels; q++) {
        __m512 low = resume ? _mm512_loadu_ps(maxima + q * LEMUR_PANEL) : _mm512_set1_ps(-INFINITY);
        __m512 high = resume ? _mm512_loadu_ps(maxima + q * LEMUR_PANEL + 16) : _mm512_set1_ps(-INFINITY);
        for (ptrdiff_t p = 0; p < row_panels; p++) {
            ptrdiff_t present = rows - p * LEMUR_PANEL < LEMUR_PANEL ? rows - p * LEMUR_PANEL : LEMUR_PANEL;
            if (next != NULL && q == 0)
                for (ptrdiff_t end = next_bytes * (p * LEMUR_PANEL + present) / rows; prefetched < end;
                     prefetched += 64)
                    _mm_prefetch(next + prefetched, _MM_HINT_T2);
            lemur_amx_micro(a_rows + p * LEMUR_PANEL * stride, layout, b_packed + q * steps * LEMUR_STEP_VALUES,
                            0, steps, 1, c);
            /* tiles: rows 0-15 x columns 0-15, 0-15 x 16-31, 16-31 x 0-15, 16-31 x 16-31 */
            for (ptrdiff_t r = 0; r < present; r++) {
                const float *tiles = c + (r >> 4) * 512 + (r & 15) * 16;
                low = _mm512_max_ps(low, _mm512_loadu_ps(tiles));
                high = _mm512_max_ps(high, _mm512_loadu_ps(tiles + 256));
            }
        }
        _mm512_storeu_ps(maxima + q * LEMUR_PANEL, low);
        _mm512_storeu_ps(maxima + q * LEMUR_PANEL + 16, high);
    }
}

/* The running maxima of lemur_amx_column_maxima, from the same operands,
 * with VDPBF16PS instead of tiles: where AVX512_BF16 multiplies twice as
 * fast as float32 FMA (AMD's processors) and there are no tiles. For 8 of
 * the document's rows at a time and each 32-token panel of the query: row p
 * of a step's B tile holds 16 tokens' pair p, which multiplies each row's
 * pair p broadcast, into 8 x 2 accumulators (tokens 0-15 and 16-31); each
 * accumulator adds its row's products pair by pair, in order (exact
 * products, at most two roundings a pair). Rows past `rows` (the zero rows
 * lemur_amx_round_rows leaves up to a whole panel) are computed but not
 * taken. While the first panel's rows are multiplied, the next_bytes at
 * `next` (NULL: none; the document the caller rounds next) are prefetched,
 * a share of them with each block of rows, so that reading them from memory
 * overlaps the products. */
#define LEMUR_DOT_ROWS 8
LEMUR_BF16_TARGET static inline void lemur_bf16_dot_column_maxima(const uint16_t *a_rows, ptrdiff_t rows,
                                                                  ptrdiff_t stride, const uint16_t *b_packed,
                                                                  ptrdiff_t columns, ptrdiff_t steps,
                                                                  int resume, const char *next,
                                                                  ptrdiff_t next_bytes, float *maxima)
{
    ptrdiff_t column_panels = lemur_amx_panels(columns), prefetched = 0;
    for (ptrdiff_t q = 0; q < column_panels; q++) {
        const uint16_t *b_panel = b_packed + q * steps * LEMUR_STEP_VALUES;
        __m512 low = resume ? _mm512_loadu_ps(maxima + q * LEMUR_PANEL) : _mm512_set1_ps(-INFINITY);
        __m512 high = resume ? _mm512_loadu_ps(maxima + q * LEMUR_PANEL + 16) : _mm512_set1_ps(-INFINITY);
        for (ptrdiff_t r0 = 0; r0 < rows; r0 += LEMUR_DOT_ROWS) {
            __m512 acc[LEMUR_DOT_ROWS][2];
            const int32_t *pairs[LEMUR_DOT_ROWS];
            ptrdiff_t present = rows - r0 < LEMUR_DOT_ROWS ? rows - r0 : LEMUR_DOT_ROWS;
            if (next != NULL && q == 0)
                for (ptrdiff_t end = next_bytes * (r0 + present) / rows; prefetched < end; prefetched += 64)
                    _mm_prefetch(next + prefetched, _MM_HINT_T2);
            for (int j = 0; j < LEMUR_DOT_ROWS; j++) {
                acc[j][0] = _mm512_setzero_ps();
                acc[j][1] = _mm512_setzero_ps();
                pairs[j] = (const int32_t *)(a_rows + (r0 + j) * stride);
            }
            for (ptrdiff_t step = 0; step < steps; step++) {
                const uint16_t *b = b_panel + step * LEMUR_STEP_VALUES;
                for (int p = 0; p < 16; p++) {
                    __m512bh tokens_low = (__m512bh)_mm512_loadu_si512((const void *)(b + p * 32));
                    __m512bh tokens_high =
                        (__m512bh)_mm512_loadu_si512((const void *)(b + LEMUR_TILE_VALUES + p * 32));
                    for (int j = 0; j < LEMUR_DOT_ROWS; j++) {
                        __m512bh pair = (__m512bh)_mm512_set1_epi32(pairs[j][step * 16 + p]);
                        acc[j][0] = _mm512_dpbf16_ps(acc[j][0], tokens_low, pair);
                        acc[j][1] = _mm512_dpbf16_ps(acc[j][1], tokens_high, pair);
                    }
                }
            }
            for (int j = 0; j < present; j++) {
                low = _mm512_max_ps(low, acc[j][0]);
                high = _mm512_max_ps(high, acc[j][1]);
            }
        }
        _mm512_storeu_ps(maxima + q * LEMUR_PANEL, low);
        _mm512_storeu_ps(maxima + q * LEMUR_PANEL + 16, high);
    }
}

#else

/* Without AMX (never called: lemur_amx_detect() says 0) */
static inline int lemur_amx_usable(int int8) { return 0; }
static inline int lemur_amx_detect(void) { return 0; }
static inline void lemur_amx_configure(int rows) {}
static inline void lemur_amx_begin(void) {}
static inline void lemur_amx_end(void) {}
static inline void lemur_amx_pack_k_contiguous(const float *source, ptrdiff_t stride, ptrdiff_t rows,
                                               ptrdiff_t depth, ptrdiff_t panel, int vnni, uint16_t *out) {}
static inline void lemur_amx_pack_k_strided(const float *source, ptrdiff_t stride, ptrdiff_t size,
                                            ptrdiff_t depth, ptrdiff_t step, int vnni, uint16_t *out) {}
static inline void lemur_amx_products(const uint16_t *a_packed, const uint16_t *b_packed, ptrdiff_t steps,
                                      ptrdiff_t m, ptrdiff_t n, ptrdiff_t block_row, ptrdiff_t block_column,
                                      float *buffer) {}
static inline void lemur_amx_store(const float *buffer, ptrdiff_t m, ptrdiff_t n, ptrdiff_t block_row,
                                   ptrdiff_t block_column, float *out, ptrdiff_t ldo, int accumulate) {}
static inline void lemur_amx_maxima(const float *buffer, ptrdiff_t m, ptrdiff_t n, ptrdiff_t block_row,
                                    ptrdiff_t block_column, const int64_t *row_group, float *out,
                                    ptrdiff_t ldo) {}
static inline void lemur_amx_column_maxima(const uint16_t *a_rows, ptrdiff_t rows, ptrdiff_t stride,
                                           const uint16_t *b_packed, ptrdiff_t columns, ptrdiff_t steps,
                                           int resume, const char *next, ptrdiff_t next_bytes, float *c,
                                           float *maxima) {}
static inline void lemur_amx_round_rows(const float *values, ptrdiff_t rows, ptrdiff_t dim, ptrdiff_t stride,
                                        uint16_t *out, float *largest) {}
static inline void lemur_bf16_dot_column_maxima(const uint16_t *a_rows, ptrdiff_t rows, ptrdiff_t stride,
                                                const uint16_t *b_packed, ptrdiff_t columns, ptrdiff_t steps,
                                                int resume, const char *next, ptrdiff_t next_bytes,
                                                float *maxima) {}

#endif

#endif

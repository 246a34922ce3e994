# cython: language_level=3, cdivision=True
"""Typed compute kernels of lemur.

Everything here computes; nothing validates. The Python layer (model.py and
friends) checks shapes, dtypes, finiteness and ranges before calling in, which
is what allows ``boundscheck=False, wraparound=False`` on the kernels below.

This file is compiled once per instruction-set level (see meson.build); the
element-wise loops are written so that the C compiler vectorises them at
whatever width the level allows:

* no libm call per element: exp, erf, tanh and friends are polynomial
  approximations built from +, *, comparisons and one integer bit trick;
* reductions keep 16 independent partial sums (one per SIMD lane), so they
  vectorise without -ffast-math and give the same result at every level.
"""

cimport cython
from cython.parallel cimport prange, threadid
from libc.math cimport fabsf, sqrtf
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from lemur._blas cimport (
    CblasNoTrans,
    CblasRowMajor,
    CblasTrans,
    scipy_cblas_sgemm,
    scipy_openblas_get_config,
    scipy_openblas_get_corename,
    scipy_openblas_get_num_threads,
    scipy_openblas_set_num_threads,
)

import numpy as np

cdef extern from *:
    """
    #include <string.h>
    #ifdef _OPENMP
    #include <omp.h>
    static int lemur_openmp_enabled(void) { return 1; }
    static int lemur_openmp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int lemur_openmp_enabled(void) { return 0; }
    static int lemur_openmp_max_threads(void) { return 1; }
    #endif
    /* Reinterprets the bits of an int32 as a float (vectorises to a no-op). */
    static inline float lemur_float_from_bits(int32_t bits)
    {
        float value;
        memcpy(&value, &bits, sizeof value);
        return value;
    }
    """
    int openmp_enabled "lemur_openmp_enabled"() noexcept nogil
    int openmp_max_threads "lemur_openmp_max_threads"() noexcept nogil
    float float_from_bits "lemur_float_from_bits"(int32_t bits) noexcept nogil


cpdef enum Activation:
    RELU = 0
    GELU = 1
    GELU_TANH = 2
    SILU = 3
    MISH = 4


cpdef enum ModelKind:
    MLP = 0
    ELM = 1


cdef enum:
    # Rows of tokens pushed through the MLP together: one GEMM per layer per
    # block, then the fused per-row pass while the block is still in L2.
    BLOCK_ROWS = 64
    # Independent partial sums in reductions (the widest SIMD register holds
    # 16 floats).
    LANES = 16

cdef float LAYER_NORM_EPS = 1e-5


# --------------------------------------------------------------------------
# Element-wise math. Each function is accurate to about one float32 rounding
# of max(1, |x|) (tests/test_kernels.py measures it against float64).
# --------------------------------------------------------------------------

# exp(x) for x in [-87, 88] with a relative error of about 1 ulp; inputs outside
# are clamped there (exp(-87) ~ 1.6e-38 stands in for smaller values, exp(88)
# ~ 1.7e38 for larger ones; the callers only add these to 1 or divide by them).
# x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its
# degree-6 Taylor polynomial, 2**n built from its exponent bits. n rounds
# x / ln2 to nearest as trunc(x / ln2 + 126.5) - 126: the argument of trunc is
# positive after clamping, and this form vectorises where a sign-dependent
# +-0.5 would be turned into a call to lroundf.
cdef inline float exp_approx(float x) noexcept nogil:
    cdef float clamped = min(max(x, <float>-87.0), <float>88.0)
    cdef float scaled = clamped * <float>1.4426950408889634
    cdef int32_t n = <int32_t>(scaled + <float>126.5) - 126
    cdef float n_float = <float>n
    cdef float r = clamped - n_float * <float>0.693359375
    r = r - n_float * <float>-2.12194440e-4
    cdef float p = <float>(1.0 / 720.0)
    p = p * r + <float>(1.0 / 120.0)
    p = p * r + <float>(1.0 / 24.0)
    p = p * r + <float>(1.0 / 6.0)
    p = p * r + <float>0.5
    p = p * r + <float>1.0
    p = p * r + <float>1.0
    return p * float_from_bits((n + 127) << 23)


# Standard normal CDF Phi(x) = erfc(-x / sqrt 2) / 2, without cancellation:
#   |z| < 1 (z = x / sqrt 2):  Phi = 1/2 + erf(z)/2, erf(z) = z + z P(z^2),
#                              P of degree 5, relative error 4e-8;
#   |z| >= 1:                  erfc(|z|) = exp(Q(|z|)), Q of degree 9 fitted to
#                              log erfc on [1, 5] (error 1.1e-8); Phi = erfc/2
#                              for x < 0 and 1 - erfc/2 for x > 0. Beyond
#                              |z| = 5, erfc(5)/2 = 8e-13 stands in for erfc.
# Coefficients: tools/fit_activation_coefficients.py.
cdef inline float normal_cdf(float x) noexcept nogil:
    cdef float z = x * <float>0.7071067811865476
    cdef float t = fabsf(z)
    cdef float s = z * z
    cdef float p = <float>-5.6605e-04
    p = p * s + <float>4.92488e-03
    p = p * s + <float>-2.67178e-02
    p = p * s + <float>1.1280415e-01
    p = p * s + <float>-3.7612358e-01
    p = p * s + <float>1.2837914e-01
    cdef float small = <float>0.5 + <float>0.5 * (z + z * p)
    cdef float u = min(t, <float>5.0)
    cdef float q = <float>-1.08160307e-07
    q = q * u + <float>4.04720686e-06
    q = q * u + <float>-6.93540205e-05
    q = q * u + <float>7.24799931e-04
    q = q * u + <float>-5.19936858e-03
    q = q * u + <float>2.73995139e-02
    q = q * u + <float>-1.11487545e-01
    q = q * u + <float>-6.30564868e-01
    q = q * u + <float>-1.13087177e+00
    q = q * u + <float>4.59173956e-04
    cdef float tail = <float>0.5 * exp_approx(q)
    cdef float large = (<float>1.0 - tail) if x > 0 else tail
    return small if t < 1 else large


# x / (1 + exp(-y)): x times the logistic sigmoid of y.
cdef inline float times_sigmoid(float x, float y) noexcept nogil:
    return x / (<float>1.0 + exp_approx(-y))


cdef inline float relu(float x) noexcept nogil:
    return x if x > 0 else <float>0.0


# GELU, exact erf form: x Phi(x) (PyTorch's nn.GELU()).
cdef inline float gelu(float x) noexcept nogil:
    return x * normal_cdf(x)


# GELU, tanh approximation (nn.GELU(approximate="tanh"), the Numba fork's):
# x (1 + tanh(u)) / 2 = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
cdef inline float gelu_tanh(float x) noexcept nogil:
    cdef float u = <float>0.7978845608028654 * (x + <float>0.044715 * x * x * x)
    return times_sigmoid(x, <float>2.0 * u)


# SiLU: x sigmoid(x).
cdef inline float silu(float x) noexcept nogil:
    return times_sigmoid(x, x)


# Mish: x tanh(softplus(x)). With e = exp(x), tanh(log(1 + e)) = n / (n + 2),
# n = e (e + 2), which keeps full relative accuracy for very negative x; for
# x > 20 the ratio is 1 in float32.
cdef inline float mish(float x) noexcept nogil:
    cdef float e = exp_approx(min(x, <float>20.0))
    cdef float n = e * (e + <float>2.0)
    return x * (n / (n + <float>2.0))


# values[j] <- activation(values[j]) for j < n, in place.
cdef void apply_activation(float *values, Py_ssize_t n, int activation) noexcept nogil:
    cdef Py_ssize_t j
    if activation == RELU:
        for j in range(n):
            values[j] = relu(values[j])
    elif activation == GELU:
        for j in range(n):
            values[j] = gelu(values[j])
    elif activation == GELU_TANH:
        for j in range(n):
            values[j] = gelu_tanh(values[j])
    elif activation == SILU:
        for j in range(n):
            values[j] = silu(values[j])
    elif activation == MISH:
        for j in range(n):
            values[j] = mish(values[j])


# --------------------------------------------------------------------------
# Row reductions with LANES partial sums.
# --------------------------------------------------------------------------

cdef inline float sum_lanes(const float *partial) noexcept nogil:
    cdef float total = 0
    cdef int lane
    for lane in range(LANES):
        total += partial[lane]
    return total


# row[j] <- row[j] * scale + shift[j] (shift may be NULL); returns sum_j row[j].
cdef float scale_shift_and_sum(float *row, float scale, const float *shift, Py_ssize_t n) noexcept nogil:
    cdef float partial[LANES]
    cdef Py_ssize_t block, lane, j, num_blocks = n // LANES
    cdef float *chunk
    cdef float total
    memset(partial, 0, sizeof(partial))
    for block in range(num_blocks):
        chunk = row + block * LANES
        if shift == NULL:
            for lane in range(LANES):
                chunk[lane] = chunk[lane] * scale
                partial[lane] += chunk[lane]
        else:
            for lane in range(LANES):
                chunk[lane] = chunk[lane] * scale + shift[block * LANES + lane]
                partial[lane] += chunk[lane]
    total = sum_lanes(partial)
    for j in range(num_blocks * LANES, n):
        row[j] = row[j] * scale + (shift[j] if shift != NULL else <float>0.0)
        total += row[j]
    return total


# sum_j (row[j] - mean)^2.
cdef float squared_deviation_sum(const float *row, float mean, Py_ssize_t n) noexcept nogil:
    cdef float partial[LANES]
    cdef Py_ssize_t block, lane, j, num_blocks = n // LANES
    cdef const float *chunk
    cdef float deviation, total
    memset(partial, 0, sizeof(partial))
    for block in range(num_blocks):
        chunk = row + block * LANES
        for lane in range(LANES):
            deviation = chunk[lane] - mean
            partial[lane] += deviation * deviation
    total = sum_lanes(partial)
    for j in range(num_blocks * LANES, n):
        deviation = row[j] - mean
        total += deviation * deviation
    return total


# LayerNorm over one row in place, population variance, eps = 1e-5;
# gamma/beta may be NULL (no affine part). The row's sum is passed in.
cdef void layer_norm_row(float *row, float row_sum, const float *gamma, const float *beta,
                         Py_ssize_t n) noexcept nogil:
    cdef float mean = row_sum / n
    cdef float variance = squared_deviation_sum(row, mean, n) / n
    cdef float inverse_std = <float>1.0 / sqrtf(variance + LAYER_NORM_EPS)
    cdef Py_ssize_t j
    if gamma == NULL:
        for j in range(n):
            row[j] = (row[j] - mean) * inverse_std
    else:
        for j in range(n):
            row[j] = (row[j] - mean) * inverse_std * gamma[j] + beta[j]


# out[j] += row[j].
cdef inline void add_row(float *out, const float *row, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        out[j] += row[j]


# --------------------------------------------------------------------------
# The feature map psi.
# --------------------------------------------------------------------------

ctypedef struct DenseLayer:
    const float *weight      # (output_dim, input_dim), row-major (nn.Linear layout)
    const float *bias        # (output_dim,), or NULL
    const float *ln_weight   # (output_dim,), or NULL: LayerNorm without affine
    const float *ln_bias     # (output_dim,), or NULL
    int input_dim
    int output_dim


ctypedef struct FeatureMap:
    const DenseLayer *layers
    int num_layers
    int kind                 # ModelKind
    int activation           # Activation
    float elm_scale          # sqrt(2 / h) for ELM models
    Py_ssize_t max_width     # widest layer output


# Finishes one row of layer output in place, after its GEMM:
#   MLP: row <- act(LayerNorm(row + bias) * gamma + beta)
#   ELM: row <- LayerNorm_no_affine(elm_scale * act(row))
cdef void finish_row(float *row, const DenseLayer *layer, const FeatureMap *model) noexcept nogil:
    cdef Py_ssize_t n = layer.output_dim
    cdef float row_sum
    if model.kind == ELM:
        apply_activation(row, n, model.activation)
        row_sum = scale_shift_and_sum(row, model.elm_scale, NULL, n)
        layer_norm_row(row, row_sum, NULL, NULL, n)
    else:
        row_sum = scale_shift_and_sum(row, 1.0, layer.bias, n)
        layer_norm_row(row, row_sum, layer.ln_weight, layer.ln_bias, n)
        apply_activation(row, n, model.activation)


# psi of rows [row_start, row_start + num_rows) of tokens (at most BLOCK_ROWS).
# One single-threaded GEMM per layer into a thread-local buffer, then the fused
# per-row pass. Returns the buffer holding the last layer's rows, unless
# unpooled_out is given: the last layer then lands in unpooled_out directly.
cdef float *psi_block(const FeatureMap *model, const float *tokens, Py_ssize_t row_start,
                      Py_ssize_t num_rows, float *workspace, float *unpooled_out) noexcept nogil:
    cdef const float *layer_input = tokens + row_start * model.layers[0].input_dim
    cdef float *layer_output
    cdef const DenseLayer *layer
    cdef int layer_index
    cdef Py_ssize_t row
    for layer_index in range(model.num_layers):
        layer = &model.layers[layer_index]
        if layer_index == model.num_layers - 1 and unpooled_out != NULL:
            layer_output = unpooled_out + row_start * layer.output_dim
        else:
            layer_output = workspace + (layer_index % 2) * BLOCK_ROWS * model.max_width
        scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                          <int>num_rows, layer.output_dim, layer.input_dim,
                          1.0, layer_input, layer.input_dim,
                          layer.weight, layer.input_dim,
                          0.0, layer_output, layer.output_dim)
        for row in range(num_rows):
            finish_row(layer_output + row * layer.output_dim, layer, model)
        layer_input = layer_output
    return layer_output


# Pooled features of queries [first_query, end_query), whose tokens are
# consecutive: out[q] = sum of psi over query q's tokens / pool_divisor.
cdef void pooled_query_group(const FeatureMap *model, const float *tokens,
                             const int64_t *query_offsets, Py_ssize_t first_query,
                             Py_ssize_t end_query, float pool_divisor, float *out,
                             float *workspace) noexcept nogil:
    cdef Py_ssize_t width = model.layers[model.num_layers - 1].output_dim
    cdef Py_ssize_t query = first_query
    cdef Py_ssize_t row_start, num_rows, row, token, j
    cdef Py_ssize_t group_end = query_offsets[end_query]
    cdef float *block
    cdef float *query_out
    memset(out + first_query * width, 0, (end_query - first_query) * width * sizeof(float))
    row_start = query_offsets[first_query]
    while row_start < group_end:
        num_rows = min(BLOCK_ROWS, group_end - row_start)
        block = psi_block(model, tokens, row_start, num_rows, workspace, NULL)
        for row in range(num_rows):
            token = row_start + row
            while query_offsets[query + 1] <= token:
                query += 1
            add_row(out + query * width, block + row * width, width)
        row_start += num_rows
    for query in range(first_query, end_query):
        query_out = out + query * width
        for j in range(width):
            query_out[j] = query_out[j] / pool_divisor


# Splits queries into groups of consecutive queries holding at most BLOCK_ROWS
# tokens together (a longer query is a group of its own). Groups are the unit
# of parallel work, each owns its rows of the output, and the split does not
# depend on the number of threads, so results do not either.
cdef Py_ssize_t split_query_groups(const int64_t *query_offsets, Py_ssize_t num_queries,
                                   int64_t *group_starts) noexcept nogil:
    cdef Py_ssize_t num_groups = 0
    cdef Py_ssize_t start = 0, end
    while start < num_queries:
        end = start + 1
        while end < num_queries and query_offsets[end + 1] - query_offsets[start] <= BLOCK_ROWS:
            end += 1
        group_starts[num_groups] = start
        num_groups += 1
        start = end
    group_starts[num_groups] = num_queries
    return num_groups


cdef class _LayerViews:
    """Keeps the memoryviews of a model's arrays and the DenseLayer table
    pointing into them alive while a kernel runs."""
    cdef list views
    cdef DenseLayer *table
    cdef FeatureMap model

    def __cinit__(self, list layers, int kind, int activation, float elm_scale):
        cdef const float[:, ::1] weight
        cdef const float[::1] vector
        cdef Py_ssize_t index
        self.views = []
        self.table = <DenseLayer *>malloc(max(1, len(layers)) * sizeof(DenseLayer))
        if self.table == NULL:
            raise MemoryError()
        self.model.max_width = 0
        for index, (weight_array, bias, ln_weight, ln_bias) in enumerate(layers):
            weight = weight_array
            self.views.append(weight)
            self.table[index].weight = &weight[0, 0]
            self.table[index].output_dim = weight.shape[0]
            self.table[index].input_dim = weight.shape[1]
            self.model.max_width = max(self.model.max_width, weight.shape[0])
            self.table[index].bias = NULL
            self.table[index].ln_weight = NULL
            self.table[index].ln_bias = NULL
            if bias is not None:
                vector = bias
                self.views.append(vector)
                self.table[index].bias = &vector[0]
            if ln_weight is not None:
                vector = ln_weight
                self.views.append(vector)
                self.table[index].ln_weight = &vector[0]
                vector = ln_bias
                self.views.append(vector)
                self.table[index].ln_bias = &vector[0]
        self.model.layers = self.table
        self.model.num_layers = len(layers)
        self.model.kind = kind
        self.model.activation = activation
        self.model.elm_scale = elm_scale

    def __dealloc__(self):
        free(self.table)


cdef class BlasThreads:
    """Context manager: OpenBLAS runs with `num_threads` threads inside it and
    with its previous setting after. Kernels that call BLAS from inside a
    prange region enter it with 1, so OpenBLAS never adds its own threads to
    OpenMP's."""
    cdef int num_threads
    cdef int previous

    def __cinit__(self, int num_threads):
        self.num_threads = num_threads

    def __enter__(self):
        self.previous = scipy_openblas_get_num_threads()
        scipy_openblas_set_num_threads(self.num_threads)
        return self

    def __exit__(self, *exc_info):
        scipy_openblas_set_num_threads(self.previous)
        return False


def feature_workspace(object layers, int num_threads):
    """Scratch memory for compute_features: two row blocks per thread."""
    cdef Py_ssize_t max_width = max(layer[0].shape[0] for layer in layers)
    cdef Py_ssize_t per_thread = 2 * BLOCK_ROWS * max_width
    per_thread = (per_thread + LANES - 1) // LANES * LANES   # own cache lines per thread
    return np.empty((num_threads, per_thread), dtype=np.float32)


# Features of a ragged batch of queries (pooled) or of every token (unpooled).
#   tokens:         (num_tokens, input_dim) float32
#   query_offsets:  (num_queries + 1,) int64; query q owns tokens
#                   [query_offsets[q], query_offsets[q + 1])
#   pool_divisor:   > 0: out (num_queries, h) = per-query sum of psi / divisor;
#                   0: out (num_tokens, h) = psi of every token
#   workspace:      feature_workspace(layers, num_threads)
# Parallel over groups of whole queries (pooled) or blocks of BLOCK_ROWS tokens
# (unpooled), dynamic schedule; each thread keeps its blocks in its own slice
# of workspace and runs its GEMMs with single-threaded BLAS.
@cython.boundscheck(False)
@cython.wraparound(False)
def compute_features(const float[:, ::1] tokens, const int64_t[::1] query_offsets,
                     list layers, int kind, int activation, float elm_scale,
                     float pool_divisor, float[:, ::1] out, float[:, ::1] workspace,
                     int num_threads):
    cdef _LayerViews layer_views = _LayerViews(layers, kind, activation, elm_scale)
    cdef const FeatureMap *model = &layer_views.model
    cdef Py_ssize_t num_tokens = tokens.shape[0]
    cdef Py_ssize_t num_queries = query_offsets.shape[0] - 1
    cdef Py_ssize_t num_groups, group, row_start
    cdef int64_t[::1] group_starts
    cdef float *thread_workspace
    cdef const float *tokens_data = &tokens[0, 0] if num_tokens > 0 else NULL
    cdef float *out_data = &out[0, 0]
    with BlasThreads(1):
        if pool_divisor > 0:
            group_starts = np.empty(num_queries + 1, dtype=np.int64)
            with nogil:
                num_groups = split_query_groups(&query_offsets[0], num_queries, &group_starts[0])
                for group in prange(num_groups, num_threads=num_threads, schedule='dynamic'):
                    thread_workspace = &workspace[threadid(), 0]
                    pooled_query_group(model, tokens_data, &query_offsets[0],
                                       group_starts[group], group_starts[group + 1],
                                       pool_divisor, out_data, thread_workspace)
        else:
            num_groups = (num_tokens + BLOCK_ROWS - 1) // BLOCK_ROWS
            with nogil:
                for group in prange(num_groups, num_threads=num_threads, schedule='dynamic'):
                    thread_workspace = &workspace[threadid(), 0]
                    row_start = group * BLOCK_ROWS
                    psi_block(model, tokens_data, row_start,
                              min(BLOCK_ROWS, num_tokens - row_start),
                              thread_workspace, out_data)


# out (m, n) = a (m, k) @ b (n, k)^T in one BLAS call with num_threads threads.
@cython.boundscheck(False)
@cython.wraparound(False)
def gemm_nt(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] out, int num_threads):
    cdef int m = <int>a.shape[0], n = <int>b.shape[0], k = <int>a.shape[1]
    if m == 0 or n == 0:
        return
    with BlasThreads(num_threads):
        with nogil:
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k,
                              1.0, &a[0, 0], k, &b[0, 0], k, 0.0, &out[0, 0], n)


# --------------------------------------------------------------------------
# Checks and introspection.
# --------------------------------------------------------------------------

# Whether all n values are finite: sums (v - v), which is 0 for finite v and
# NaN for NaN or +-inf.
cdef bint all_finite(const float *values, Py_ssize_t n) noexcept nogil:
    cdef float partial[LANES]
    cdef Py_ssize_t block, lane, j, num_blocks = n // LANES
    cdef const float *chunk
    cdef float total
    memset(partial, 0, sizeof(partial))
    for block in range(num_blocks):
        chunk = values + block * LANES
        for lane in range(LANES):
            partial[lane] += chunk[lane] - chunk[lane]
    total = sum_lanes(partial)
    for j in range(num_blocks * LANES, n):
        total += values[j] - values[j]
    return total == 0


# Index of the first row of values (num_rows, row_length) holding a NaN or an
# infinity, or -1. Parallel over blocks of rows; each block records whether it
# is clean, then the first dirty block is searched row by row.
@cython.boundscheck(False)
@cython.wraparound(False)
def first_nonfinite_row(const float[:, ::1] values, int num_threads):
    cdef Py_ssize_t num_rows = values.shape[0], row_length = values.shape[1]
    cdef Py_ssize_t rows_per_block = max(1, 65536 // max(1, row_length))
    cdef Py_ssize_t num_blocks = (num_rows + rows_per_block - 1) // rows_per_block
    cdef Py_ssize_t block, row, start, stop
    cdef unsigned char[::1] block_clean = np.ones(max(1, num_blocks), dtype=np.uint8)
    if num_rows == 0 or row_length == 0:
        return -1
    with nogil:
        for block in prange(num_blocks, num_threads=num_threads, schedule='static'):
            start = block * rows_per_block
            stop = min(num_rows, start + rows_per_block)
            block_clean[block] = all_finite(&values[start, 0], (stop - start) * row_length)
    for block in range(num_blocks):
        if not block_clean[block]:
            for row in range(block * rows_per_block, num_rows):
                if not all_finite(&values[row, 0], row_length):
                    return row
    return -1


@cython.boundscheck(False)
@cython.wraparound(False)
def activation_inplace(float[::1] values, int activation):
    """values[j] <- activation(values[j]); for testing the approximations."""
    with nogil:
        apply_activation(&values[0], values.shape[0], activation)


@cython.boundscheck(False)
@cython.wraparound(False)
def exp_inplace(float[::1] values):
    """values[j] <- exp(values[j]) (the kernels' exp); for testing."""
    cdef Py_ssize_t j
    with nogil:
        for j in range(values.shape[0]):
            values[j] = exp_approx(values[j])


def blas_info():
    """OpenBLAS's own description: core type in use, build config, threads."""
    return {
        "corename": scipy_openblas_get_corename().decode("ascii", "replace"),
        "config": scipy_openblas_get_config().decode("ascii", "replace").strip(),
        "num_threads": scipy_openblas_get_num_threads(),
    }


def openmp_info():
    """Whether this module was compiled with OpenMP, and its thread limit."""
    return {"enabled": bool(openmp_enabled()), "max_threads": openmp_max_threads()}

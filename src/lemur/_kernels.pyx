# cython: language_level=3, cdivision=True
"""Typed compute kernels of lemur.

Everything here computes; nothing validates. The Python layer (model.py,
index.py and friends) checks shapes, dtypes, finiteness and ranges before
calling in, which is what allows ``boundscheck=False, wraparound=False`` on the
kernels below.

This file is compiled once per instruction-set level (see meson.build), and so
are the inline helpers it cimports from _vector_math.pxd and _selection.pxd.
"""

cimport cython
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t
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
from lemur._vector_math cimport (
    GELU,
    GELU_TANH,
    LANES,
    MISH,
    RELU,
    SILU,
    add_row,
    all_finite,
    apply_activation,
    exp_approx,
    layer_norm_row,
    scale_shift_and_sum,
)

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int lemur_openmp_enabled(void) { return 1; }
    static int lemur_openmp_max_threads(void) { return omp_get_max_threads(); }
    #else
    static int lemur_openmp_enabled(void) { return 0; }
    static int lemur_openmp_max_threads(void) { return 1; }
    #endif
    """
    int openmp_enabled "lemur_openmp_enabled"() noexcept nogil
    int openmp_max_threads "lemur_openmp_max_threads"() noexcept nogil


#: Activation name -> code, as the kernels take them.
ACTIVATION_CODES = {"relu": RELU, "gelu": GELU, "gelu-tanh": GELU_TANH, "silu": SILU, "mish": MISH}


cpdef enum ModelKind:
    MLP = 0
    ELM = 1


cdef enum:
    # Rows of tokens pushed through the MLP together: one GEMM per layer per
    # block, then the fused per-row pass while the block is still in L2.
    BLOCK_ROWS = 64


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

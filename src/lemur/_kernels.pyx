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
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from lemur._blas cimport (
    LAPACK_ROW_MAJOR,
    CblasNoTrans,
    CblasRowMajor,
    CblasTrans,
    CblasUpper,
    scipy_cblas_dgemm,
    scipy_cblas_dsyrk,
    scipy_cblas_sgemm,
    scipy_LAPACKE_dsyevd,
    scipy_openblas_get_config,
    scipy_openblas_get_corename,
    scipy_openblas_get_num_threads,
    scipy_openblas_set_num_threads,
)
from lemur._selection cimport push_pair, sort_best_first
from lemur._simd cimport (
    DOC_ROWS,
    TILE_DOCS,
    TILE_QUERIES,
    VECTOR_FLOATS,
    lemur_vector,
    prefetch,
    vector_fma,
    vector_fma_lanes,
    vector_load,
    vector_max,
    vector_store,
    vector_sum,
    vector_zero,
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
    dot_product,
    exp_approx,
    layer_norm_row,
    scale_shift_and_sum,
)

import numpy as np

from lemur._scratch import scratch

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
    return scratch("feature blocks", (num_threads, per_thread), np.float32)


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


# out (m, n) = a (m, k) . b, where b is (n, k) used transposed (b_transposed)
# or (k, n): one BLAS call with num_threads threads.
@cython.boundscheck(False)
@cython.wraparound(False)
def gemm(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] out, bint b_transposed,
         int num_threads):
    cdef int m = <int>out.shape[0], n = <int>out.shape[1], k = <int>a.shape[1]
    if m == 0 or n == 0:
        return
    with BlasThreads(num_threads):
        with nogil:
            scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans,
                              CblasTrans if b_transposed else CblasNoTrans, m, n, k,
                              1.0, &a[0, 0], k, &b[0, 0], k if b_transposed else n,
                              0.0, &out[0, 0], n)


# --------------------------------------------------------------------------
# First stage: the k largest inner products with the rows of W.
# --------------------------------------------------------------------------

cdef enum:
    # Batches of at most this many queries score W with the streaming dot
    # kernel (each row of W read once, like a GEMV); larger ones with the tiles.
    SMALL_BATCH = 4
    # Rows of W scored at once: small batches stream large blocks; larger
    # batches take blocks small enough to stay in L2 while every query tile
    # passes over them (48 rows of h = 2048: 384 KiB).
    SMALL_BATCH_DOC_BLOCK = 1024
    TILED_DOC_BLOCK = 48
    # Queries per unit of work when the batch is split over threads.
    QUERY_CHUNK = 64


# out[q * out_stride + j] = <features[q], W_rows[j]> for q < num_queries and
# j < num_docs (at most TILE_QUERIES x TILE_DOCS), rows h floats apart. A
# register tile: one accumulator vector of partial sums per (query, document),
# one vector load per query and per document for each VECTOR_FLOATS of h, and
# TILE_QUERIES x TILE_DOCS multiply-adds. A partial tile repeats its last row
# (and does not store it) so that the loops keep their fixed trip counts.
cdef void score_tile(const float *features, Py_ssize_t num_queries, const float *W_rows,
                     Py_ssize_t num_docs, Py_ssize_t h, float *out,
                     Py_ssize_t out_stride) noexcept nogil:
    cdef lemur_vector accumulators[TILE_QUERIES * TILE_DOCS]
    cdef lemur_vector feature_part[TILE_QUERIES]
    cdef lemur_vector row_part
    cdef const float *query_rows[TILE_QUERIES]
    cdef const float *doc_rows[TILE_DOCS]
    cdef Py_ssize_t query, doc, step, j, offset
    cdef float total
    for query in range(TILE_QUERIES):
        query_rows[query] = features + min(query, num_queries - 1) * h
    for doc in range(TILE_DOCS):
        doc_rows[doc] = W_rows + min(doc, num_docs - 1) * h
    for query in range(TILE_QUERIES * TILE_DOCS):
        accumulators[query] = vector_zero()
    for step in range(h // VECTOR_FLOATS):
        offset = step * VECTOR_FLOATS
        for query in range(TILE_QUERIES):
            feature_part[query] = vector_load(query_rows[query] + offset)
        for doc in range(TILE_DOCS):
            row_part = vector_load(doc_rows[doc] + offset)
            for query in range(TILE_QUERIES):
                accumulators[query * TILE_DOCS + doc] = vector_fma_lanes(
                    accumulators[query * TILE_DOCS + doc], feature_part[query], row_part)
    for query in range(num_queries):
        for doc in range(num_docs):
            total = vector_sum(accumulators[query * TILE_DOCS + doc])
            for j in range((h // VECTOR_FLOATS) * VECTOR_FLOATS, h):
                total += query_rows[query][j] * doc_rows[doc][j]
            out[query * out_stride + doc] = total


# scores (num_queries, num_docs) = features (num_queries, h) . W_block (num_docs, h)^T
cdef void score_block(const float *features, Py_ssize_t num_queries, const float *W_block,
                      Py_ssize_t num_docs, Py_ssize_t h, float *scores) noexcept nogil:
    cdef Py_ssize_t doc, query
    cdef const float *row
    if num_queries <= SMALL_BATCH:
        for doc in range(num_docs):
            row = W_block + doc * h
            for query in range(num_queries):
                scores[query * num_docs + doc] = dot_product(features + query * h, row, h)
        return
    query = 0
    while query < num_queries:
        doc = 0
        while doc < num_docs:
            score_tile(features + query * h, min(TILE_QUERIES, num_queries - query),
                       W_block + doc * h, min(TILE_DOCS, num_docs - doc), h,
                       scores + query * num_docs + doc, num_docs)
            doc += TILE_DOCS
        query += TILE_QUERIES


# Pushes the scores of documents first_doc, first_doc + 1, ... into a k-best
# list; returns its new size. Most scores fall below the list's worst and cost
# one comparison.
cdef Py_ssize_t push_scores(const float *scores, Py_ssize_t num_docs, int64_t first_doc,
                            float *best_scores, int64_t *best_indices, Py_ssize_t size,
                            Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t doc
    cdef float threshold = best_scores[0] if size == k else -INFINITY
    for doc in range(num_docs):
        if scores[doc] >= threshold:
            size = push_pair(best_scores, best_indices, size, k, scores[doc], first_doc + doc)
            if size == k:
                threshold = best_scores[0]
    return size


# Sorts a k-best list best first and pads it to k with (-inf, -1).
cdef void finish_list(float *best_scores, int64_t *best_indices, Py_ssize_t size,
                      Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t position
    sort_best_first(best_scores, best_indices, size)
    for position in range(size, k):
        best_scores[position] = -INFINITY
        best_indices[position] = -1


# The k best documents of the queries [first_query, first_query + num_queries)
# over document blocks [first_block, end_block), into k-best lists of
# `list_stride` entries each (query i's list at i * list_stride).
cdef void scan_documents(const float *features, Py_ssize_t num_queries, const float *W,
                         Py_ssize_t num_docs, Py_ssize_t h, Py_ssize_t doc_block,
                         Py_ssize_t first_block, Py_ssize_t end_block, Py_ssize_t k,
                         float *scores, float *best_scores, int64_t *best_indices,
                         Py_ssize_t *sizes, Py_ssize_t list_stride) noexcept nogil:
    cdef Py_ssize_t block, query, block_docs
    for block in range(first_block, end_block):
        block_docs = min(doc_block, num_docs - block * doc_block)
        score_block(features, num_queries, W + block * doc_block * h, block_docs, h, scores)
        for query in range(num_queries):
            sizes[query] = push_scores(scores + query * block_docs, block_docs, block * doc_block,
                                       best_scores + query * list_stride,
                                       best_indices + query * list_stride, sizes[query], k)


def top_k_workspace_shape(Py_ssize_t num_queries, Py_ssize_t num_docs, Py_ssize_t k,
                          int num_threads, Py_ssize_t budget_bytes):
    """Plan a top-k run: (parallel_on_queries, query_chunk, doc_block).

    Many queries (at least 4 * QUERY_CHUNK per thread): threads take chunks of
    QUERY_CHUNK queries and scan all of W. Fewer: threads take blocks of W's
    rows and keep k-best lists of their own for a chunk of queries, merged at
    the end; the chunk is as large as `budget_bytes` allows for the score
    blocks and lists of all threads, so W is read as few times as possible.
    """
    cdef Py_ssize_t doc_block = (num_docs + 4 * num_threads - 1) // (4 * num_threads)
    doc_block = min(SMALL_BATCH_DOC_BLOCK, max(16, (doc_block + 15) // 16 * 16))
    if num_queries > SMALL_BATCH:
        doc_block = TILED_DOC_BLOCK
    if num_queries >= 4 * QUERY_CHUNK * num_threads:
        return True, QUERY_CHUNK, doc_block
    per_query = num_threads * (doc_block * 4 + k * 12)
    chunk = max(1, min(num_queries, budget_bytes // per_query))
    return False, chunk, doc_block


# The k (< num_docs) largest inner products of each query's features with the
# rows of W, best first (ties: smaller index first).
#   features: (num_queries, h); W: (num_docs, h)
#   out_indices (int64), out_scores (float32): (num_queries, k)
# Parallel over chunks of queries when there are many; otherwise over blocks of
# W's rows, with thread-local k-best lists merged at the end. Each thread scores
# one block at a time into its own buffer (score_block: no BLAS), so the full
# score matrix is never held.
@cython.boundscheck(False)
@cython.wraparound(False)
def top_k_inner_products(const float[:, ::1] features, const float[:, ::1] W, Py_ssize_t k,
                         int64_t[:, ::1] out_indices, float[:, ::1] out_scores,
                         int num_threads, Py_ssize_t budget_bytes):
    cdef Py_ssize_t num_queries = features.shape[0], num_docs = W.shape[0], h = W.shape[1]
    cdef Py_ssize_t query_chunk, doc_block, num_blocks, num_chunks, chunk, start, count
    cdef Py_ssize_t block, query, thread, position
    cdef bint on_queries
    cdef float[:, ::1] buffers
    cdef float[:, :, ::1] list_scores
    cdef int64_t[:, :, ::1] list_indices
    cdef Py_ssize_t[:, ::1] sizes
    cdef Py_ssize_t size
    on_queries, query_chunk, doc_block = top_k_workspace_shape(
        num_queries, num_docs, k, num_threads, budget_bytes)
    num_blocks = (num_docs + doc_block - 1) // doc_block
    buffers = scratch("score blocks", (num_threads, query_chunk * doc_block), np.float32)
    if on_queries:
        sizes = scratch("list sizes", (num_queries, 1), np.intp)
        sizes[:, :] = 0
        num_chunks = (num_queries + query_chunk - 1) // query_chunk
        with nogil:
            for chunk in prange(num_chunks, num_threads=num_threads, schedule='dynamic'):
                start = chunk * query_chunk
                count = min(query_chunk, num_queries - start)
                scan_documents(&features[start, 0], count, &W[0, 0], num_docs, h, doc_block,
                               0, num_blocks, k, &buffers[threadid(), 0],
                               &out_scores[start, 0], &out_indices[start, 0],
                               &sizes[start, 0], k)
                for query in range(start, start + count):
                    finish_list(&out_scores[query, 0], &out_indices[query, 0],
                                sizes[query, 0], k)
        return
    list_scores = scratch("list scores", (num_threads, query_chunk, k), np.float32)
    list_indices = scratch("list indices", (num_threads, query_chunk, k), np.int64)
    sizes = scratch("list sizes", (num_threads, query_chunk), np.intp)
    for start in range(0, num_queries, query_chunk):
        count = min(query_chunk, num_queries - start)
        sizes[:, :] = 0
        with nogil:
            for block in prange(num_blocks, num_threads=num_threads, schedule='dynamic'):
                thread = threadid()
                scan_documents(&features[start, 0], count, &W[0, 0], num_docs, h, doc_block,
                               block, block + 1, k, &buffers[thread, 0],
                               &list_scores[thread, 0, 0], &list_indices[thread, 0, 0],
                               &sizes[thread, 0], k)
            for query in prange(count, num_threads=num_threads, schedule='static'):
                size = 0
                for thread in range(num_threads):
                    for position in range(sizes[thread, query]):
                        size = push_pair(&out_scores[start + query, 0],
                                         &out_indices[start + query, 0], size, k,
                                         list_scores[thread, query, position],
                                         list_indices[thread, query, position])
                finish_list(&out_scores[start + query, 0], &out_indices[start + query, 0],
                            size, k)


# --------------------------------------------------------------------------
# Exact MaxSim and rerank.
# --------------------------------------------------------------------------

cdef enum:
    # Query tokens per chunk: queries are stored transposed, chunk by chunk.
    QUERY_LANES = 16
    # Chunks whose running maxima are kept at once (64 query tokens): each
    # block of document rows is loaded once for all of them.
    CHUNK_BATCH = 4
    # Vector registers per chunk row; the largest value, for the array sizes.
    MAX_VECTORS_PER_CHUNK = 4
    CACHE_LINE = 64


# Running maxima over a document's tokens of <query token, document token>,
# for query chunks [first_chunk, end_chunk) (at most CHUNK_BATCH). A chunk is
# (dim, QUERY_LANES): 16 query tokens transposed. Register blocking: for
# DOC_ROWS document tokens at a time, each chunk row is loaded once into
# vector registers and multiplied by each of the DOC_ROWS values, into
# DOC_ROWS x (QUERY_LANES / VECTOR_FLOATS) accumulators. best holds
# (end_chunk - first_chunk) x QUERY_LANES maxima. While it works, it prefetches
# the same stretch of next_doc (NULL: none; next_doc_bytes long), the document
# the caller scores next.
cdef void chunk_maxima(const float *chunks, Py_ssize_t first_chunk, Py_ssize_t end_chunk,
                       const float *doc, Py_ssize_t num_doc_tokens, Py_ssize_t dim,
                       const char *next_doc, Py_ssize_t next_doc_bytes,
                       float *best) noexcept nogil:
    cdef lemur_vector accumulators[DOC_ROWS * MAX_VECTORS_PER_CHUNK]
    cdef lemur_vector query_row[MAX_VECTORS_PER_CHUNK]
    cdef lemur_vector top
    cdef Py_ssize_t parts = QUERY_LANES // VECTOR_FLOATS
    cdef Py_ssize_t token = 0, block_rows, row, part, i, chunk, offset
    cdef const float *chunk_data
    cdef const float *doc_rows
    cdef float *chunk_best
    cdef float value
    for i in range((end_chunk - first_chunk) * QUERY_LANES):
        best[i] = -INFINITY
    while token < num_doc_tokens:
        doc_rows = doc + token * dim
        block_rows = DOC_ROWS if token + DOC_ROWS <= num_doc_tokens else 1
        if next_doc != NULL:
            offset = token * dim * sizeof(float)
            while offset < min((token + block_rows) * dim * sizeof(float), next_doc_bytes):
                prefetch(next_doc + offset)
                offset += CACHE_LINE
        for chunk in range(first_chunk, end_chunk):
            chunk_data = chunks + chunk * dim * QUERY_LANES
            chunk_best = best + (chunk - first_chunk) * QUERY_LANES
            if block_rows == DOC_ROWS:
                for part in range(DOC_ROWS * parts):
                    accumulators[part] = vector_zero()
                for i in range(dim):
                    for part in range(parts):
                        query_row[part] = vector_load(chunk_data + i * QUERY_LANES + part * VECTOR_FLOATS)
                    for row in range(DOC_ROWS):
                        value = doc_rows[row * dim + i]
                        for part in range(parts):
                            accumulators[row * parts + part] = vector_fma(
                                accumulators[row * parts + part], query_row[part], value)
            else:
                for part in range(parts):
                    accumulators[part] = vector_zero()
                for i in range(dim):
                    value = doc_rows[i]
                    for part in range(parts):
                        accumulators[part] = vector_fma(
                            accumulators[part],
                            vector_load(chunk_data + i * QUERY_LANES + part * VECTOR_FLOATS), value)
            for part in range(parts):
                top = vector_load(chunk_best + part * VECTOR_FLOATS)
                for row in range(block_rows):
                    top = vector_max(accumulators[row * parts + part], top)
                vector_store(chunk_best + part * VECTOR_FLOATS, top)
        token += block_rows


# Query tokens (num_tokens, dim) -> chunks of QUERY_LANES tokens, each stored
# transposed as (dim, QUERY_LANES) and zero-padded past the last token.
cdef void transpose_query(const float *tokens, Py_ssize_t num_tokens, Py_ssize_t dim,
                          float *chunks) noexcept nogil:
    cdef Py_ssize_t token, i, num_chunks = (num_tokens + QUERY_LANES - 1) // QUERY_LANES
    memset(chunks, 0, num_chunks * dim * QUERY_LANES * sizeof(float))
    for token in range(num_tokens):
        for i in range(dim):
            chunks[((token // QUERY_LANES) * dim + i) * QUERY_LANES + token % QUERY_LANES] = \
                tokens[token * dim + i]


# MaxSim of one query (transposed chunks, num_tokens >= 1) with one document:
# the sum over the query's tokens, in order, of the max over the document's
# tokens. Prefetches next_doc (see chunk_maxima) during the first batch.
cdef float maxsim_pair(const float *chunks, Py_ssize_t num_tokens, const float *doc,
                       Py_ssize_t num_doc_tokens, Py_ssize_t dim, const char *next_doc,
                       Py_ssize_t next_doc_bytes) noexcept nogil:
    cdef float best[CHUNK_BATCH * QUERY_LANES]
    cdef float total = 0
    cdef Py_ssize_t num_chunks = (num_tokens + QUERY_LANES - 1) // QUERY_LANES
    cdef Py_ssize_t first = 0, end, lane
    while first < num_chunks:
        end = min(first + CHUNK_BATCH, num_chunks)
        chunk_maxima(chunks, first, end, doc, num_doc_tokens, dim,
                     next_doc if first == 0 else NULL, next_doc_bytes, best)
        for lane in range(min((end - first) * QUERY_LANES, num_tokens - first * QUERY_LANES)):
            total += best[lane]
        first = end
    return total


# Exact MaxSim of each query with each of its candidate documents.
#   query_tokens (total, dim), query_offsets (num_queries + 1)
#   doc_tokens (total, dim), doc_offsets (num_docs + 1): every document has >= 1 token
#   candidates (num_queries, num_candidates) int64: ids in [0, num_docs), or -1
#   out (num_queries, num_candidates): the score; -inf for -1; 0 for a query
#   without tokens
# The (query, candidate) pairs are grouped by document (a stable argsort of
# the ids), and the groups are the parallel work units (dynamic schedule):
# each document is read from memory once however many queries have it as a
# candidate, and the next group's document is prefetched while the last pair
# of a group is scored. Queries are transposed once, up front.
@cython.boundscheck(False)
@cython.wraparound(False)
def maxsim_scores(const float[:, ::1] query_tokens, const int64_t[::1] query_offsets,
                  const float[:, ::1] doc_tokens, const int64_t[::1] doc_offsets,
                  const int64_t[:, ::1] candidates, float[:, ::1] out, int num_threads):
    cdef Py_ssize_t num_queries = candidates.shape[0], num_candidates = candidates.shape[1]
    cdef Py_ssize_t num_pairs = num_queries * num_candidates
    cdef Py_ssize_t dim = doc_tokens.shape[1]
    cdef Py_ssize_t query, group, position, pair, num_tokens, num_groups
    cdef int64_t doc, next_doc
    cdef const char *next_doc_data
    cdef Py_ssize_t next_doc_bytes
    cdef int64_t[::1] chunk_offsets = np.empty(num_queries + 1, dtype=np.int64)
    cdef float[::1] chunks
    cdef const int64_t[::1] flat_candidates
    cdef const int64_t[::1] order
    cdef const int64_t[::1] group_starts
    cdef float[::1] flat_out
    if num_pairs == 0:
        return
    chunk_offsets[0] = 0
    for query in range(num_queries):
        num_tokens = query_offsets[query + 1] - query_offsets[query]
        chunk_offsets[query + 1] = chunk_offsets[query] + (
            (num_tokens + QUERY_LANES - 1) // QUERY_LANES) * dim * QUERY_LANES
    chunks = scratch("query chunks", (max(1, chunk_offsets[num_queries]),), np.float32)
    flat_array = np.asarray(candidates).reshape(-1)
    sorted_order = np.argsort(flat_array, kind="stable")
    sorted_ids = flat_array[sorted_order]
    flat_candidates = flat_array
    order = sorted_order
    group_starts = np.concatenate(
        ([0], np.flatnonzero(np.diff(sorted_ids)) + 1, [num_pairs])
    ).astype(np.int64)
    num_groups = group_starts.shape[0] - 1
    flat_out = np.asarray(out).reshape(-1)
    with nogil:
        for query in prange(num_queries, num_threads=num_threads, schedule='static'):
            num_tokens = query_offsets[query + 1] - query_offsets[query]
            if num_tokens > 0:
                transpose_query(&query_tokens[query_offsets[query], 0], num_tokens, dim,
                                &chunks[chunk_offsets[query]])
        for group in prange(num_groups, num_threads=num_threads, schedule='dynamic', chunksize=2):
            doc = flat_candidates[order[group_starts[group]]]
            next_doc_data = NULL
            next_doc_bytes = 0
            if group + 1 < num_groups:
                next_doc = flat_candidates[order[group_starts[group + 1]]]
                next_doc_data = <const char *>&doc_tokens[doc_offsets[next_doc], 0]
                next_doc_bytes = (doc_offsets[next_doc + 1] - doc_offsets[next_doc]) * dim * sizeof(float)
            for position in range(group_starts[group], group_starts[group + 1]):
                pair = order[position]
                query = pair // num_candidates
                num_tokens = query_offsets[query + 1] - query_offsets[query]
                if doc < 0:
                    flat_out[pair] = -INFINITY
                elif num_tokens == 0:
                    flat_out[pair] = 0
                else:
                    flat_out[pair] = maxsim_pair(
                        &chunks[chunk_offsets[query]], num_tokens,
                        &doc_tokens[doc_offsets[doc], 0], doc_offsets[doc + 1] - doc_offsets[doc],
                        dim, next_doc_data if position + 1 == group_starts[group + 1] else NULL,
                        next_doc_bytes)


# The k best candidates of each query by their scores, best first (ties: the
# smaller document id), padded with (-1, -inf) where a query has fewer than k
# valid (>= 0) candidates. A query without tokens keeps its first k candidates
# in their order, as the original LEMUR does.
#   scores, candidates: (num_queries, num_candidates), as from maxsim_scores
#   out_indices, out_scores: (num_queries, k)
# Parallel over queries; each query's k-best list lives in its output row.
@cython.boundscheck(False)
@cython.wraparound(False)
def select_reranked(const float[:, ::1] scores, const int64_t[:, ::1] candidates,
                    const int64_t[::1] query_offsets, Py_ssize_t k,
                    int64_t[:, ::1] out_indices, float[:, ::1] out_scores, int num_threads):
    cdef Py_ssize_t num_queries = candidates.shape[0], num_candidates = candidates.shape[1]
    cdef Py_ssize_t query, position, size
    cdef int64_t doc
    with nogil:
        for query in prange(num_queries, num_threads=num_threads, schedule='static'):
            size = 0
            if query_offsets[query + 1] == query_offsets[query]:
                for position in range(min(k, num_candidates)):
                    out_indices[query, position] = candidates[query, position]
                    out_scores[query, position] = scores[query, position]
                size = min(k, num_candidates)
                for position in range(size, k):
                    out_indices[query, position] = -1
                    out_scores[query, position] = -INFINITY
            else:
                for position in range(num_candidates):
                    doc = candidates[query, position]
                    if doc >= 0:
                        size = push_pair(&out_scores[query, 0], &out_indices[query, 0], size, k,
                                         scores[query, position], doc)
                finish_list(&out_scores[query, 0], &out_indices[query, 0], size, k)


# --------------------------------------------------------------------------
# Fitting W: targets for the OLS sample, and the pseudo-inverse's algebra.
# --------------------------------------------------------------------------

def transposed_chunks(const float[:, ::1] rows):
    """Rows (m, dim) as the transposed chunks of QUERY_LANES rows that
    chunk_maxima takes: ceil(m / QUERY_LANES) blocks of (dim, QUERY_LANES)."""
    cdef Py_ssize_t num_rows = rows.shape[0], dim = rows.shape[1]
    cdef Py_ssize_t num_chunks = (num_rows + QUERY_LANES - 1) // QUERY_LANES
    cdef float[::1] chunks = np.empty(max(1, num_chunks * dim * QUERY_LANES), dtype=np.float32)
    if num_rows:
        with nogil:
            transpose_query(&rows[0, 0], num_rows, dim, &chunks[0])
    return np.asarray(chunks)


# out[j, s] = max over document j's tokens t of <sample row s, t>: the targets
# of the least-squares fit of W (before standardising).
#   sample_chunks: transposed_chunks(sample), sample (num_sample_rows, dim)
#   doc_tokens (total, dim), doc_offsets (num_docs + 1), every document >= 1 token
#   out (num_docs, num_sample_rows)
# The MaxSim kernel with the sample rows as a very long query: parallel over
# documents (dynamic); each document stays in L1/L2 while the sample's chunks
# stream past it, CHUNK_BATCH at a time.
@cython.boundscheck(False)
@cython.wraparound(False)
def document_targets(const float[::1] sample_chunks, Py_ssize_t num_sample_rows,
                     const float[:, ::1] doc_tokens, const int64_t[::1] doc_offsets,
                     float[:, ::1] out, int num_threads):
    cdef Py_ssize_t num_docs = out.shape[0], dim = doc_tokens.shape[1]
    cdef Py_ssize_t doc
    if num_docs == 0 or num_sample_rows == 0:
        return
    with nogil:
        for doc in prange(num_docs, num_threads=num_threads, schedule='dynamic'):
            one_document_targets(&sample_chunks[0], num_sample_rows,
                                 &doc_tokens[doc_offsets[doc], 0],
                                 doc_offsets[doc + 1] - doc_offsets[doc], dim, &out[doc, 0])


# out[s] = max over the document's tokens of <sample row s, token>, for every
# sample row (see document_targets); the running maxima live on this call's stack.
cdef void one_document_targets(const float *sample_chunks, Py_ssize_t num_sample_rows,
                               const float *doc, Py_ssize_t num_doc_tokens, Py_ssize_t dim,
                               float *out) noexcept nogil:
    cdef float best[CHUNK_BATCH * QUERY_LANES]
    cdef Py_ssize_t num_chunks = (num_sample_rows + QUERY_LANES - 1) // QUERY_LANES
    cdef Py_ssize_t first = 0, end, lane
    while first < num_chunks:
        end = min(first + CHUNK_BATCH, num_chunks)
        chunk_maxima(sample_chunks, first, end, doc, num_doc_tokens, dim, NULL, 0, best)
        for lane in range(min((end - first) * QUERY_LANES, num_sample_rows - first * QUERY_LANES)):
            out[first * QUERY_LANES + lane] = best[lane]
        first = end


cdef enum:
    # Rows widened to float64 at a time by the float64 kernels below.
    WIDE_BLOCK_ROWS = 1024


# Widens rows [start, start + count) of a float32 matrix into a float64 buffer.
cdef void widen_rows(const float[:, ::1] rows, Py_ssize_t start, Py_ssize_t count,
                     double *out) noexcept nogil:
    cdef Py_ssize_t i, j, width = rows.shape[1]
    for i in range(count):
        for j in range(width):
            out[i * width + j] = rows[start + i, j]


# out (n, n) float64: the upper triangle of rows^T rows, rows (m, n) float32,
# accumulated in float64 over blocks of rows (dsyrk, num_threads BLAS threads).
@cython.boundscheck(False)
@cython.wraparound(False)
def gram_upper_float64(const float[:, ::1] rows, double[:, ::1] out, int num_threads):
    cdef Py_ssize_t m = rows.shape[0], n = rows.shape[1], start, count
    cdef double[:, ::1] wide = np.empty((WIDE_BLOCK_ROWS, n), dtype=np.float64)
    out[:, :] = 0
    with BlasThreads(num_threads):
        with nogil:
            start = 0
            while start < m:
                count = min(<Py_ssize_t>WIDE_BLOCK_ROWS, m - start)
                widen_rows(rows, start, count, &wide[0, 0])
                scipy_cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, <int>n, <int>count,
                                  1.0, &wide[0, 0], <int>n, 1.0, &out[0, 0], <int>n)
                start += count


def symmetric_eigen(double[:, ::1] matrix, double[::1] eigenvalues, int num_threads):
    """Eigenvalues (ascending) and eigenvectors (columns, overwriting `matrix`)
    of a symmetric matrix given by its upper triangle (LAPACK dsyevd)."""
    cdef int n = <int>matrix.shape[0], info
    with BlasThreads(num_threads):
        with nogil:
            info = scipy_LAPACKE_dsyevd(LAPACK_ROW_MAJOR, b'V', b'U', n, &matrix[0, 0], n,
                                        &eigenvalues[0])
    if info != 0:
        raise ValueError(f"the eigendecomposition did not converge (LAPACK dsyevd info={info})")


# out (m, n) float32 = rows (m, k) float32 . factor (k, n) float64, computed
# in float64 block by block (dgemm with num_threads BLAS threads), then rounded.
@cython.boundscheck(False)
@cython.wraparound(False)
def multiply_float64(const float[:, ::1] rows, const double[:, ::1] factor, float[:, ::1] out,
                     int num_threads):
    cdef Py_ssize_t m = rows.shape[0], k = rows.shape[1], n = factor.shape[1]
    cdef Py_ssize_t start, count, i, j
    cdef double[:, ::1] wide = np.empty((WIDE_BLOCK_ROWS, k), dtype=np.float64)
    cdef double[:, ::1] product = np.empty((WIDE_BLOCK_ROWS, n), dtype=np.float64)
    with BlasThreads(num_threads):
        with nogil:
            start = 0
            while start < m:
                count = min(<Py_ssize_t>WIDE_BLOCK_ROWS, m - start)
                widen_rows(rows, start, count, &wide[0, 0])
                scipy_cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, <int>count, <int>n,
                                  <int>k, 1.0, &wide[0, 0], <int>k, &factor[0, 0], <int>n,
                                  0.0, &product[0, 0], <int>n)
                for i in range(count):
                    for j in range(n):
                        out[start + i, j] = <float>product[i, j]
                start += count


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

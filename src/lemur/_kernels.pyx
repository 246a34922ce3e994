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
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY, NAN, fabs, sqrt, sqrtf
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset

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
from lemur._compact cimport (
    COMPACT_BFLOAT16,
    COMPACT_BLOCK,
    COMPACT_INT8,
    MAX_BLOCK_KERNELS,
    MAX_TILE_QUERIES,
    block_kernel_info,
    block_kernels,
    compact_cpu,
    compact_detect,
    compact_queries,
    compact_rows,
    compact_steps,
    encode_query,
    encode_row,
    float_environment_default,
    gamma_of,
    int8_query_limit,
    kth_largest,
    query_step_bytes,
    scan_block,
    scan_state,
    survivors_free,
    survivors_reset,
    survivors_list,
)
from lemur._amx cimport (
    AMX_BLOCK_COLUMNS,
    AMX_BLOCK_ROWS,
    AMX_PANEL,
    AMX_STEP_VALUES,
    amx_begin,
    amx_column_maxima,
    amx_detect,
    amx_end,
    amx_maxima,
    amx_pack_k_contiguous,
    amx_pack_k_strided,
    amx_panels,
    amx_products,
    amx_round_rows,
    amx_steps,
    amx_store,
    bf16_dot_column_maxima,
)
from lemur._half cimport bfloat16_bits, bfloat16_value, half_to_float, round_bfloat16
from lemur._screen_int16 cimport (
    INT16_ROWS,
    int16_codes,
    int16_column_maxima,
    int16_limit,
    int16_pack_panel,
    int16_round_rows,
    int16_screen_compiled,
)
from lemur._selection cimport push_pair, sort_best_first
from lemur._simd cimport (
    DOC_ROWS,
    QUERY_LANES,
    TILE_DOCS,
    TILE_QUERIES,
    VECTOR_FLOATS,
    lemur_vector,
    prefetch,
    vector_fma,
    vector_load,
    vector_max,
    vector_store,
    vector_zero,
)
from lemur._tiles cimport (
    GEMM_BLOCK_ROWS,
    GEMM_PANEL,
    PANEL_BATCH,
    SMALL_BATCH,
    gemm_pack,
    gemm_unit,
    lanes_of_queries,
    score_batch,
    score_depth,
    score_query_rows,
    score_row_pairs,
    score_rows,
    score_scratch_size,
)
from lemur._vector_math cimport (
    GELU,
    GELU_TANH,
    LANES,
    MISH,
    RELU,
    SILU,
    activation_derivative,
    add_row,
    all_finite,
    apply_activation,
    apply_activation_derivative,
    dot_sum,
    exp_approx,
    layer_norm_row,
    scale_shift_and_sum,
    squared_deviation_sum,
)

import threading

# A document token store: float32 values, or float16 ones (their bits).
ctypedef fused doc_value:
    float
    uint16_t

import numpy as np

from lemur._scratch import aligned_empty, scratch

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


# lemur's OpenBLAS runs on the calling thread, always (see _blas.pxd).
scipy_openblas_set_num_threads(1)


cdef void ensure_single_threaded_blas() noexcept nogil:
    if scipy_openblas_get_num_threads() != 1:
        scipy_openblas_set_num_threads(1)


#: Activation name -> code, as the kernels take them.
ACTIVATION_CODES = {"relu": RELU, "gelu": GELU, "gelu-tanh": GELU_TANH, "silu": SILU, "mish": MISH}


cpdef enum ModelKind:
    MLP = 0
    ELM = 1


cdef enum:
    # Rows of tokens pushed through the MLP together: one GEMM per layer per
    # block, then the fused per-row pass while the block is still in L2.
    BLOCK_ROWS = 64
    # Rows per unit of work when a batch has fewer groups of queries than
    # threads (a single query): every token's features in parallel, pooled
    # after, for batches of at most SPLIT_VALUES features (8 MiB).
    SPLIT_ROWS = 16
    SPLIT_VALUES = 1 << 21
    # Panels of B per unit of work of gemm_packed.
    GEMM_GROUP_PANELS = 4


# --------------------------------------------------------------------------
# The feature map psi.
# --------------------------------------------------------------------------

ctypedef struct DenseLayer:
    const float *packed_weight  # weight^T packed for gemm_unit (pack_layer_weight)
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


# out (num_rows, output_dim) = rows (num_rows, input_dim) . weight^T, one
# single-threaded product panel by panel (num_rows <= BLOCK_ROWS).
cdef void layer_product(const float *rows, Py_ssize_t num_rows, const DenseLayer *layer,
                        float *out, float *gemm_scratch) noexcept nogil:
    cdef Py_ssize_t panel
    for panel in range((layer.output_dim + GEMM_PANEL - 1) // GEMM_PANEL):
        gemm_unit(rows, layer.input_dim, layer.input_dim, layer.packed_weight, layer.output_dim,
                  panel, panel + 1, 0, num_rows, out, layer.output_dim, gemm_scratch)


# psi of rows [row_start, row_start + num_rows) of tokens (at most BLOCK_ROWS).
# One product per layer into a thread-local buffer, then the fused per-row
# pass. Returns the buffer holding the last layer's rows, unless unpooled_out
# is given: the last layer then lands in unpooled_out directly. Each row's
# features depend on that token alone (see _tiles.h), not on the block.
cdef float *psi_block(const FeatureMap *model, const float *tokens, Py_ssize_t row_start,
                      Py_ssize_t num_rows, float *workspace, float *unpooled_out) noexcept nogil:
    cdef const float *layer_input = tokens + row_start * model.layers[0].input_dim
    cdef float *layer_output
    cdef float *gemm_scratch = workspace + 2 * BLOCK_ROWS * model.max_width
    cdef const DenseLayer *layer
    cdef int layer_index
    cdef Py_ssize_t row
    for layer_index in range(model.num_layers):
        layer = &model.layers[layer_index]
        if layer_index == model.num_layers - 1 and unpooled_out != NULL:
            layer_output = unpooled_out + row_start * layer.output_dim
        else:
            layer_output = workspace + (layer_index % 2) * BLOCK_ROWS * model.max_width
        layer_product(layer_input, num_rows, layer, layer_output, gemm_scratch)
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
    cdef Py_ssize_t row_start, num_rows, row, token
    cdef Py_ssize_t group_end = query_offsets[end_query]
    cdef float *block
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
    divide_rows(out + first_query * width, end_query - first_query, width, pool_divisor)


# rows[i] /= divisor for num_rows rows of width values
cdef void divide_rows(float *rows, Py_ssize_t num_rows, Py_ssize_t width, float divisor) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(num_rows * width):
        rows[i] = rows[i] / divisor


# out[q] = sum of the rows of query q's tokens (in order) / pool_divisor, as
# pooled_query_group sums them, from every token's features (num_tokens, width).
cdef void pool_rows(const float *rows, const int64_t *query_offsets, Py_ssize_t num_queries, Py_ssize_t width,
                    float pool_divisor, float *out) noexcept nogil:
    cdef Py_ssize_t query, token
    memset(out, 0, num_queries * width * sizeof(float))
    for query in range(num_queries):
        for token in range(query_offsets[query], query_offsets[query + 1]):
            add_row(out + query * width, rows + token * width, width)
    divide_rows(out, num_queries, width, pool_divisor)


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


def pack_matrix(const float[:, ::1] source, bint transposed):
    """B packed for the products of _tiles.h: (panels, K, GEMM_PANEL) float32.

    B is `source` (K, n), or its transpose when `transposed` (source (n, K),
    e.g. an nn.Linear weight (output_dim, input_dim) for x . weight^T)."""
    cdef Py_ssize_t K = source.shape[1] if transposed else source.shape[0]
    cdef Py_ssize_t n = source.shape[0] if transposed else source.shape[1]
    cdef Py_ssize_t panels = (n + GEMM_PANEL - 1) // GEMM_PANEL
    cdef float[:, :, ::1] packed = aligned_empty((panels, K, GEMM_PANEL), np.float32)
    if panels and K:
        with nogil:
            gemm_pack(&source[0, 0], K, n, 1 if transposed else n, K if transposed else 1,
                      &packed[0, 0, 0])
    return np.asarray(packed)


cdef class _LayerViews:
    """Keeps the memoryviews of a model's arrays and the DenseLayer table
    pointing into them alive while a kernel runs. `layers` holds (packed
    weight, bias, ln_weight, ln_bias, input_dim, output_dim) per layer."""
    cdef list views
    cdef DenseLayer *table
    cdef FeatureMap model

    def __cinit__(self, list layers, int kind, int activation, float elm_scale):
        cdef const float[:, :, ::1] packed
        cdef const float[::1] vector
        cdef Py_ssize_t index
        self.views = []
        self.table = <DenseLayer *>malloc(max(1, len(layers)) * sizeof(DenseLayer))
        if self.table == NULL:
            raise MemoryError()
        self.model.max_width = 0
        for index, (packed_array, bias, ln_weight, ln_bias, input_dim, output_dim) in enumerate(layers):
            if packed_array.shape != ((output_dim + GEMM_PANEL - 1) // GEMM_PANEL, input_dim, GEMM_PANEL):
                raise ValueError(f"layer {index}'s weight was packed for another kernel variant")
            packed = packed_array
            self.views.append(packed)
            self.table[index].packed_weight = &packed[0, 0, 0]
            self.table[index].output_dim = output_dim
            self.table[index].input_dim = input_dim
            self.model.max_width = max(self.model.max_width, output_dim)
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


def feature_workspace(object layers, int num_threads):
    """Scratch memory for compute_features: two row blocks and a product's
    scratch panel per thread."""
    cdef Py_ssize_t max_width = max(layer[5] for layer in layers)
    cdef Py_ssize_t per_thread = 2 * BLOCK_ROWS * max_width + BLOCK_ROWS * GEMM_PANEL
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
# of workspace. A pooled batch of fewer groups than threads (one query) of at
# most SPLIT_VALUES features takes blocks of SPLIT_ROWS tokens in parallel and
# pools them after, in the same order: the same numbers.
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
    cdef Py_ssize_t width = model.layers[model.num_layers - 1].output_dim
    cdef float[:, ::1] unpooled
    if pool_divisor > 0:
        group_starts = np.empty(num_queries + 1, dtype=np.int64)
        num_groups = split_query_groups(&query_offsets[0], num_queries, &group_starts[0])
        if num_groups < num_threads and 2 * SPLIT_ROWS <= num_tokens and num_tokens * width <= SPLIT_VALUES:
            # too few groups to give every thread one: every token's features in
            # parallel (each row depends on its token alone), then pooled in order
            unpooled = scratch("unpooled features", (num_tokens, width), np.float32)
            with nogil:
                for group in prange((num_tokens + SPLIT_ROWS - 1) // SPLIT_ROWS, num_threads=num_threads,
                                    schedule='static'):
                    row_start = group * SPLIT_ROWS
                    psi_block(model, tokens_data, row_start, min(<Py_ssize_t>SPLIT_ROWS, num_tokens - row_start),
                              &workspace[threadid(), 0], &unpooled[0, 0])
                pool_rows(&unpooled[0, 0], &query_offsets[0], num_queries, width, pool_divisor, out_data)
            return
        with nogil:
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


# out (m, n) = a (m, K) . B, with B packed by pack_matrix (panels, K, PANEL).
# Units of work: GEMM_BLOCK_ROWS rows of a by GEMM_GROUP_PANELS panels, dynamic
# schedule;
# every element is computed by one unit in the fixed order of _tiles.h, so the
# result depends neither on num_threads nor on m.
@cython.boundscheck(False)
@cython.wraparound(False)
def gemm_packed(const float[:, ::1] a, const float[:, :, ::1] packed, float[:, ::1] out,
                int num_threads):
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1], K = a.shape[1]
    cdef Py_ssize_t panels = packed.shape[0]
    cdef Py_ssize_t row_blocks = (m + GEMM_BLOCK_ROWS - 1) // GEMM_BLOCK_ROWS
    cdef Py_ssize_t groups = (panels + GEMM_GROUP_PANELS - 1) // GEMM_GROUP_PANELS
    cdef Py_ssize_t unit, row0, first_panel
    cdef float[:, ::1] scratch_panels
    if packed.shape[1] != K or packed.shape[2] != GEMM_PANEL or panels != (n + GEMM_PANEL - 1) // GEMM_PANEL:
        raise ValueError(f"packed has shape ({packed.shape[0]}, {packed.shape[1]}, {packed.shape[2]}), expected "
                         f"({(n + GEMM_PANEL - 1) // GEMM_PANEL}, {K}, {GEMM_PANEL}) "
                         "(from this kernel variant's pack_matrix)")
    if a.shape[0] != m:
        raise ValueError(f"a has {a.shape[0]} rows, out {m}")
    if m == 0 or n == 0:
        return
    scratch_panels = scratch("gemm panels", (num_threads, GEMM_BLOCK_ROWS * GEMM_PANEL), np.float32)
    with nogil:
        for unit in prange(row_blocks * groups, num_threads=num_threads, schedule='dynamic'):
            row0 = (unit // groups) * GEMM_BLOCK_ROWS
            first_panel = (unit % groups) * GEMM_GROUP_PANELS
            gemm_unit(&a[0, 0], K, K, &packed[0, 0, 0], n, first_panel,
                      min(panels, first_panel + GEMM_GROUP_PANELS), row0,
                      min(<Py_ssize_t>GEMM_BLOCK_ROWS, m - row0), &out[0, 0], n,
                      &scratch_panels[threadid(), 0])


# --------------------------------------------------------------------------
# First stage: the k largest inner products with the rows of W.
# --------------------------------------------------------------------------

cdef enum:
    # Rows of W scored at once: small batches (SMALL_BATCH) stream large
    # blocks; larger batches take blocks small enough to stay in L2 while
    # every query passes over them (64 rows of h = 2048: 512 KiB).
    SMALL_BATCH_DOC_BLOCK = 1024
    BATCH_DOC_BLOCK = 64
    # The most queries per unit of work when a batch is split (their features,
    # 1 MiB at h = 2048, stay in L2 while blocks of W pass).
    QUERY_CHUNK = 128


cdef class _ScoreBatch:
    """A batch of query features as score_rows (_tiles.h) takes it, with the
    queries' lanes when the batch is large enough to score W as products."""
    cdef score_batch batch
    cdef object lanes

    def __cinit__(self, const float[:, ::1] features):
        cdef float[::1] lanes
        self.batch.features = &features[0, 0]
        self.batch.num_queries = features.shape[0]
        self.batch.h = features.shape[1]
        self.batch.query_lanes = NULL
        self.lanes = None
        if features.shape[0] >= PANEL_BATCH:
            lanes = aligned_empty(max(1, features.shape[0] * features.shape[1]), np.float32)
            with nogil:
                lanes_of_queries(&features[0, 0], features.shape[0], features.shape[1], &lanes[0])
            self.lanes = lanes
            self.batch.query_lanes = &lanes[0]


def score_scratch(Py_ssize_t num_queries, Py_ssize_t h, Py_ssize_t block_docs, int num_threads):
    """Per-thread scratch of score_rows for blocks of up to block_docs rows."""
    return scratch("score scratch", (num_threads, score_scratch_size(num_queries, h, block_docs)),
                   np.float32)


# Queries per chunk when a batch is split into chunks of at most QUERY_CHUNK:
# as even as possible, so that 100 queries are one chunk, not 64 and 36.
cdef inline Py_ssize_t even_chunk(Py_ssize_t num_queries) noexcept nogil:
    cdef Py_ssize_t chunks = (num_queries + QUERY_CHUNK - 1) // QUERY_CHUNK
    return (num_queries + chunks - 1) // chunks


# The full score matrix out (num_queries, num_docs) = score(features[q], W[d]).
# Units of work: BATCH_DOC_BLOCK rows of W for the whole batch, dynamic
# schedule; each score is computed once, by the rule of _tiles.h.
@cython.boundscheck(False)
@cython.wraparound(False)
def score_matrix(const float[:, ::1] features, const float[:, ::1] W, float[:, ::1] out,
                 int num_threads):
    cdef Py_ssize_t num_queries = features.shape[0], num_docs = W.shape[0], h = W.shape[1]
    cdef Py_ssize_t blocks = (num_docs + BATCH_DOC_BLOCK - 1) // BATCH_DOC_BLOCK
    cdef Py_ssize_t unit, first_doc
    cdef float[:, ::1] thread_scratch
    cdef _ScoreBatch batch
    if num_queries == 0 or num_docs == 0:
        return
    batch = _ScoreBatch(features)
    thread_scratch = score_scratch(num_queries, h, BATCH_DOC_BLOCK, num_threads)
    with nogil:
        for unit in prange(blocks, num_threads=num_threads, schedule='dynamic'):
            first_doc = unit * BATCH_DOC_BLOCK
            score_rows(&batch.batch, &W[first_doc, 0], min(<Py_ssize_t>BATCH_DOC_BLOCK, num_docs - first_doc),
                       &out[0, first_doc], num_docs, &thread_scratch[threadid(), 0])


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


# The k best documents of a batch of queries over document blocks
# [first_block, end_block), into k-best lists of `list_stride` entries each
# (query i's list at i * list_stride).
cdef void scan_documents(const score_batch *batch, const float *W, Py_ssize_t num_docs,
                         Py_ssize_t doc_block, Py_ssize_t first_block, Py_ssize_t end_block,
                         Py_ssize_t k, float *scores, float *score_scratch, float *best_scores,
                         int64_t *best_indices, Py_ssize_t *sizes,
                         Py_ssize_t list_stride) noexcept nogil:
    cdef Py_ssize_t block, query, block_docs
    for block in range(first_block, end_block):
        block_docs = min(doc_block, num_docs - block * doc_block)
        score_rows(batch, W + block * doc_block * batch.h, block_docs, scores, block_docs,
                   score_scratch)
        for query in range(batch.num_queries):
            sizes[query] = push_scores(scores + query * block_docs, block_docs, block * doc_block,
                                       best_scores + query * list_stride,
                                       best_indices + query * list_stride, sizes[query], k)


def top_k_workspace_shape(Py_ssize_t num_queries, Py_ssize_t num_docs, Py_ssize_t k,
                          int num_threads, Py_ssize_t budget_bytes):
    """Plan a top-k run: (parallel_on_queries, query_chunk, doc_block).

    Many queries (at least 4 * QUERY_CHUNK per thread): threads take chunks of
    queries (even_chunk) and scan all of W. Fewer: threads take blocks of W's
    rows and keep k-best lists of their own for a chunk of queries, merged at
    the end; the chunk is as large as `budget_bytes` allows for the score
    blocks and lists of all threads, so W is read as few times as possible.
    """
    cdef Py_ssize_t doc_block = (num_docs + 4 * num_threads - 1) // (4 * num_threads)
    doc_block = min(SMALL_BATCH_DOC_BLOCK, max(16, (doc_block + 15) // 16 * 16))
    if num_queries > SMALL_BATCH:
        doc_block = BATCH_DOC_BLOCK
    if num_queries >= 4 * QUERY_CHUNK * num_threads:
        return True, even_chunk(num_queries), doc_block
    per_query = num_threads * (doc_block * 4 + k * 12)
    chunk = max(1, min(num_queries, budget_bytes // per_query))
    return False, chunk, doc_block


# The k (< num_docs) largest inner products of each query's features with the
# rows of W, best first (ties: smaller index first).
#   features: (num_queries, h); W: (num_docs, h)
#   out_indices (int64), out_scores (float32): (num_queries, k)
# Parallel over chunks of queries when there are many; otherwise over blocks of
# W's rows, with thread-local k-best lists merged at the end. Each thread scores
# one block at a time into its own buffer (score_rows), so the full score
# matrix is never held.
@cython.boundscheck(False)
@cython.wraparound(False)
def top_k_inner_products(const float[:, ::1] features, const float[:, ::1] W, Py_ssize_t k,
                         int64_t[:, ::1] out_indices, float[:, ::1] out_scores,
                         int num_threads, Py_ssize_t budget_bytes):
    cdef Py_ssize_t num_queries = features.shape[0], num_docs = W.shape[0], h = W.shape[1]
    cdef Py_ssize_t query_chunk, doc_block, num_blocks, num_chunks, chunk, start, count
    cdef Py_ssize_t block, query, thread, position
    cdef bint on_queries
    cdef float[:, ::1] buffers, thread_scratch
    cdef float[:, :, ::1] list_scores
    cdef int64_t[:, :, ::1] list_indices
    cdef Py_ssize_t[:, ::1] sizes
    cdef Py_ssize_t size
    cdef list batches
    cdef _ScoreBatch batch
    cdef score_batch *chunk_batches
    on_queries, query_chunk, doc_block = top_k_workspace_shape(
        num_queries, num_docs, k, num_threads, budget_bytes)
    num_blocks = (num_docs + doc_block - 1) // doc_block
    num_chunks = (num_queries + query_chunk - 1) // query_chunk
    buffers = scratch("score blocks", (num_threads, query_chunk * doc_block), np.float32)
    thread_scratch = score_scratch(query_chunk, h, doc_block, num_threads)
    batches = [_ScoreBatch(features[start : start + query_chunk])
               for start in range(0, num_queries, query_chunk)]
    if on_queries:
        sizes = scratch("list sizes", (num_queries, 1), np.intp)
        sizes[:, :] = 0
        chunk_batches = <score_batch *>malloc(num_chunks * sizeof(score_batch))
        if chunk_batches == NULL:
            raise MemoryError()
        for chunk in range(num_chunks):
            chunk_batches[chunk] = (<_ScoreBatch>batches[chunk]).batch
        with nogil:
            for chunk in prange(num_chunks, num_threads=num_threads, schedule='dynamic'):
                start = chunk * query_chunk
                count = min(query_chunk, num_queries - start)
                scan_documents(&chunk_batches[chunk], &W[0, 0], num_docs, doc_block, 0, num_blocks, k,
                               &buffers[threadid(), 0], &thread_scratch[threadid(), 0],
                               &out_scores[start, 0], &out_indices[start, 0], &sizes[start, 0], k)
                for query in range(start, start + count):
                    finish_list(&out_scores[query, 0], &out_indices[query, 0],
                                sizes[query, 0], k)
        free(chunk_batches)
        return
    list_scores = scratch("list scores", (num_threads, query_chunk, k), np.float32)
    list_indices = scratch("list indices", (num_threads, query_chunk, k), np.int64)
    sizes = scratch("list sizes", (num_threads, query_chunk), np.intp)
    for chunk in range(num_chunks):
        start = chunk * query_chunk
        count = min(query_chunk, num_queries - start)
        batch = batches[chunk]
        sizes[:, :] = 0
        with nogil:
            for block in prange(num_blocks, num_threads=num_threads, schedule='dynamic'):
                thread = threadid()
                scan_documents(&batch.batch, &W[0, 0], num_docs, doc_block, block, block + 1, k,
                               &buffers[thread, 0], &thread_scratch[thread, 0],
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
# The compact first stage: rows and queries encoded as bfloat16 / int8,
# certified bounds, the exact rescoring of what they leave open
# (lemur/first_stage/compact.py has the proof, _compact.h the arithmetic).
# --------------------------------------------------------------------------

# What the compact scan of this variant uses on this CPU (_compact.h).
cdef compact_cpu COMPACT_CPU = compact_detect()
#: The largest magnitude of a query's int8 codes here (64 where the int8
#: scan is AVX2's VPMADDUBSW, else 127).
INT8_QUERY_LIMIT = int8_query_limit(COMPACT_CPU)


def compact_instructions():
    """The instructions the compact scan uses here, by precision (for rows
    of h = 2048, the original's)."""
    cdef block_kernel_info kernels[MAX_BLOCK_KERNELS]
    cdef compact_rows rows
    used = {}
    for name, kind, tiles, multiple in (("int8", COMPACT_INT8, "AMX-INT8", 64),
                                        ("bfloat16", COMPACT_BFLOAT16, "AMX-BF16", 32)):
        # rows of h = 2048, none stored: what the kernels take them with
        rows = compact_rows_of(np.empty((0, 0, 0), np.uint8), np.empty((0, 0, 0), np.float32), kind, 0, 2048, 0)
        block_kernels(&rows, INT8_QUERY_LIMIT, kernels)
        text = kernels[0].name.decode()
        if kernels[0].min_queries > 1:  # AMX's tiles, for batches
            text = (f"{tiles} tiles ({kernels[0].min_queries} queries and more, h a multiple of {multiple}), "
                    f"else {kernels[1].name.decode()}")
        elif kind == COMPACT_BFLOAT16 and COMPACT_CPU.bf16_512 and not COMPACT_CPU.bf16_dot:
            text += " (AVX512_BF16 runs at half that rate on Intel CPUs)"
        used[name] = text
    return used


# The dot products of each query's codes with each row's (codes: the
# lanes-packed blocks; query_codes: this CPU's format, compact_layout) by
# each block kernel this CPU can run for them (for int8: every kernel exact
# for codes of their largest magnitude, AVX2's too where they are within
# [-64, 64], even on CPUs whose scan takes VNNI): {name: (num_queries,
# blocks * COMPACT_BLOCK) int32 (int8) or float32 (bfloat16)}. For tests:
# every kernel must give what the others give.
@cython.boundscheck(False)
@cython.wraparound(False)
def compact_block_dots(const uint8_t[:, :, ::1] codes, int kind, Py_ssize_t h,
                       const uint8_t[:, ::1] query_codes):
    cdef block_kernel_info kernels[MAX_BLOCK_KERNELS]
    cdef compact_rows rows
    cdef compact_queries queries
    cdef int num_kernels, which, tile, i
    cdef Py_ssize_t num_blocks = codes.shape[0], num_queries = query_codes.shape[0], block, q0
    cdef uint8_t[:, ::1] out
    cdef uint8_t[::1] dots = np.empty(MAX_TILE_QUERIES * COMPACT_BLOCK * 4, np.uint8)
    cdef block_kernel_info kernel
    cdef Py_ssize_t steps = compact_steps(kind, h)
    cdef int query_limit = 127
    if codes.shape[1] != steps or codes.shape[2] != COMPACT_BLOCK * 4:
        raise ValueError(f"codes must have shape (blocks, {steps}, {COMPACT_BLOCK * 4})")
    if query_codes.shape[1] != steps * query_step_bytes(kind, steps, COMPACT_CPU):
        raise ValueError("query_codes must be in this CPU's format (compact_layout)")
    if num_blocks == 0 or num_queries == 0:
        raise ValueError("codes and query_codes must not be empty")
    if kind == COMPACT_INT8:
        query_limit = int(np.abs(np.asarray(query_codes).view(np.int8).astype(np.int16)).max())
    rows = compact_rows_of(codes, np.empty((0, 0, 0), np.float32), kind, num_blocks * COMPACT_BLOCK, h, 0)
    num_kernels = block_kernels(&rows, query_limit, kernels)
    queries.codes = &query_codes[0, 0]
    queries.params = NULL
    queries.num_queries = num_queries
    results = {}
    for which in range(num_kernels):
        kernel = kernels[which]
        result = np.empty((num_queries, num_blocks * COMPACT_BLOCK),
                          np.int32 if kind == COMPACT_INT8 else np.float32)
        out = result.view(np.uint8)
        with nogil:
            for block in range(num_blocks):
                q0 = 0
                while q0 < num_queries:
                    tile = <int>min(num_queries - q0, <Py_ssize_t>kernel.tile_queries)
                    kernel.kernel(&rows, &queries, &codes[block, 0, 0], q0, tile, &dots[0])
                    for i in range(tile):
                        memcpy(&out[q0 + i, block * COMPACT_BLOCK * 4], &dots[i * COMPACT_BLOCK * 4],
                               COMPACT_BLOCK * 4)
                    q0 += tile
        results[kernel.name.decode()] = result
    return results


def compact_layout(int kind, Py_ssize_t h):
    """(steps, bytes of one query's codes) of the compact scan of rows of
    length h on this CPU (_compact.h's layout)."""
    cdef Py_ssize_t steps = compact_steps(kind, h)
    return steps, steps * query_step_bytes(kind, steps, COMPACT_CPU)


# Codes and parameters of rows of W: W[i] becomes row first_row + i of the
# lanes-packed codes and of the blocked parameters (_compact.h's layouts).
#   W (n, h); basis (m, h); codes uint8 (blocks, steps, COMPACT_BLOCK * 4);
#   params (blocks, ROW_PARAMS + m, COMPACT_BLOCK)
# Parallel over rows (static); a row writes only its own lanes.
@cython.boundscheck(False)
@cython.wraparound(False)
def compact_encode_rows(const float[:, ::1] W, const float[:, ::1] basis, int kind, uint8_t[:, :, ::1] codes,
                        float[:, :, ::1] params, Py_ssize_t first_row, int num_threads):
    cdef Py_ssize_t n = W.shape[0], h = W.shape[1], m = basis.shape[0], i, row
    cdef uint8_t[:, ::1] work = scratch("compact row codes", (num_threads, 4 * compact_steps(kind, h)), np.uint8)
    if n == 0:
        return
    with nogil:
        for i in prange(n, num_threads=num_threads, schedule='static'):
            row = first_row + i
            encode_row(kind, &W[i, 0], h, &basis[0, 0], m, &codes[row // COMPACT_BLOCK, 0, 0],
                       &params[row // COMPACT_BLOCK, 0, 0], row % COMPACT_BLOCK, &work[threadid(), 0])


cdef compact_rows compact_rows_of(const uint8_t[:, :, ::1] codes, const float[:, :, ::1] params, int kind,
                                  Py_ssize_t num_docs, Py_ssize_t h, Py_ssize_t m):
    cdef compact_rows rows
    rows.kind = kind
    rows.codes = &codes[0, 0, 0] if codes.shape[0] else NULL
    rows.params = &params[0, 0, 0] if params.shape[0] else NULL
    rows.num_docs = num_docs
    rows.h = h
    rows.m = m
    rows.steps = compact_steps(kind, h)
    rows.cpu = COMPACT_CPU
    return rows


# Codes and parameters of queries' features (the split, the compact codes and
# the bound's factors; compact.py). features (nq, h); codes out uint8
# (nq, compact_layout's bytes); params out (nq, QUERY_PARAMS + m). Parallel
# over queries.
@cython.boundscheck(False)
@cython.wraparound(False)
def compact_encode_queries(const float[:, ::1] features, const float[:, ::1] basis, int kind,
                           uint8_t[:, ::1] codes, float[:, ::1] params, int num_threads):
    cdef Py_ssize_t nq = features.shape[0], h = features.shape[1], m = basis.shape[0], q
    cdef double[:, ::1] exact = scratch("compact query split", (num_threads, h), np.float64)
    cdef float[:, ::1] perp = scratch("compact query perp", (num_threads, h), np.float32)
    cdef compact_rows rows = compact_rows_of(np.empty((0, 1, 1), np.uint8), np.empty((0, 1, 1), np.float32),
                                             kind, 0, h, m)
    cdef double depth = score_depth(h)
    with nogil:
        for q in prange(nq, num_threads=min(num_threads, nq), schedule='static'):
            encode_query(&rows, &basis[0, 0], depth, &features[q, 0], &codes[q, 0], &params[q, 0],
                         &exact[threadid(), 0], &perp[threadid(), 0])


# Survivor lists kept per Python thread from one scan to the next, so that
# their room is reused (allocated anew on every call, its page faults cost
# more than a small scan); a list that grew past RETAINED_SURVIVORS pairs is
# freed after its scan.
cdef enum:
    RETAINED_SURVIVORS = 1 << 18


cdef class _SurvivorLists:
    cdef survivors_list *lists
    cdef Py_ssize_t count

    cdef int ensure(self, Py_ssize_t count) except -1:
        cdef survivors_list *grown
        if count > self.count:
            grown = <survivors_list *>realloc(self.lists, count * sizeof(survivors_list))
            if grown == NULL:
                raise MemoryError()
            memset(&grown[self.count], 0, (count - self.count) * sizeof(survivors_list))
            self.lists = grown
            self.count = count
        return 0

    cdef void release_large(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.count):
            if self.lists[i].capacity > RETAINED_SURVIVORS or self.lists[i].status == 1:
                survivors_free(&self.lists[i])

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.count):
            survivors_free(&self.lists[i])
        free(self.lists)


_thread_survivors = threading.local()


cdef _SurvivorLists survivor_lists(Py_ssize_t count):
    cdef _SurvivorLists lists = getattr(_thread_survivors, "lists", None)
    if lists is None:
        lists = _SurvivorLists()
        _thread_survivors.lists = lists
    lists.ensure(count)
    return lists


# The blocks a compact scan reads first: about 2 sqrt(num_docs k) rows (at
# least SAMPLE_ROWS), in every stride-th block.
cdef enum:
    SAMPLE_ROWS = 2048


cdef Py_ssize_t sample_stride(Py_ssize_t num_docs, Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t blocks = (num_docs + COMPACT_BLOCK - 1) // COMPACT_BLOCK
    cdef double rows = max(<double>SAMPLE_ROWS, 2 * sqrt(<double>num_docs * k))
    return max(1, blocks // max(1, <Py_ssize_t>(rows / COMPACT_BLOCK)))


# The compact scan of a batch of queries over every row: per query the k-th
# largest lower bound L and, with_upper, the (k + 1)-th largest upper bound
# U over all rows, and the pairs (row, query, lower, upper) whose upper bound
# reaches L, grouped by query: the only rows that can be among the query's k
# best. None when one thread's pairs would pass `limit` (the caller then
# scans in float32).
#   codes, params, kind, num_docs, h, m: the compact rows (_compact.h); num_docs > k
#   query_codes, query_params: from compact_encode_queries
# Parallel over blocks of COMPACT_BLOCK rows: every stride-th block first (a
# sample spread over W, so that the thresholds rise early whatever W's
# order; dynamic), then the others (guided: long runs of consecutive blocks
# a thread, which the hardware prefetchers follow from one block into the
# next, where a run of one block each costs 10-20% of the scan's time when
# memory is fast). Each thread keeps, per query, a heap
# of the k largest lower bounds above its threshold (which rises to the root
# of the full heap) and the pairs whose upper bound reaches the threshold;
# after the sample every thread takes the highest threshold. A threshold
# never passes L (it is the k-th largest of some k rows' lower bounds), so
# nothing the final filter keeps is lost; the heaps together hold k values at
# least L, so L is their k-th largest; U is the larger of L and the
# (k + 1)-th largest kept upper bound (rows not kept have upper bounds below
# L).
@cython.boundscheck(False)
@cython.wraparound(False)
def compact_scan(const uint8_t[:, :, ::1] codes, const float[:, :, ::1] params, int kind, Py_ssize_t num_docs,
                 Py_ssize_t h, Py_ssize_t m, const uint8_t[:, ::1] query_codes, const float[:, ::1] query_params,
                 Py_ssize_t k, bint with_upper, Py_ssize_t limit, int num_threads):
    cdef Py_ssize_t nq = query_params.shape[0]
    cdef compact_rows rows = compact_rows_of(codes, params, kind, num_docs, h, m)
    cdef compact_queries queries
    cdef Py_ssize_t blocks = (num_docs + COMPACT_BLOCK - 1) // COMPACT_BLOCK, stride = sample_stride(num_docs, k)
    cdef Py_ssize_t block, thread, q, i, total, start, position, gathered
    cdef float[:, :, ::1] heaps = scratch("compact heaps", (num_threads, nq, k), np.float32)
    cdef Py_ssize_t[:, ::1] sizes = scratch("compact heap sizes", (num_threads, nq), np.intp)
    cdef float[:, ::1] thresholds = scratch("compact thresholds", (num_threads, nq), np.float32)
    cdef float[:, ::1] work = scratch("compact selection", (num_threads, num_threads * k + k + 1), np.float32)
    cdef float[:, ::1] dots = scratch("compact dots", (num_threads, MAX_TILE_QUERIES * COMPACT_BLOCK), np.float32)
    cdef float[::1] lower_k = np.empty(nq, np.float32)
    cdef float[::1] upper_k1 = np.empty(nq, np.float32)
    cdef _SurvivorLists lists = survivor_lists(num_threads)
    cdef scan_state *states = <scan_state *>calloc(num_threads, sizeof(scan_state))
    cdef int status = 0
    cdef survivors_list *found
    cdef int64_t[::1] offsets, fill
    cdef float[::1] selection
    cdef int64_t[::1] out_rows
    cdef int32_t[::1] out_queries
    cdef float[::1] out_lower, out_upper
    if states == NULL:
        raise MemoryError()
    queries.codes = &query_codes[0, 0]
    queries.params = &query_params[0, 0]
    queries.num_queries = nq
    np.asarray(sizes)[...] = 0
    np.asarray(thresholds)[...] = -np.inf
    try:
        for thread in range(num_threads):
            states[thread].heaps = &heaps[thread, 0, 0]
            states[thread].sizes = &sizes[thread, 0]
            states[thread].thresholds = &thresholds[thread, 0]
            states[thread].dots = &dots[thread, 0]
            if not survivors_reset(&lists.lists[thread], min(limit, nq * 4 * (k + 64)), limit):
                raise MemoryError()
            states[thread].survivors = lists.lists[thread]
        with nogil:
            # the sampled blocks first, every thread then starting from the best threshold
            for block in prange(0, blocks, stride, num_threads=num_threads, schedule='dynamic'):
                thread = threadid()
                if states[thread].survivors.status == 0:
                    start = block * COMPACT_BLOCK
                    scan_block(&rows, &queries, k, start, min(<Py_ssize_t>COMPACT_BLOCK, num_docs - start),
                               &states[thread])
            for q in prange(nq, num_threads=min(num_threads, nq), schedule='static'):
                for thread in range(1, num_threads):
                    thresholds[0, q] = max(thresholds[0, q], thresholds[thread, q])
                for thread in range(1, num_threads):
                    thresholds[thread, q] = thresholds[0, q]
            for block in prange(blocks, num_threads=num_threads, schedule='guided'):
                thread = threadid()
                if block % stride != 0 and states[thread].survivors.status == 0:
                    start = block * COMPACT_BLOCK
                    scan_block(&rows, &queries, k, start, min(<Py_ssize_t>COMPACT_BLOCK, num_docs - start),
                               &states[thread])
            # L: the k-th largest of the threads' lower bounds together
            for q in prange(nq, num_threads=min(num_threads, nq), schedule='static'):
                gathered = 0
                for thread in range(num_threads):
                    for i in range(sizes[thread, q]):
                        work[threadid(), gathered] = heaps[thread, q, i]
                        gathered = gathered + 1
                lower_k[q] = kth_largest(&work[threadid(), 0], gathered, k,
                                         &work[threadid(), num_threads * k]) if gathered >= k else -INFINITY
        for thread in range(num_threads):
            lists.lists[thread] = states[thread].survivors  # its room, perhaps grown, is kept
            status = max(status, states[thread].survivors.status)
        if status == 1:
            raise MemoryError()
        if status == 2:
            return None
        # the kept pairs that reach L, bucketed by query (a counting sort)
        offsets = np.zeros(nq + 1, np.int64)
        for thread in range(num_threads):
            found = &states[thread].survivors
            for i in range(found.count):
                if found.upper[i] >= lower_k[found.queries[i]]:
                    offsets[found.queries[i] + 1] += 1
        for q in range(nq):
            offsets[q + 1] += offsets[q]
        total = offsets[nq]
        fill = np.asarray(offsets).copy()
        out_rows = np.empty(total, np.int64)
        out_queries = np.empty(total, np.int32)
        out_lower = np.empty(total, np.float32)
        out_upper = np.empty(total, np.float32)
        for thread in range(num_threads):
            found = &states[thread].survivors
            for i in range(found.count):
                q = found.queries[i]
                if found.upper[i] >= lower_k[q]:
                    position = fill[q]
                    out_rows[position] = found.rows[i]
                    out_queries[position] = <int32_t>q
                    out_lower[position] = found.lower[i]
                    out_upper[position] = found.upper[i]
                    fill[q] = position + 1
        upper_k1[:] = lower_k
        if with_upper:
            selection = np.empty(max(1, total), np.float32)
            with nogil:
                for q in prange(nq, num_threads=min(num_threads, nq), schedule='dynamic'):
                    if offsets[q + 1] - offsets[q] > k:
                        for i in range(offsets[q], offsets[q + 1]):
                            selection[i] = out_upper[i]
                        upper_k1[q] = max(lower_k[q], kth_largest(
                            &selection[offsets[q]], offsets[q + 1] - offsets[q], k + 1, &work[threadid(), 0]))
    finally:
        free(states)
        lists.release_large()
    return (np.asarray(lower_k), np.asarray(upper_k1), np.asarray(out_rows), np.asarray(out_queries),
            np.asarray(out_lower), np.asarray(out_upper))


cdef enum:
    # rows of a single query rescored per unit of work (tiles of TILE_DOCS)
    RESCORE_ROWS = 24


# The exact result of a batch of queries from the pairs its compact scan kept
# (rows, queries, lower: compact_scan's, the pairs that reach L): per query,
# with `ceiling` (its U; candidate sets) the pairs whose lower bound is above
# it are certainly among the k best and are not scored; the others are
# scored in float32 by the rule of _tiles.h, and the k - (certain ones) best
# by score (ties: smaller row) are taken, best first, then the certain rows
# (their scores NaN: not computed). Without `ceiling` (a top-k with scores)
# every pair is scored. Returns the number of pairs scored.
#   features (nq, h); W (num_docs, h); out_rows, out_scores (nq, k)
# The pairs to score are sorted by row, and each run of one row is scored
# with the row read once (parallel over runs, dynamic); a single query's
# rows are scored several at a time instead (their chains of multiply-adds
# side by side: one query's rescoring at 10k documents, 0.22 -> 0.11 ms).
# The selection runs over queries.
@cython.boundscheck(False)
@cython.wraparound(False)
def certified_result(const float[:, ::1] features, const float[:, ::1] W, const int64_t[::1] rows,
                     const int32_t[::1] queries, const float[::1] lower, object ceiling,
                     int64_t[:, ::1] out_rows, float[:, ::1] out_scores, int num_threads):
    cdef Py_ssize_t nq = out_rows.shape[0], k = out_rows.shape[1], n = rows.shape[0], h = features.shape[1]
    cdef Py_ssize_t i, q, size, take, run, count = 0, sure_count = 0
    cdef const float[::1] ceilings = ceiling if ceiling is not None else np.empty(0, np.float32)
    cdef bint sets = ceiling is not None
    cdef int64_t[::1] keys = np.empty(n, np.int64)
    cdef int64_t[::1] sure = np.empty(n, np.int64)
    cdef int64_t[::1] open_rows, offsets, sure_offsets, order, sure_order, fill, starts
    cdef int32_t[::1] open_queries
    cdef float[::1] exact
    for i in range(n):
        if sets and lower[i] > ceilings[queries[i]]:
            sure[sure_count] = i
            sure_count += 1
        else:
            keys[count] = rows[i] * nq + queries[i]
            count += 1
    sorted_keys = np.sort(np.asarray(keys)[:count])  # by row, then query
    open_rows = sorted_keys // nq
    open_queries = (sorted_keys % nq).astype(np.int32)
    exact = np.empty(count, np.float32)
    if count and nq == 1:  # one query: its rows side by side, RESCORE_ROWS a unit
        with nogil:
            for run in prange((count + RESCORE_ROWS - 1) // RESCORE_ROWS, num_threads=num_threads,
                              schedule='dynamic'):
                score_query_rows(&features[0, 0], &W[0, 0], h, &open_rows[run * RESCORE_ROWS],
                                 min(<Py_ssize_t>RESCORE_ROWS, count - run * RESCORE_ROWS),
                                 &exact[run * RESCORE_ROWS])
    elif count:
        starts = np.flatnonzero(np.diff(np.asarray(open_rows), prepend=-1, append=-1)).astype(np.int64)
        with nogil:
            for run in prange(starts.shape[0] - 1, num_threads=num_threads, schedule='dynamic', chunksize=4):
                score_row_pairs(&features[0, 0], &W[open_rows[starts[run]], 0], h, &open_queries[starts[run]],
                                starts[run + 1] - starts[run], &exact[starts[run]])
    # bucket the scored and the certain pairs by query (counting sorts)
    offsets = np.zeros(nq + 1, np.int64)
    sure_offsets = np.zeros(nq + 1, np.int64)
    order = np.empty(max(1, count), np.int64)
    sure_order = np.empty(max(1, sure_count), np.int64)
    fill = np.empty(nq, np.int64)
    for i in range(count):
        offsets[open_queries[i] + 1] += 1
    for i in range(sure_count):
        sure_offsets[queries[sure[i]] + 1] += 1
    for q in range(nq):
        offsets[q + 1] += offsets[q]
        sure_offsets[q + 1] += sure_offsets[q]
    for q in range(nq):
        fill[q] = offsets[q]
    for i in range(count):
        order[fill[open_queries[i]]] = i
        fill[open_queries[i]] += 1
    for q in range(nq):
        fill[q] = sure_offsets[q]
    for i in range(sure_count):
        sure_order[fill[queries[sure[i]]]] = sure[i]
        fill[queries[sure[i]]] += 1
    with nogil:
        for q in prange(nq, num_threads=min(num_threads, nq), schedule='dynamic'):
            take = k - (sure_offsets[q + 1] - sure_offsets[q])
            size = 0
            for i in range(offsets[q], offsets[q + 1]):
                size = push_pair(&out_scores[q, 0], &out_rows[q, 0], size, take, exact[order[i]],
                                 open_rows[order[i]])
            sort_best_first(&out_scores[q, 0], &out_rows[q, 0], size)
            for i in range(sure_offsets[q], sure_offsets[q + 1]):
                out_rows[q, take + i - sure_offsets[q]] = rows[sure_order[i]]
                out_scores[q, take + i - sure_offsets[q]] = NAN
    return count


# --------------------------------------------------------------------------
# Exact MaxSim and rerank.
# --------------------------------------------------------------------------

cdef enum:
    # (QUERY_LANES, _simd.h: query tokens per chunk; queries are stored
    # transposed, chunk by chunk.)
    # Values of a float16 document widened at a time (256 KiB of float32).
    PIECE_VALUES = 65536
    # Chunks whose running maxima are kept at once (64 or 128 query tokens): each
    # block of document rows is loaded once for all of them.
    CHUNK_BATCH = 4
    # Vector registers per chunk row; the largest value, for the array sizes.
    MAX_VECTORS_PER_CHUNK = 4
    CACHE_LINE = 64


# Running maxima over a document's tokens of <query token, document token>,
# for query chunks [first_chunk, end_chunk) (at most CHUNK_BATCH). A chunk is
# (dim, QUERY_LANES): 16 or 32 query tokens transposed. Register blocking: for
# DOC_ROWS document tokens at a time, each chunk row is loaded once into
# vector registers and multiplied by each of the DOC_ROWS values, into
# DOC_ROWS x (QUERY_LANES / VECTOR_FLOATS) accumulators. best holds
# (end_chunk - first_chunk) x QUERY_LANES maxima. While it works, it prefetches
# the same stretch of next_doc (NULL: none; next_doc_bytes long), the document
# the caller scores next.
cdef void chunk_maxima(const float *chunks, Py_ssize_t first_chunk, Py_ssize_t end_chunk,
                       const float *doc, Py_ssize_t num_doc_tokens, Py_ssize_t dim,
                       const char *next_doc, Py_ssize_t next_doc_bytes,
                       float *best, bint resume) noexcept nogil:
    cdef lemur_vector accumulators[DOC_ROWS * MAX_VECTORS_PER_CHUNK]
    cdef lemur_vector query_row[MAX_VECTORS_PER_CHUNK]
    cdef lemur_vector top
    cdef Py_ssize_t parts = QUERY_LANES // VECTOR_FLOATS
    cdef Py_ssize_t token = 0, block_rows, row, part, i, chunk, offset
    cdef Py_ssize_t row_start[DOC_ROWS]
    cdef const float *chunk_data
    cdef const float *doc_rows
    cdef float *chunk_best
    cdef float value
    if not resume:
        for i in range((end_chunk - first_chunk) * QUERY_LANES):
            best[i] = -INFINITY
    while token < num_doc_tokens:
        doc_rows = doc + token * dim
        # a block of DOC_ROWS rows; a shorter last one (of 3 rows or more)
        # repeats its last row, which leaves the maxima as they are
        block_rows = min(<Py_ssize_t>DOC_ROWS, num_doc_tokens - token)
        if block_rows < 3 and block_rows < DOC_ROWS:
            block_rows = 1
        for row in range(DOC_ROWS):
            row_start[row] = min(row, block_rows - 1) * dim
        if next_doc != NULL:
            offset = token * dim * sizeof(float)
            while offset < min((token + block_rows) * dim * sizeof(float), next_doc_bytes):
                prefetch(next_doc + offset)
                offset += CACHE_LINE
        for chunk in range(first_chunk, end_chunk):
            chunk_data = chunks + chunk * dim * QUERY_LANES
            chunk_best = best + (chunk - first_chunk) * QUERY_LANES
            if block_rows > 1:
                for part in range(DOC_ROWS * parts):
                    accumulators[part] = vector_zero()
                for i in range(dim):
                    for part in range(parts):
                        query_row[part] = vector_load(chunk_data + i * QUERY_LANES + part * VECTOR_FLOATS)
                    for row in range(DOC_ROWS):
                        value = doc_rows[row_start[row] + i]
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
                for row in range(DOC_ROWS if block_rows > 1 else 1):
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


# Running maxima (see chunk_maxima) over a document stored as float32 or as
# float16 (bits): a float16 document is widened PIECE_VALUES floats at a time
# into `piece` (room for that many) and its pieces' maxima are combined, so
# any length takes bounded scratch; a float32 one is read in place.
cdef void document_maxima(const float *chunks, Py_ssize_t first_chunk, Py_ssize_t end_chunk,
                          const doc_value *doc, Py_ssize_t num_doc_tokens, Py_ssize_t dim,
                          const char *next_doc, Py_ssize_t next_doc_bytes, float *best,
                          float *piece) noexcept nogil:
    cdef Py_ssize_t per_piece = max(1, PIECE_VALUES // dim), start = 0, count
    if doc_value is float:
        chunk_maxima(chunks, first_chunk, end_chunk, doc, num_doc_tokens, dim, next_doc, next_doc_bytes,
                     best, False)
    else:
        while start < num_doc_tokens:
            count = min(per_piece, num_doc_tokens - start)
            half_to_float(doc + start * dim, piece, count * dim)
            chunk_maxima(chunks, first_chunk, end_chunk, piece, count, dim,
                         next_doc if start == 0 else NULL, next_doc_bytes, best, start > 0)
            start += count


# MaxSim of one query (transposed chunks, num_tokens >= 1) with one document:
# the sum over the query's tokens, in order, of the max over the document's
# tokens. Prefetches next_doc (see chunk_maxima) during the first batch.
cdef float maxsim_pair(const float *chunks, Py_ssize_t num_tokens, const doc_value *doc,
                       Py_ssize_t num_doc_tokens, Py_ssize_t dim, const char *next_doc,
                       Py_ssize_t next_doc_bytes, float *piece) noexcept nogil:
    cdef float best[CHUNK_BATCH * QUERY_LANES]
    cdef float total = 0
    cdef Py_ssize_t num_chunks = (num_tokens + QUERY_LANES - 1) // QUERY_LANES
    cdef Py_ssize_t first = 0, end, lane
    while first < num_chunks:
        end = min(first + CHUNK_BATCH, num_chunks)
        document_maxima(chunks, first, end, doc, num_doc_tokens, dim,
                        next_doc if first == 0 else NULL, next_doc_bytes, best, piece)
        for lane in range(min((end - first) * QUERY_LANES, num_tokens - first * QUERY_LANES)):
            total += best[lane]
        first = end
    return total


# The (query, candidate) pairs grouped by document: (the candidates
# flattened, their order by id (stable), the start of each id's run in it,
# then the number of pairs).
cdef tuple pairs_by_document(const int64_t[:, ::1] candidates):
    flat = np.asarray(candidates).reshape(-1)
    order = np.argsort(flat, kind="stable")
    starts = np.concatenate(([0], np.flatnonzero(np.diff(flat[order])) + 1, [flat.shape[0]])).astype(np.int64)
    return flat, order, starts


# The tokens of the document of pair group `group` (pairs_by_document; NULL
# past the last group, and for -1) and their size in bytes: what a kernel
# prefetches while it finishes the group before.
cdef inline const char *group_document(const doc_value[:, ::1] doc_tokens, const int64_t[::1] doc_offsets,
                                       const int64_t[::1] flat_candidates, const int64_t[::1] order,
                                       const int64_t[::1] group_starts, Py_ssize_t group,
                                       Py_ssize_t *num_bytes) noexcept nogil:
    cdef int64_t doc
    num_bytes[0] = 0
    if group + 1 >= group_starts.shape[0]:
        return NULL
    doc = flat_candidates[order[group_starts[group]]]
    if doc < 0:
        return NULL
    num_bytes[0] = (doc_offsets[doc + 1] - doc_offsets[doc]) * doc_tokens.shape[1] * sizeof(doc_value)
    return <const char *>&doc_tokens[doc_offsets[doc], 0]


# Exact MaxSim of each query with each of its candidate documents.
#   query_tokens (total, dim), query_offsets (num_queries + 1)
#   doc_tokens (total, dim), doc_offsets (num_docs + 1): every document has >= 1 token
#   candidates (num_queries, num_candidates) int64: ids in [0, num_docs), or -1
#   out (num_queries, num_candidates): the score; -inf for -1; 0 for a query
#   without tokens
# The (query, candidate) pairs are grouped by document (a stable argsort of
# the ids), and the groups are the parallel work units (guided schedule:
# runs of consecutive groups, shorter towards the end): each document is
# read from memory once however many queries have it as a candidate, and the
# next group's document is prefetched while the last pair of a group is
# scored, mostly by the thread that scores it next (a dynamic schedule by
# twos left half the prefetches to the other core: 8% slower for a single
# query). Queries are transposed once, up front.
@cython.boundscheck(False)
@cython.wraparound(False)
def maxsim_scores(const float[:, ::1] query_tokens, const int64_t[::1] query_offsets,
                  const doc_value[:, ::1] doc_tokens, const int64_t[::1] doc_offsets,
                  const int64_t[:, ::1] candidates, float[:, ::1] out, int num_threads):
    cdef Py_ssize_t num_queries = candidates.shape[0], num_candidates = candidates.shape[1]
    cdef Py_ssize_t num_pairs = num_queries * num_candidates
    cdef Py_ssize_t dim = doc_tokens.shape[1]
    cdef Py_ssize_t query, group, position, pair, num_tokens, num_groups
    cdef int64_t doc
    cdef const char *next_doc_data
    cdef Py_ssize_t next_doc_bytes
    cdef int64_t[::1] chunk_offsets = np.empty(num_queries + 1, dtype=np.int64)
    cdef float[::1] chunks
    cdef float[:, ::1] pieces = scratch("document pieces", (num_threads, PIECE_VALUES), np.float32)
    cdef const float *widened
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
    flat_candidates, order, group_starts = pairs_by_document(candidates)
    num_groups = group_starts.shape[0] - 1
    flat_out = np.asarray(out).reshape(-1)
    with nogil:
        for query in prange(num_queries, num_threads=min(num_threads, num_queries), schedule='static'):
            num_tokens = query_offsets[query + 1] - query_offsets[query]
            if num_tokens > 0:
                transpose_query(&query_tokens[query_offsets[query], 0], num_tokens, dim,
                                &chunks[chunk_offsets[query]])
        for group in prange(num_groups, num_threads=num_threads, schedule='guided'):
            doc = flat_candidates[order[group_starts[group]]]
            next_doc_data = group_document(doc_tokens, doc_offsets, flat_candidates, order, group_starts,
                                           group + 1, &next_doc_bytes)
            # a float16 document that fits one piece is widened once for all its pairs
            widened = NULL
            if doc_value is not float:
                if doc >= 0 and (doc_offsets[doc + 1] - doc_offsets[doc]) * dim <= PIECE_VALUES:
                    half_to_float(&doc_tokens[doc_offsets[doc], 0], &pieces[threadid(), 0],
                                  (doc_offsets[doc + 1] - doc_offsets[doc]) * dim)
                    widened = &pieces[threadid(), 0]
            for position in range(group_starts[group], group_starts[group + 1]):
                pair = order[position]
                query = pair // num_candidates
                num_tokens = query_offsets[query + 1] - query_offsets[query]
                if doc < 0:
                    flat_out[pair] = -INFINITY
                elif num_tokens == 0:
                    flat_out[pair] = 0
                elif widened != NULL:
                    flat_out[pair] = maxsim_pair(
                        &chunks[chunk_offsets[query]], num_tokens, widened,
                        doc_offsets[doc + 1] - doc_offsets[doc], dim,
                        next_doc_data if position + 1 == group_starts[group + 1] else NULL,
                        next_doc_bytes, NULL)
                else:
                    flat_out[pair] = maxsim_pair(
                        &chunks[chunk_offsets[query]], num_tokens,
                        &doc_tokens[doc_offsets[doc], 0], doc_offsets[doc + 1] - doc_offsets[doc],
                        dim, next_doc_data if position + 1 == group_starts[group + 1] else NULL,
                        next_doc_bytes, &pieces[threadid(), 0])


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
        for query in prange(num_queries, num_threads=min(num_threads, num_queries), schedule='static'):
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
# The rerank's screen: bounds on exact MaxSim from products of compact
# tokens: bfloat16 on AMX tiles or by VDPBF16PS, or int16 codes by VPDPWSSD
# (lemur/screening.py has the bounds and their proofs).
# --------------------------------------------------------------------------

cdef enum:
    # document tokens rounded at a time (a multiple of AMX_PANEL and of INT16_ROWS)
    SCREEN_TOKENS = 512
    # per query: sum ||q_i||, the bound's factors of N and R, its constant term
    SCREEN_QUERY_TERMS = 4

cdef bint SCREEN_TILES = amx_detect()
cdef bint SCREEN_INT16 = int16_screen_compiled() and COMPACT_CPU.vnni512
# (the int16 codes are laid out in the bfloat16 operands' panels and steps: _screen_int16.h)
assert SCREEN_TOKENS % INT16_ROWS == 0
TILES_SCREEN = "AMX-BF16 tiles"
BFLOAT16_SCREEN = "AVX512_BF16 (VDPBF16PS)"
INT16_SCREEN = "AVX512-VNNI (VPDPWSSD, int16 codes)"
#: The screens this CPU can run, the one the rerank takes first: AMX tiles,
#: VDPBF16PS (AVX512_BF16 where it runs at twice float32 FMA's rate: AMD's
#: processors), VPDPWSSD on int16 codes (AVX512-VNNI: 32 multiply-adds an
#: instruction, where the CPU has neither of the others).
SCREEN_KERNELS = tuple(name for name, present in ((TILES_SCREEN, SCREEN_TILES),
                                                  (BFLOAT16_SCREEN, COMPACT_CPU.bf16_dot),
                                                  (INT16_SCREEN, SCREEN_INT16)) if present)
#: The rerank's screen here ("": none).
SCREEN_KERNEL = SCREEN_KERNELS[0] if SCREEN_KERNELS else ""

cdef double SCREEN_LIMIT = 2.0 ** 100   # sum ||q_i|| * N past this: no bound (scores could overflow)
cdef double SCREEN_MOST_ROUNDINGS = 2.0 ** 22   # a count of roundings past this: no bound (gamma_n needs n u < 1)
cdef double FLUSHED = 2.0 ** -126       # below this, AMX and VDPBF16PS flush a result to zero
cdef double HALF_SUBNORMAL = 2.0 ** -150  # the most a float32 product that underflows is off by


# An upper bound on a norm from its square summed in float32 in any order
# over dim values (every term >= 0: at most 2 dim + 2 roundings, underflows
# at most 2^-149 each): widened, square-rooted in float64.
cdef inline double norm_above(float squares, Py_ssize_t dim) noexcept nogil:
    return sqrt(<double>squares * (1 + gamma_of(2.0 * dim + 2)) + dim * 2.0 ** -149) * (1 + 2.0 ** -20)


# An upper bound on ||s c - x|| for an int16 token from the float32 sum of
# its errors squared, each error rounded once (an FMA: relative 2^-24 or,
# underflowing, 2^-150 off).
cdef inline double int16_error_above(float squares, Py_ssize_t dim) noexcept nogil:
    return (norm_above(squares, dim) + sqrt(<double>dim) * HALF_SUBNORMAL) * (1 + 2.0 ** -22)


# One query's terms of the bound (screening.py) from its tokens (num_tokens,
# dim) and, for int16 codes, their codes (num_tokens, stride) and scales
# (NULL: bfloat16) -> terms[0] = sum ||q_i||, terms[1] = a, terms[2] = b,
# terms[3] = c, so that the error of a pair with a document of largest token
# norm N and largest rounding error R is at most a N + b R + c before the
# float32 sum's own term. float64 throughout (s c is exact in it), widened
# by 2^-30 for that.
cdef void screen_query_terms(const float *tokens, Py_ssize_t num_tokens, Py_ssize_t dim,
                             const int16_t *codes, const float *scales, Py_ssize_t stride,
                             double *terms) noexcept nogil:
    # norm_sum: sum ||q_i||; beta_sum: sum beta_i; constant: c, the underflows' sum (screening.py)
    cdef double norm_sum = 0, beta_sum = 0, constant = 0, norm, rounded, residual, value, wide
    # D: the roundings of a compact product (bfloat16: the tile's; int16: the
    # conversion of its exact sum and its two scalings)
    cdef double product_roundings = 3 if scales != NULL else 4.0 * ((dim + 1) // 2) + 2
    cdef double exact_depth = gamma_of(2.0 * dim), product_depth = gamma_of(product_roundings)
    cdef Py_ssize_t j, i
    for j in range(num_tokens):
        norm = 0
        rounded = 0
        residual = 0
        for i in range(dim):
            value = tokens[j * dim + i]
            if scales != NULL:
                wide = <double>scales[j] * codes[j * stride + i]
            else:
                wide = bfloat16_value(bfloat16_bits(<float>value))
            norm += value * value
            rounded += wide * wide
            residual += (wide - value) * (wide - value)
        norm_sum += sqrt(norm)
        beta_sum += sqrt(residual) + product_depth * sqrt(rounded)
        # t_i, then the underflow of the float32 dot product itself (2 dim roundings)
        if scales != NULL:
            constant += HALF_SUBNORMAL * (1 + 2.0 * scales[j])
        else:
            constant += product_roundings * FLUSHED
        constant += 2.0 * dim * HALF_SUBNORMAL
    norm_sum *= 1 + 2.0 ** -30
    beta_sum *= 1 + 2.0 ** -30
    terms[0] = norm_sum
    terms[1] = (exact_depth * norm_sum + beta_sum) * (1 + 2.0 ** -30)
    terms[2] = (beta_sum + norm_sum) * (1 + 2.0 ** -30)
    terms[3] = constant * (1 + 2.0 ** -30)


# The screen's operands of one query (num_tokens >= 0 tokens of dim values)
# into `packed` (its panels, amx_panels(num_tokens) * steps * AMX_STEP_VALUES
# values) and its terms; int16: codes (num_tokens rows of `stride`) and
# scales (whole panels, zero past the last token) are filled too.
cdef void screen_pack_query(const float *tokens, Py_ssize_t num_tokens, Py_ssize_t dim, Py_ssize_t steps,
                            bint int16, int limit, uint16_t *packed, int16_t *codes, float *scales,
                            double *terms) noexcept nogil:
    cdef Py_ssize_t stride = steps * AMX_PANEL, panel, j
    cdef float squares[2]
    if int16:
        for j in range(amx_panels(num_tokens) * AMX_PANEL):
            scales[j] = int16_codes(&tokens[j * dim], dim, stride, limit, &codes[j * stride], squares) \
                if j < num_tokens else 0
        for panel in range(amx_panels(num_tokens)):
            int16_pack_panel(codes, stride, num_tokens, steps, panel,
                             <int16_t *>&packed[panel * steps * AMX_STEP_VALUES])
        screen_query_terms(tokens, num_tokens, dim, codes, scales, stride, terms)
    else:
        for panel in range(amx_panels(num_tokens)):
            amx_pack_k_contiguous(tokens, dim, num_tokens, dim, panel, True,
                                  &packed[panel * steps * AMX_STEP_VALUES])
        screen_query_terms(tokens, num_tokens, dim, NULL, NULL, 0, terms)


# Rounds num_tokens (<= SCREEN_TOKENS) tokens of a document, widened into
# `widened` first if float16, to bfloat16 rows of `stride` values in
# `rounded` (amx_round_rows), or to int16 codes there and their scales in
# `scales` (int16_round_rows); norms[0] and norms[1] become at least their
# largest norm N and rounding error R, or stay if larger.
cdef void round_screen_chunk(const doc_value *tokens, Py_ssize_t num_tokens, Py_ssize_t dim, Py_ssize_t stride,
                             bint int16, int limit, float *widened, uint16_t *rounded, float *scales,
                             double *norms) noexcept nogil:
    cdef const float *values
    cdef float squares[2]
    if doc_value is float:
        values = tokens
    else:
        half_to_float(tokens, widened, num_tokens * dim)
        values = widened
    if int16:
        int16_round_rows(values, num_tokens, dim, stride, limit, <int16_t *>rounded, scales, squares)
        norms[1] = max(norms[1], int16_error_above(squares[1], dim))
    else:
        amx_round_rows(values, num_tokens, dim, stride, rounded, squares)
        norms[1] = max(norms[1], norm_above(squares[1], dim))
    norms[0] = max(norms[0], norm_above(squares[0], dim))


# Running maxima of a document's rounded tokens' products with a query's
# (amx_column_maxima's operands and result) on the screen's kernel,
# prefetching next_bytes at next (NULL: none) meanwhile.
cdef inline void screen_column_maxima(int kernel, const uint16_t *rows, const float *row_scales,
                                      Py_ssize_t num_rows, Py_ssize_t stride, const uint16_t *packed,
                                      const float *packed_scales, Py_ssize_t columns, Py_ssize_t steps,
                                      bint resume, const char *next, Py_ssize_t next_bytes, float *c,
                                      float *maxima) noexcept nogil:
    if kernel == 0:
        amx_column_maxima(rows, num_rows, stride, packed, columns, steps, resume, next, next_bytes, c, maxima)
    elif kernel == 1:
        bf16_dot_column_maxima(rows, num_rows, stride, packed, columns, steps, resume, next, next_bytes, maxima)
    else:
        int16_column_maxima(<const int16_t *>rows, row_scales, num_rows, stride, <const int16_t *>packed,
                            packed_scales, columns, steps, resume, next, next_bytes, maxima)


# lower[q, c] <= maxsim_scores' value <= upper[q, c] for each (query,
# candidate) pair, from the maxima of products of the compact tokens on
# `kernel` (one of SCREEN_KERNELS; None: SCREEN_KERNEL) (screening.py: the
# bound); (-inf, +inf) where no bound is known (a query without tokens,
# magnitudes near overflow, values that are not finite, counts of roundings
# past SCREEN_MOST_ROUNDINGS, a thread whose floating point is not
# float_environment_default()), (-inf, -inf) for -1 candidates. Queries are packed once, up front; the pairs are grouped by
# document (pairs_by_document), the groups are the parallel units (guided,
# as in maxsim_scores): a document of at most SCREEN_TOKENS tokens is
# rounded once for all its queries (round_screen_chunk), a longer one
# SCREEN_TOKENS at a time for each; the next group's document is prefetched
# while the last pair of a group is multiplied (its rounding reads it from
# memory otherwise: a third of the screen's time for single queries).
@cython.boundscheck(False)
@cython.wraparound(False)
def maxsim_bounds(const float[:, ::1] query_tokens, const int64_t[::1] query_offsets,
                  const doc_value[:, ::1] doc_tokens, const int64_t[::1] doc_offsets,
                  const int64_t[:, ::1] candidates, double[:, ::1] lower, double[:, ::1] upper,
                  int num_threads, kernel=None):
    cdef Py_ssize_t num_queries = candidates.shape[0], num_candidates = candidates.shape[1]
    cdef Py_ssize_t dim = doc_tokens.shape[1], steps = amx_steps(dim)
    cdef Py_ssize_t query, group, position, pair, num_tokens, num_groups, num_doc_tokens, start, count, i
    cdef Py_ssize_t most_panels = 0, next_doc_bytes
    cdef int64_t doc
    cdef const char *next_doc_data
    cdef double error, total, magnitude
    cdef double *norms
    cdef bint fits, finite
    if not SCREEN_KERNELS:
        raise RuntimeError("maxsim_bounds needs a screen kernel: AMX, AMD's AVX512_BF16 or AVX512-VNNI "
                           "(kernels.SCREEN_KERNELS is empty here)")
    if kernel is None:
        kernel = SCREEN_KERNEL
    if kernel not in SCREEN_KERNELS:
        raise ValueError(f"kernel must be one of this CPU's screens {SCREEN_KERNELS}, got {kernel!r}")
    cdef int which = (TILES_SCREEN, BFLOAT16_SCREEN, INT16_SCREEN).index(kernel)
    cdef bint int16 = which == 2
    cdef int limit = int16_limit(dim)
    if tuple(lower.shape) != tuple(candidates.shape) or tuple(upper.shape) != tuple(candidates.shape):
        raise ValueError("lower and upper must have the candidates' shape")
    if num_queries * num_candidates == 0:
        return
    cdef int64_t[::1] packed_offsets = np.empty(num_queries + 1, dtype=np.int64)
    packed_offsets[0] = 0
    for query in range(num_queries):
        num_tokens = query_offsets[query + 1] - query_offsets[query]
        most_panels = max(most_panels, amx_panels(num_tokens))
        packed_offsets[query + 1] = packed_offsets[query] + amx_panels(num_tokens) * steps * AMX_STEP_VALUES
    cdef uint16_t[::1] queries_packed = scratch("screen queries", (max(1, packed_offsets[num_queries]),), np.uint16)
    cdef double[:, ::1] terms = scratch("screen terms", (num_queries, SCREEN_QUERY_TERMS), np.float64)
    cdef Py_ssize_t stride = steps * AMX_PANEL   # a rounded token's values, padded to whole steps
    # int16: each query's codes (a row of `stride` for each token of its panels, as many
    # values as its packed panels) and their scales
    cdef int16_t[::1] query_codes = scratch("screen query codes", (max(1, packed_offsets[num_queries]),), np.int16)
    cdef float[::1] query_scales = scratch("screen query scales", (max(1, packed_offsets[num_queries] // stride),),
                                           np.float32)
    cdef uint16_t[:, ::1] rounded = scratch("screen document", (num_threads, SCREEN_TOKENS * stride), np.uint16)
    cdef float[:, ::1] row_scales = scratch("screen document scales", (num_threads, SCREEN_TOKENS), np.float32)
    cdef float[:, ::1] widened = scratch(
        "screen widened", (num_threads, SCREEN_TOKENS * dim if doc_value is uint16_t else 1), np.float32)
    cdef float[:, ::1] pieces = scratch("screen pieces", (num_threads, 1024 + max(1, most_panels) * AMX_PANEL),
                                        np.float32)
    # (N, R) of each thread's document, a cache line each
    cdef double[:, ::1] document_norms = scratch("screen norms", (num_threads, 8), np.float64)
    cdef float *maxima
    flat_array, order_array, starts_array = pairs_by_document(candidates)
    cdef const int64_t[::1] flat_candidates = flat_array
    cdef const int64_t[::1] order = order_array
    cdef const int64_t[::1] group_starts = starts_array
    cdef double[::1] flat_lower = np.asarray(lower).reshape(-1)
    cdef double[::1] flat_upper = np.asarray(upper).reshape(-1)
    # each thread's float_environment_default(): the bound holds in that environment only
    cdef int[::1] environment = np.ones(num_threads, dtype=np.intc)
    num_groups = group_starts.shape[0] - 1
    with nogil:
        for query in prange(num_queries, num_threads=min(num_threads, num_queries), schedule='static'):
            num_tokens = query_offsets[query + 1] - query_offsets[query]
            screen_pack_query(&query_tokens[query_offsets[query], 0], num_tokens, dim, steps, int16, limit,
                              &queries_packed[packed_offsets[query]],
                              &query_codes[packed_offsets[query]],
                              &query_scales[packed_offsets[query] // stride], &terms[query, 0])
        with parallel(num_threads=num_threads):
            environment[threadid()] = float_environment_default()
            if which == 0:
                amx_begin()
            for group in prange(num_groups, schedule='guided'):
                doc = flat_candidates[order[group_starts[group]]]
                next_doc_data = group_document(doc_tokens, doc_offsets, flat_candidates, order, group_starts,
                                               group + 1, &next_doc_bytes)
                maxima = &pieces[threadid(), 1024]
                norms = &document_norms[threadid(), 0]
                num_doc_tokens = 0
                fits = False
                if doc >= 0:
                    num_doc_tokens = doc_offsets[doc + 1] - doc_offsets[doc]
                    fits = num_doc_tokens <= SCREEN_TOKENS
                    if fits:
                        norms[0] = 0
                        norms[1] = 0
                        round_screen_chunk(&doc_tokens[doc_offsets[doc], 0], num_doc_tokens, dim, stride, int16,
                                           limit, &widened[threadid(), 0], &rounded[threadid(), 0],
                                           &row_scales[threadid(), 0], norms)
                for position in range(group_starts[group], group_starts[group + 1]):
                    pair = order[position]
                    query = pair // num_candidates
                    num_tokens = query_offsets[query + 1] - query_offsets[query]
                    if doc < 0:
                        flat_lower[pair] = -INFINITY
                        flat_upper[pair] = -INFINITY
                        continue
                    if num_tokens == 0:
                        flat_lower[pair] = -INFINITY
                        flat_upper[pair] = INFINITY
                        continue
                    if fits:
                        screen_column_maxima(which, &rounded[threadid(), 0], &row_scales[threadid(), 0],
                                             num_doc_tokens, stride, &queries_packed[packed_offsets[query]],
                                             &query_scales[packed_offsets[query] // stride], num_tokens, steps,
                                             False,
                                             next_doc_data if position + 1 == group_starts[group + 1] else NULL,
                                             next_doc_bytes, &pieces[threadid(), 0], maxima)
                    else:
                        norms[0] = 0
                        norms[1] = 0
                        start = 0
                        while start < num_doc_tokens:
                            count = min(<Py_ssize_t>SCREEN_TOKENS, num_doc_tokens - start)
                            round_screen_chunk(&doc_tokens[doc_offsets[doc] + start, 0], count, dim, stride, int16,
                                               limit, &widened[threadid(), 0], &rounded[threadid(), 0],
                                               &row_scales[threadid(), 0], norms)
                            screen_column_maxima(which, &rounded[threadid(), 0], &row_scales[threadid(), 0], count,
                                                 stride, &queries_packed[packed_offsets[query]],
                                                 &query_scales[packed_offsets[query] // stride], num_tokens,
                                                 steps, start > 0, NULL, 0, &pieces[threadid(), 0], maxima)
                            start = start + count
                    total = 0
                    magnitude = 0
                    for i in range(num_tokens):
                        total = total + maxima[i]
                        magnitude = magnitude + fabs(maxima[i])
                    # not finite (an infinity, a NaN): no bound
                    finite = magnitude < INFINITY and terms[query, 0] * norms[0] <= SCREEN_LIMIT
                    # the maxima's error, then the float32 sum's over them (gamma of its additions)
                    error = terms[query, 1] * norms[0] + terms[query, 2] * norms[1] + terms[query, 3]
                    error = (error + gamma_of(<double>num_tokens) * (magnitude + error)) * (1 + 2.0 ** -20) \
                        + 2.0 ** -40 * magnitude
                    if finite:
                        flat_lower[pair] = total - error
                        flat_upper[pair] = total + error
                    else:
                        flat_lower[pair] = -INFINITY
                        flat_upper[pair] = INFINITY
            if which == 0:
                amx_end()
    # another rounding mode, flushed underflows, or counts of roundings too large for gamma: no bound
    if (min(environment) == 0 or not float_environment_default()
            or max(4.0 * ((dim + 1) // 2) + 2, 2.0 * dim + 4) > SCREEN_MOST_ROUNDINGS
            or np.diff(np.asarray(query_offsets)).max(initial=0) > SCREEN_MOST_ROUNDINGS):
        valid = np.asarray(candidates) >= 0
        np.asarray(lower)[valid] = -np.inf
        np.asarray(upper)[valid] = np.inf


def float_environment() -> bool:
    """Whether the calling thread's floating point runs as the compact
    bounds assume (rounding to nearest, gradual underflow: no flush-to-zero
    or denormals-are-zero)."""
    return bool(float_environment_default())


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
                     const doc_value[:, ::1] doc_tokens, const int64_t[::1] doc_offsets,
                     float[:, ::1] out, int num_threads):
    cdef Py_ssize_t num_docs = out.shape[0], dim = doc_tokens.shape[1]
    cdef Py_ssize_t doc
    cdef float[:, ::1] pieces = scratch("document pieces", (num_threads, PIECE_VALUES), np.float32)
    if num_docs == 0 or num_sample_rows == 0:
        return
    with nogil:
        for doc in prange(num_docs, num_threads=num_threads, schedule='dynamic'):
            one_document_targets(&sample_chunks[0], num_sample_rows,
                                 &doc_tokens[doc_offsets[doc], 0],
                                 doc_offsets[doc + 1] - doc_offsets[doc], dim, &out[doc, 0],
                                 &pieces[threadid(), 0])


# out[s] = max over the document's tokens of <sample row s, token>, for every
# sample row (see document_targets); the running maxima live on this call's stack.
cdef void one_document_targets(const float *sample_chunks, Py_ssize_t num_sample_rows,
                               const doc_value *doc, Py_ssize_t num_doc_tokens, Py_ssize_t dim,
                               float *out, float *piece) noexcept nogil:
    cdef float best[CHUNK_BATCH * QUERY_LANES]
    cdef Py_ssize_t num_chunks = (num_sample_rows + QUERY_LANES - 1) // QUERY_LANES
    cdef Py_ssize_t first = 0, end, lane
    while first < num_chunks:
        end = min(first + CHUNK_BATCH, num_chunks)
        document_maxima(sample_chunks, first, end, doc, num_doc_tokens, dim, NULL, 0, best, piece)
        for lane in range(min((end - first) * QUERY_LANES, num_sample_rows - first * QUERY_LANES)):
            out[first * QUERY_LANES + lane] = best[lane]
        first = end


cdef enum:
    # Rows widened to float64 at a time by the float64 kernels below, and the
    # columns of the Gram matrix per unit of work.
    WIDE_BLOCK_ROWS = 256
    GRAM_BLOCK_ROWS = 1024
    GRAM_PANEL = 512


# Widens rows [start, start + count) of a float32 matrix (m, width) into a
# float64 buffer (count, width).
cdef void widen_rows(const float[:, ::1] rows, Py_ssize_t start, Py_ssize_t count,
                     double *out) noexcept nogil:
    cdef Py_ssize_t i, j, width = rows.shape[1]
    for i in range(count):
        for j in range(width):
            out[i * width + j] = rows[start + i, j]


# out[:c1, c0:c1] += block[:, :c1]^T block[:, c0:c1] for a widened block of
# rows (count, n): one single-threaded dgemm above the diagonal, one dsyrk for
# the diagonal block's upper triangle.
cdef void gram_panel(const double *block, Py_ssize_t count, Py_ssize_t n, Py_ssize_t c0,
                     Py_ssize_t c1, double *out) noexcept nogil:
    if c0 > 0:
        scipy_cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, <int>c0, <int>(c1 - c0),
                          <int>count, 1.0, block, <int>n, block + c0, <int>n,
                          1.0, out + c0, <int>n)
    scipy_cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, <int>(c1 - c0), <int>count,
                      1.0, block + c0, <int>n, 1.0, out + c0 * n + c0, <int>n)


# out (n, n) float64: the upper triangle of rows^T rows, rows (m, n) float32,
# accumulated in float64 block by block of GRAM_BLOCK_ROWS rows: each block
# is widened once, then the units of work, panels of GRAM_PANEL columns
# [c0, c1) largest first (dynamic schedule), add its share (gram_panel).
# Every entry is summed in the same order whatever the number of threads.
@cython.boundscheck(False)
@cython.wraparound(False)
def gram_upper_float64(const float[:, ::1] rows, double[:, ::1] out, int num_threads):
    cdef Py_ssize_t m = rows.shape[0], n = rows.shape[1], unit, c0, start = 0, count
    cdef Py_ssize_t panels = (n + GRAM_PANEL - 1) // GRAM_PANEL
    cdef double[:, ::1] wide = np.empty((GRAM_BLOCK_ROWS, n), dtype=np.float64)
    out[:, :] = 0
    ensure_single_threaded_blas()
    with nogil:
        while start < m:
            count = min(<Py_ssize_t>GRAM_BLOCK_ROWS, m - start)
            widen_rows(rows, start, count, &wide[0, 0])
            for unit in prange(panels, num_threads=num_threads, schedule='dynamic'):
                c0 = (panels - 1 - unit) * GRAM_PANEL
                gram_panel(&wide[0, 0], count, n, c0, min(n, c0 + GRAM_PANEL), &out[0, 0])
            start += count


def symmetric_eigen(double[:, ::1] matrix, double[::1] eigenvalues):
    """Eigenvalues (ascending) and eigenvectors (columns, overwriting `matrix`)
    of a symmetric matrix given by its upper triangle (LAPACK dsyevd, on the
    calling thread)."""
    cdef int n = <int>matrix.shape[0], info
    ensure_single_threaded_blas()
    with nogil:
        info = scipy_LAPACKE_dsyevd(LAPACK_ROW_MAJOR, b'V', b'U', n, &matrix[0, 0], n,
                                    &eigenvalues[0])
    if info != 0:
        raise ValueError(f"the eigendecomposition did not converge (LAPACK dsyevd info={info})")


# out (m, n) float32 = rows (m, k) float32 . factor (k, n) float64, computed
# in float64 and rounded. Units of work: blocks of WIDE_BLOCK_ROWS rows
# (dynamic schedule), each widened and multiplied by one single-threaded dgemm.
@cython.boundscheck(False)
@cython.wraparound(False)
def multiply_float64(const float[:, ::1] rows, const double[:, ::1] factor, float[:, ::1] out,
                     int num_threads):
    cdef Py_ssize_t m = rows.shape[0], k = rows.shape[1], n = factor.shape[1]
    cdef Py_ssize_t blocks = (m + WIDE_BLOCK_ROWS - 1) // WIDE_BLOCK_ROWS
    cdef Py_ssize_t block, start, count, i, j
    cdef double[:, ::1] wide = np.empty((num_threads, WIDE_BLOCK_ROWS * k), dtype=np.float64)
    cdef double[:, ::1] product = np.empty((num_threads, WIDE_BLOCK_ROWS * n), dtype=np.float64)
    cdef double *wide_block
    cdef double *product_block
    ensure_single_threaded_blas()
    with nogil:
        for block in prange(blocks, num_threads=num_threads, schedule='dynamic'):
            start = block * WIDE_BLOCK_ROWS
            count = min(<Py_ssize_t>WIDE_BLOCK_ROWS, m - start)
            wide_block = &wide[threadid(), 0]
            product_block = &product[threadid(), 0]
            widen_rows(rows, start, count, wide_block)
            scipy_cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, <int>count, <int>n,
                              <int>k, 1.0, wide_block, <int>k, &factor[0, 0], <int>n,
                              0.0, product_block, <int>n)
            for i in range(count):
                for j in range(n):
                    out[start + i, j] = <float>product_block[i * n + j]


# --------------------------------------------------------------------------
# Centring token vectors (txtai's collection centring).
# --------------------------------------------------------------------------

# out[i] = centred tokens[i]: r = tokens[i] / |tokens[i]|, r = r - center,
# out[i] = r / |r| (0 where |r| = 0); an all-zero row (padding) is copied
# unchanged. tokens, out (num_tokens, dim) float32 (out may be tokens itself),
# center (dim,). Norms in float64. Parallel over blocks of rows.
@cython.boundscheck(False)
@cython.wraparound(False)
def center_tokens(const float[:, ::1] tokens, const float[::1] center, float[:, ::1] out,
                  int num_threads):
    cdef Py_ssize_t num_tokens = tokens.shape[0], dim = tokens.shape[1], row, j
    cdef double norm, scale
    with nogil:
        for row in prange(num_tokens, num_threads=num_threads, schedule='static'):
            norm = 0
            for j in range(dim):
                norm = norm + <double>tokens[row, j] * tokens[row, j]
            if norm == 0:
                for j in range(dim):
                    out[row, j] = tokens[row, j]
                continue
            scale = 1.0 / sqrt(norm)
            norm = 0
            for j in range(dim):
                out[row, j] = <float>(tokens[row, j] * scale) - center[j]
                norm = norm + <double>out[row, j] * out[row, j]
            scale = 1.0 / sqrt(norm) if norm > 0 else 0.0
            for j in range(dim):
                out[row, j] = <float>(out[row, j] * scale)


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


# --------------------------------------------------------------------------
# Training (lemur/training.py): the MLP's forward and backward passes, the
# squared-error gradient, Adam. Every reduction over rows sums fixed chunks
# of TRAIN_CHUNK_ROWS rows and then the chunks in order, so a result does not
# depend on the number of threads.
# --------------------------------------------------------------------------

cdef enum:
    TRAIN_BLOCK_ROWS = 64
    TRAIN_CHUNK_ROWS = 32
    TRAIN_CHUNK_VALUES = 16384


# Whether out = op(a) op(b) has nothing to compute (out empty, or k = 0:
# then out is zeroed unless accumulating).
cdef bint empty_product(float[:, ::1] out, Py_ssize_t k, bint accumulate):
    if out.shape[0] == 0 or out.shape[1] == 0:
        return True
    if k == 0:
        if not accumulate:
            np.asarray(out)[...] = 0
        return True
    return False


# out (m, n) = op(a) op(b), or out += op(a) op(b) with accumulate; op(a)
# (m, k): a itself, or a (k, m) transposed; op(b) (k, n): b, or b (n, k)
# transposed. Units of work: one block of rows of out per thread, one
# single-threaded sgemm each.
@cython.boundscheck(False)
@cython.wraparound(False)
def matmul(const float[:, ::1] a, bint transpose_a, const float[:, ::1] b, bint transpose_b,
           float[:, ::1] out, bint accumulate, int num_threads):
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if transpose_a else a.shape[1]
    # one block per thread (each sgemm packs its own copy of op(b)), in
    # multiples of TRAIN_BLOCK_ROWS
    cdef Py_ssize_t rows = max(<Py_ssize_t>TRAIN_BLOCK_ROWS,
                               (m + num_threads * TRAIN_BLOCK_ROWS - 1) // (num_threads * TRAIN_BLOCK_ROWS)
                               * TRAIN_BLOCK_ROWS)
    cdef Py_ssize_t blocks = (m + rows - 1) // rows, block, start, count
    cdef int lda = <int>a.shape[1], ldb = <int>b.shape[1]
    cdef float beta = 1.0 if accumulate else 0.0
    if empty_product(out, k, accumulate):
        return
    ensure_single_threaded_blas()
    with nogil:
        for block in prange(blocks, num_threads=num_threads, schedule='dynamic'):
            start = block * rows
            count = min(rows, m - start)
            scipy_cblas_sgemm(CblasRowMajor, CblasTrans if transpose_a else CblasNoTrans,
                              CblasTrans if transpose_b else CblasNoTrans, <int>count, <int>n, <int>k, 1.0,
                              &a[0, start] if transpose_a else &a[start, 0], lda, &b[0, 0], ldb, beta,
                              &out[start, 0], <int>n)



#: Whether bfloat16 products run on AMX tiles here (the CPU has AMX-BF16,
#: Linux granted the tiles, and this is the AVX-512 kernel variant).
AMX_BFLOAT16 = bool(amx_detect())


# Packs the float32 operand source (k contiguous in each of its `size` rows,
# or k its slow index) into AMX panels (_amx.h): A's layout, or B's (vnni).
# Parallel over panels (k contiguous) or over steps of k (k the slow index:
# each step reads 32 whole rows of source).
@cython.boundscheck(False)
@cython.wraparound(False)
cdef void pack_operand(const float[:, ::1] source, bint k_contiguous, Py_ssize_t size, Py_ssize_t depth,
                       bint vnni, uint16_t *out, int num_threads) noexcept nogil:
    cdef Py_ssize_t panel, step, steps = amx_steps(depth)
    cdef Py_ssize_t stride = source.shape[1]
    if k_contiguous:
        for panel in prange(amx_panels(size), num_threads=num_threads, schedule='static'):
            amx_pack_k_contiguous(&source[0, 0], stride, size, depth, panel, vnni, out + panel * steps * AMX_STEP_VALUES)
    else:
        for step in prange(steps, num_threads=num_threads, schedule='static'):
            amx_pack_k_strided(&source[0, 0], stride, size, depth, step, vnni, out)


# matmul's product with the operands rounded to bfloat16 and float32
# accumulation. With AMX: both operands packed (_amx.h; op(a) and op(b)
# whichever way they are stored), then blocks of out (AMX_BLOCK_ROWS x
# AMX_BLOCK_COLUMNS) as units of work, each thread with its tile
# configuration and block buffer. Without AMX: rounded float32 copies of a
# and b, then matmul (the products are exact in float32 either way; the
# sums' order differs).
@cython.boundscheck(False)
@cython.wraparound(False)
def matmul_bfloat16(const float[:, ::1] a, bint transpose_a, const float[:, ::1] b, bint transpose_b,
                    float[:, ::1] out, bint accumulate, int num_threads):
    cdef Py_ssize_t m = out.shape[0], n = out.shape[1]
    cdef Py_ssize_t k = a.shape[0] if transpose_a else a.shape[1]
    if empty_product(out, k, accumulate):
        return
    if not AMX_BFLOAT16:
        matmul(rounded_bfloat16(a, num_threads), transpose_a, rounded_bfloat16(b, num_threads), transpose_b, out,
               accumulate, num_threads)
        return
    cdef Py_ssize_t steps = amx_steps(k)
    cdef uint16_t[::1] left_packed = scratch("bfloat16 left", (amx_panels(m) * steps * AMX_STEP_VALUES,),
                                             np.uint16)
    cdef uint16_t[::1] right_packed = scratch("bfloat16 right", (amx_panels(n) * steps * AMX_STEP_VALUES,),
                                              np.uint16)
    cdef float[:, ::1] buffers = scratch("bfloat16 blocks", (num_threads, AMX_BLOCK_ROWS * AMX_BLOCK_COLUMNS),
                                         np.float32)
    cdef Py_ssize_t column_blocks = (n + AMX_BLOCK_COLUMNS - 1) // AMX_BLOCK_COLUMNS
    cdef Py_ssize_t units = (m + AMX_BLOCK_ROWS - 1) // AMX_BLOCK_ROWS * column_blocks, unit
    cdef Py_ssize_t block_row, block_column
    cdef float *buffer
    with nogil:
        pack_operand(a, not transpose_a, m, k, False, &left_packed[0], num_threads)
        pack_operand(b, transpose_b, n, k, True, &right_packed[0], num_threads)
        with parallel(num_threads=num_threads):
            amx_begin()
            for unit in prange(units, schedule='dynamic'):
                block_row = unit // column_blocks * AMX_BLOCK_ROWS
                block_column = unit % column_blocks * AMX_BLOCK_COLUMNS
                buffer = &buffers[threadid(), 0]
                amx_products(&left_packed[0], &right_packed[0], steps, m, n, block_row, block_column, buffer)
                amx_store(buffer, m, n, block_row, block_column, &out[0, 0], n, accumulate)
            amx_end()


# values rounded to bfloat16 in place (matmul_bfloat16's rule, _amx.h).
# Parallel over chunks.
@cython.boundscheck(False)
@cython.wraparound(False)
cdef void round_in_place(float[::1] values, int num_threads) noexcept nogil:
    cdef Py_ssize_t size = values.shape[0], chunk
    cdef Py_ssize_t chunks = (size + TRAIN_CHUNK_VALUES - 1) // TRAIN_CHUNK_VALUES
    for chunk in prange(chunks, num_threads=num_threads, schedule='static'):
        round_bfloat16(&values[chunk * TRAIN_CHUNK_VALUES],
                       min(<Py_ssize_t>TRAIN_CHUNK_VALUES, size - chunk * TRAIN_CHUNK_VALUES))


def rounded_bfloat16(values, int num_threads):
    """A float32 C-order copy of `values` (float32 or float16, any shape),
    rounded to bfloat16 and widened back (matmul_bfloat16's rounding)."""
    out = np.array(values, dtype=np.float32, order="C")
    round_in_place(out.reshape(-1), num_threads)
    return out


def pack_bfloat16_columns(const float[:, ::1] rows, int num_threads):
    """rows (n, dim) rounded to bfloat16 and packed as the right operand of
    the AMX products (its n columns): for document_targets_bfloat16."""
    cdef Py_ssize_t n = rows.shape[0], dim = rows.shape[1]
    cdef uint16_t[::1] packed = aligned_empty(max(1, amx_panels(n) * amx_steps(dim) * AMX_STEP_VALUES), np.uint16)
    if n and dim:
        with nogil:
            pack_operand(rows, True, n, dim, True, &packed[0], num_threads)
    return np.asarray(packed)


cdef enum:
    # documents' tokens per unit of document_targets_bfloat16 (whole
    # documents, at least one), and sample rows per unit
    TARGET_UNIT_TOKENS = 1024
    TARGET_UNIT_SAMPLES = 4096


# out[j, s] = max over document j's tokens t of <sample row s, t> as
# document_targets, the products on AMX tiles from bfloat16 values (the
# sample packed by pack_bfloat16_columns, the tokens rounded as they are
# packed). Units of work: (a group of whole documents of about
# TARGET_UNIT_TOKENS tokens, TARGET_UNIT_SAMPLES sample rows), so no two
# units write the same values; each packs its documents' tokens (widened
# first if float16) and folds each block of products into out by document.
@cython.boundscheck(False)
@cython.wraparound(False)
def document_targets_bfloat16(const uint16_t[::1] sample_packed, Py_ssize_t num_sample_rows,
                              const doc_value[:, ::1] doc_tokens, const int64_t[::1] doc_offsets,
                              float[:, ::1] out, int num_threads):
    cdef Py_ssize_t num_docs = out.shape[0], dim = doc_tokens.shape[1], steps = amx_steps(dim)
    if not AMX_BFLOAT16:
        raise RuntimeError("document_targets_bfloat16 needs AMX (kernels.AMX_BFLOAT16)")
    if sample_packed.shape[0] < amx_panels(num_sample_rows) * steps * AMX_STEP_VALUES:
        raise ValueError("sample_packed does not hold num_sample_rows rows of the tokens' dimension")
    if doc_offsets.shape[0] != num_docs + 1:
        raise ValueError("doc_offsets must have one more value than out has rows")
    if num_docs == 0 or num_sample_rows == 0:
        return
    # groups of whole documents: group g holds documents group_start[g]..group_start[g + 1] - 1
    cdef int64_t[::1] group_start = np.empty(num_docs + 1, dtype=np.int64)
    cdef Py_ssize_t groups = 0, group, doc, most_tokens = 0
    group_start[0] = 0
    for doc in range(num_docs):
        if doc_offsets[doc + 1] - doc_offsets[group_start[groups]] >= TARGET_UNIT_TOKENS or doc + 1 == num_docs:
            most_tokens = max(most_tokens, doc_offsets[doc + 1] - doc_offsets[group_start[groups]])
            groups += 1
            group_start[groups] = doc + 1
    cdef int64_t[::1] token_document = np.repeat(np.arange(num_docs, dtype=np.int64),
                                                 np.diff(np.asarray(doc_offsets[:num_docs + 1])))
    cdef Py_ssize_t sample_chunks = (num_sample_rows + TARGET_UNIT_SAMPLES - 1) // TARGET_UNIT_SAMPLES
    cdef Py_ssize_t panel_values = amx_panels(most_tokens) * steps * AMX_STEP_VALUES
    cdef uint16_t[:, ::1] packed_tokens = scratch("bfloat16 tokens", (num_threads, panel_values), np.uint16)
    cdef float[:, ::1] widened = scratch("bfloat16 widened", (num_threads, most_tokens * dim if doc_value is uint16_t else 1),
                                         np.float32)
    cdef float[:, ::1] buffers = scratch("bfloat16 blocks", (num_threads, AMX_BLOCK_ROWS * AMX_BLOCK_COLUMNS),
                                         np.float32)
    cdef Py_ssize_t unit, chunk, first_token, num_tokens, panel, block_row, block_column, first_sample, last_sample
    cdef Py_ssize_t doc_index, j, column_block, row_block
    cdef const float *tokens
    cdef uint16_t *packed
    cdef float *buffer
    with nogil, parallel(num_threads=num_threads):
        amx_begin()
        for unit in prange(groups * sample_chunks, schedule='dynamic'):
            group = unit // sample_chunks
            chunk = unit % sample_chunks
            first_token = doc_offsets[group_start[group]]
            num_tokens = doc_offsets[group_start[group + 1]] - first_token
            first_sample = chunk * TARGET_UNIT_SAMPLES
            last_sample = min(num_sample_rows, first_sample + TARGET_UNIT_SAMPLES)
            packed = &packed_tokens[threadid(), 0]
            buffer = &buffers[threadid(), 0]
            if doc_value is uint16_t:
                half_to_float(&doc_tokens[first_token, 0], &widened[threadid(), 0], num_tokens * dim)
                tokens = &widened[threadid(), 0]
            else:
                tokens = &doc_tokens[first_token, 0]
            for panel in range(amx_panels(num_tokens)):
                amx_pack_k_contiguous(tokens, dim, num_tokens, dim, panel, False, packed + panel * steps * AMX_STEP_VALUES)
            for doc_index in range(group_start[group], group_start[group + 1]):
                for j in range(first_sample, last_sample):
                    out[doc_index, j] = -INFINITY
            # blocks of columns from first_sample, a multiple of AMX_BLOCK_COLUMNS
            for column_block in range((last_sample - first_sample + AMX_BLOCK_COLUMNS - 1) // AMX_BLOCK_COLUMNS):
                block_column = first_sample + column_block * AMX_BLOCK_COLUMNS
                for row_block in range((num_tokens + AMX_BLOCK_ROWS - 1) // AMX_BLOCK_ROWS):
                    block_row = row_block * AMX_BLOCK_ROWS
                    amx_products(packed, &sample_packed[0], steps, num_tokens, last_sample, block_row,
                                 block_column, buffer)
                    amx_maxima(buffer, num_tokens, last_sample, block_row, block_column,
                               &token_document[first_token], &out[0, 0], out.shape[1])
        amx_end()


# One MLP layer after its product, forward: values (rows, n) hold x W^T and
# become act(LayerNorm(x W^T + bias) * gamma + beta); normalized (rows, n)
# and inverse_std (rows,) keep what the backward pass needs. LayerNorm: the
# population variance, eps = 1e-5 (PyTorch's). Parallel over rows.
@cython.boundscheck(False)
@cython.wraparound(False)
def layer_forward(float[:, ::1] values, const float[::1] bias, const float[::1] gamma, const float[::1] beta,
                  float[:, ::1] normalized, float[::1] inverse_std, int activation, int num_threads):
    cdef Py_ssize_t rows = values.shape[0], n = values.shape[1], row, j
    cdef float mean, scale
    with nogil:
        for row in prange(rows, num_threads=num_threads, schedule='static'):
            mean = scale_shift_and_sum(&values[row, 0], 1.0, &bias[0], n) / n
            scale = <float>1.0 / sqrt(squared_deviation_sum(&values[row, 0], mean, n) / n + <float>1e-5)
            inverse_std[row] = scale
            for j in range(n):
                normalized[row, j] = (values[row, j] - mean) * scale
                values[row, j] = normalized[row, j] * gamma[j] + beta[j]
            apply_activation(&values[row, 0], n, activation)


# The backward pass of layer_forward: grad (rows, n) holds d loss / d its
# outputs and becomes d loss / d (x W^T); grad_bias, grad_gamma, grad_beta
# (n,) receive the sums over rows. Parallel over chunks of TRAIN_CHUNK_ROWS
# rows, each with partial sums of its own (partials: (chunks, 3, n)), added
# in chunk order at the end.
@cython.boundscheck(False)
@cython.wraparound(False)
def layer_backward(float[:, ::1] grad, const float[:, ::1] normalized, const float[::1] inverse_std,
                   const float[::1] gamma, const float[::1] beta, int activation, float[::1] grad_bias,
                   float[::1] grad_gamma, float[::1] grad_beta, int num_threads):
    cdef Py_ssize_t rows = grad.shape[0], n = grad.shape[1], row, j, chunk, first
    cdef Py_ssize_t chunks = (rows + TRAIN_CHUNK_ROWS - 1) // TRAIN_CHUNK_ROWS
    cdef float[:, :, ::1] partials = np.zeros((max(1, chunks), 3, n), np.float32)
    cdef float[:, ::1] derivatives = scratch("activation derivatives", (num_threads, max(1, n)), np.float32)
    cdef float g, mean_dn, mean_dn_n, row_inverse_std
    cdef float *line
    cdef float *derivative
    cdef const float *x
    cdef float *sum_bias
    cdef float *sum_gamma
    cdef float *sum_beta
    with nogil:
        for chunk in prange(chunks, num_threads=num_threads, schedule='static'):
            first = chunk * TRAIN_CHUNK_ROWS
            derivative = &derivatives[threadid(), 0]
            sum_bias = &partials[chunk, 0, 0]
            sum_gamma = &partials[chunk, 1, 0]
            sum_beta = &partials[chunk, 2, 0]
            for row in range(first, min(rows, first + TRAIN_CHUNK_ROWS)):
                line = &grad[row, 0]
                x = &normalized[row, 0]
                for j in range(n):
                    derivative[j] = x[j] * gamma[j] + beta[j]
                apply_activation_derivative(derivative, n, activation)
                for j in range(n):
                    g = line[j] * derivative[j]
                    sum_gamma[j] += g * x[j]
                    sum_beta[j] += g
                    line[j] = g * gamma[j]
                mean_dn = scale_shift_and_sum(line, 1, NULL, n) / n
                mean_dn_n = dot_sum(line, x, n) / n
                row_inverse_std = inverse_std[row]
                for j in range(n):
                    line[j] = row_inverse_std * (line[j] - mean_dn - x[j] * mean_dn_n)
                    sum_bias[j] += line[j]
        for j in prange(n, num_threads=num_threads, schedule='static'):
            grad_bias[j] = 0
            grad_gamma[j] = 0
            grad_beta[j] = 0
            for chunk in range(chunks):
                grad_bias[j] += partials[chunk, 0, j]
                grad_gamma[j] += partials[chunk, 1, j]
                grad_beta[j] += partials[chunk, 2, j]


# sums[0] + sums[1] + ... + sums[count - 1], in that order: the partial sums
# of a parallel reduction added whatever the number of threads.
cdef inline double sum_in_order(const double[::1] sums, Py_ssize_t count) noexcept nogil:
    cdef double total = 0
    cdef Py_ssize_t i
    for i in range(count):
        total += sums[i]
    return total


# predictions (rows, n) become scale * (predictions - targets[target_rows]),
# the gradient of scale/2 * the sum of squared differences (row r against
# row target_rows[r] of targets, so that a batch needs no gathered copy);
# returns that sum (each row's in float32 with LANES partial sums, the rows'
# added in float64, in order). Parallel over rows.
@cython.boundscheck(False)
@cython.wraparound(False)
def squared_error_gradient(float[:, ::1] predictions, const float[:, ::1] targets, const int64_t[::1] target_rows,
                           float scale, int num_threads):
    cdef Py_ssize_t rows = predictions.shape[0], n = predictions.shape[1], row, j
    cdef double[::1] sums = np.zeros(max(1, rows), np.float64)
    cdef float *line
    cdef const float *target
    if target_rows.shape[0] != rows or targets.shape[1] != n:
        raise ValueError("squared_error_gradient: targets and target_rows do not match the predictions")
    if rows and (np.min(target_rows) < 0 or np.max(target_rows) >= targets.shape[0]):
        raise ValueError("squared_error_gradient: target_rows out of range")
    with nogil:
        for row in prange(rows, num_threads=num_threads, schedule='static'):
            line = &predictions[row, 0]
            target = &targets[target_rows[row], 0]
            for j in range(n):
                line[j] = line[j] - target[j]
            sums[row] = squared_deviation_sum(line, 0, n)
            for j in range(n):
                line[j] = scale * line[j]
    return sum_in_order(sums, rows)


# The sum of squares of values: chunks of TRAIN_CHUNK_VALUES, each in float32
# with LANES partial sums, added in float64 in order.
@cython.boundscheck(False)
@cython.wraparound(False)
def sum_of_squares(const float[::1] values, int num_threads):
    cdef Py_ssize_t size = values.shape[0], chunk, first
    cdef Py_ssize_t chunks = (size + TRAIN_CHUNK_VALUES - 1) // TRAIN_CHUNK_VALUES
    cdef double[::1] sums = np.zeros(max(1, chunks), np.float64)
    with nogil:
        for chunk in prange(chunks, num_threads=num_threads, schedule='static'):
            first = chunk * TRAIN_CHUNK_VALUES
            sums[chunk] = squared_deviation_sum(&values[first], 0, min(<Py_ssize_t>TRAIN_CHUNK_VALUES, size - first))
    return sum_in_order(sums, chunks)


# One Adam step on parameters (PyTorch's torch.optim.Adam, no weight decay):
# g = grad_scale * gradient (the clipping), m += (1 - beta1) (g - m),
# v = beta2 v + (1 - beta2) g^2, p -= step_size m / (sqrt(v) / bias_correction2_sqrt + eps).
# All arrays (size,). Parallel over values.
@cython.boundscheck(False)
@cython.wraparound(False)
def adam_step(float[::1] parameters, const float[::1] gradients, float[::1] first_moment, float[::1] second_moment,
              float grad_scale, float beta1, float beta2, float step_size, float bias_correction2_sqrt,
              float eps, int num_threads):
    cdef Py_ssize_t size = parameters.shape[0], i
    cdef float g
    with nogil:
        for i in prange(size, num_threads=num_threads, schedule='static'):
            g = gradients[i] * grad_scale
            first_moment[i] = first_moment[i] + (<float>1.0 - beta1) * (g - first_moment[i])
            second_moment[i] = beta2 * second_moment[i] + (<float>1.0 - beta2) * g * g
            parameters[i] = parameters[i] - step_size * first_moment[i] / (
                sqrtf(second_moment[i]) / bias_correction2_sqrt + eps)


def activation_derivative_inplace(float[::1] values, int activation):
    """values[j] <- activation'(values[j]); for testing the derivatives."""
    cdef Py_ssize_t j
    with nogil:
        for j in range(values.shape[0]):
            values[j] = activation_derivative(values[j], activation)


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

"""The rerank's screen (lemur.screening): its bounds hold for every pair, on
inputs built to stress them, and a screened rerank is bitwise the rerank of
every candidate in float32."""

from __future__ import annotations

import numpy as np
import pytest

from lemur import screening
from lemur._dispatch import kernels
from lemur.documents import Documents, maxsim_unchecked
from lemur.retrieval import rerank_unchecked

needs_screen = pytest.mark.skipif(not kernels.SCREEN_KERNELS,
                                  reason="the screen runs only where the CPU has AMX tiles, AMD's AVX512_BF16 "
                                         "or AVX512-VNNI")


@pytest.fixture(params=kernels.SCREEN_KERNELS or [None])
def screen_kernel(request, monkeypatch):
    """Each screen this CPU can run, in turn, for every batch size: the
    rerank takes it (screening.KERNEL) from one query on."""
    if request.param is None:
        pytest.skip("this CPU has no screen")
    monkeypatch.setattr(screening, "KERNEL", request.param)
    monkeypatch.setattr(screening, "SCREEN_MIN_QUERIES", 1)
    return request.param


def corpus(num_docs=300, dim=128, num_queries=8, query_tokens=32, seed=0, lengths=(20, 90)):
    random = np.random.default_rng(seed)
    counts = random.integers(*lengths, num_docs)
    tokens = random.standard_normal((int(counts.sum()), dim)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    queries = random.standard_normal((num_queries * query_tokens, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return tokens, counts, queries, np.full(num_queries, query_tokens)


def offsets_of(counts):
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def documents_of(tokens, counts):
    return Documents(tokens, offsets_of(counts))


def bounds(queries, query_counts, documents, candidates, num_threads=2):
    lower = np.empty(candidates.shape)
    upper = np.empty(candidates.shape)
    kernels.maxsim_bounds(queries, offsets_of(query_counts), documents.kernel_tokens, documents.offsets,
                          candidates, lower, upper, num_threads, screening.KERNEL)
    return lower, upper


def assert_bounds_hold(queries, query_counts, documents, candidates):
    lower, upper = bounds(queries, query_counts, documents, candidates)
    offsets = offsets_of(query_counts)
    exact = maxsim_unchecked(queries, offsets, documents, candidates, 2).astype(np.float64)
    valid = candidates >= 0
    assert np.all(lower[valid] <= exact[valid]) and np.all(exact[valid] <= upper[valid])
    assert np.all(np.isneginf(lower[~valid])) and np.all(np.isneginf(upper[~valid]))
    return lower, upper, exact


def assert_rerank_unchanged(queries, query_counts, documents, candidates, k, num_threads=2):
    """The screened rerank against the float32 MaxSim of every candidate, bitwise."""
    offsets = offsets_of(query_counts)
    exact = maxsim_unchecked(queries, offsets, documents, candidates, num_threads)
    expected_rows = np.empty((candidates.shape[0], k), dtype=np.int64)
    expected_scores = np.empty((candidates.shape[0], k), dtype=np.float32)
    kernels.select_reranked(exact, candidates, offsets, k, expected_rows, expected_scores, num_threads)
    assert screening.applies(*candidates.shape, k)  # the screened rerank is what is compared
    rows, scores = rerank_unchecked(queries, offsets, documents, candidates, k, num_threads)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores.view(np.uint32), expected_scores.view(np.uint32))


def random_candidates(num_queries, num_docs, num_candidates, seed=1):
    random = np.random.default_rng(seed)
    return np.stack([random.choice(num_docs, num_candidates, replace=False) for _ in range(num_queries)])


@needs_screen
@pytest.mark.parametrize("dim", [128, 100, 7, 33])
@pytest.mark.parametrize("store", [np.float32, np.float16])
def test_the_bounds_hold_and_are_tight_enough_to_pay(dim, store, screen_kernel):
    tokens, counts, queries, query_counts = corpus(dim=dim, seed=dim)
    documents = documents_of(tokens.astype(store), counts)
    candidates = random_candidates(8, 300, 120)
    lower, upper, exact = assert_bounds_hold(queries, query_counts, documents, candidates)
    # unit tokens: the bound is a few bfloat16 roundings of each query token's maximum, or of
    # int16 codes (a step of at most 2^-12 of each token's largest value, which is at most 1)
    step = 2.0 ** -8 if screen_kernel != kernels.INT16_SCREEN else 2.0 ** -12
    assert np.all(upper - lower < 32 * 2 * 3 * step)
    report = {}
    kept, scores = screening.screened_scores(queries, offsets_of(query_counts), documents, candidates, 10, 2,
                                             report)
    assert report["scored"] < candidates.size / 2
    # no more than the k-th largest lower bound would keep, and the float32 scores of those kept
    kth_lower = np.sort(lower, axis=1)[:, -10]
    assert report["scored"] <= np.count_nonzero(upper >= kth_lower[:, None])
    np.testing.assert_array_equal(scores[kept >= 0], exact.astype(np.float32)[kept >= 0])
    assert np.all(np.isneginf(scores[kept < 0]))


@needs_screen
def test_the_bounds_hold_for_wild_norms_and_tiny_values(screen_kernel):
    tokens, counts, queries, query_counts = corpus(num_docs=200, seed=3)
    random = np.random.default_rng(4)
    # documents' tokens from 1e-30 to 1e12, one query token per query scaled up or down
    tokens *= np.repeat(10.0 ** random.uniform(-30, 12, len(counts)), counts)[:, None].astype(np.float32)
    tokens[:5] = 1e-39  # subnormal values, flushed by the rounding to bfloat16
    queries[::7] *= np.float32(1e6)
    queries[3::7] *= np.float32(1e-35)
    documents = documents_of(tokens, counts)
    candidates = random_candidates(8, 200, 150, seed=5)
    assert_bounds_hold(queries, query_counts, documents, candidates)
    assert_rerank_unchanged(queries, query_counts, documents, candidates, 10)


@needs_screen
def test_the_bounds_hold_where_the_float32_products_underflow(screen_kernel):
    """Tokens of about 2^-70: every product of two values is subnormal, so the
    float32 MaxSim's own roundings (2d of them in a dot product, each up to
    2^-150 off) are as large as its values, which the bound must cover."""
    tokens, counts, queries, query_counts = corpus(num_docs=80, num_queries=4, seed=14)
    tokens *= np.float32(2.0 ** -70)
    queries *= np.float32(2.0 ** -70)
    documents = documents_of(tokens, counts)
    candidates = random_candidates(4, 80, 60, seed=15)
    lower, upper, exact = assert_bounds_hold(queries, query_counts, documents, candidates)
    assert np.all(np.isfinite(lower)) and np.any(exact != 0)
    assert_rerank_unchanged(queries, query_counts, documents, candidates, 5)
    # every product 0.75 of the smallest subnormal: each multiply-add rounds up by a quarter of it, so
    # the float32 MaxSim is 128 / 96 of the exact one, which the compact products come close to; a
    # tiny query with large documents, so that no other term of the bound covers that
    for query_value, doc_value in ((2.0 ** -75, 1.5 * 2.0 ** -75), (2.0 ** -110, 1.5 * 2.0 ** -40)):
        query = np.full((1, 128), query_value, dtype=np.float32)
        flat = np.full((4, 128), doc_value, dtype=np.float32)
        flat[2:] *= np.float32(1 + 2.0 ** -10)
        documents = documents_of(flat, np.ones(4, dtype=np.int64))
        candidates = np.arange(4, dtype=np.int64)[None]
        lower, upper, exact = assert_bounds_hold(query, np.array([1]), documents, candidates)
        assert exact[0, 0] == 128 * 2.0 ** -149


@needs_screen
def test_no_bound_where_scores_could_overflow(screen_kernel):
    tokens, counts, queries, query_counts = corpus(num_docs=50, num_queries=4, seed=6)
    tokens[: counts[0]] *= np.float32(1e30)  # document 0: its scores near float32's limit
    documents = documents_of(tokens, counts)
    candidates = np.tile(np.arange(50), (4, 1))
    lower, upper = bounds(queries, query_counts, documents, candidates)
    assert np.all(np.isneginf(lower[:, 0])) and np.all(np.isposinf(upper[:, 0]))
    assert np.all(np.isfinite(lower[:, 1:])) and np.all(np.isfinite(upper[:, 1:]))
    assert_rerank_unchanged(queries, query_counts, documents, candidates, 5)


@needs_screen
@pytest.mark.parametrize("store", [np.float32, np.float16])
def test_long_documents_query_panels_and_empty_queries(store, screen_kernel):
    """Documents longer than the screen's chunk (SCREEN_TOKENS = 512), queries
    of 1 and 33 tokens (one and two panels of 32), a query without tokens
    (keeps its first k in order), and -1 candidates."""
    tokens, counts, queries, _ = corpus(num_docs=60, num_queries=6, query_tokens=33, seed=7, lengths=(1, 1300))
    query_counts = np.array([33, 1, 0, 33, 65, 0])
    queries = queries[: query_counts.sum()]
    documents = documents_of(tokens.astype(store), counts)
    assert counts.max() > 1024
    candidates = random_candidates(6, 60, 40, seed=8)
    candidates[1, ::3] = -1
    candidates[4, 5:] = -1  # 5 valid candidates, k = 8
    lower, upper, exact = assert_bounds_hold(queries, query_counts, documents, candidates)
    assert np.all(np.isneginf(lower[2][candidates[2] >= 0])) and np.all(np.isposinf(upper[2][candidates[2] >= 0]))
    assert_rerank_unchanged(queries, query_counts, documents, candidates, 8)


@needs_screen
@pytest.mark.parametrize("store", [np.float32, np.float16])
def test_exact_ties_and_near_ties_stay_in_order(store, screen_kernel):
    """Candidates that are copies of a few documents (exact ties: the smaller
    id first) and copies changed by one float32 step in one value (near-ties
    far inside the bound), repeated ids among one query's candidates."""
    tokens, counts, queries, query_counts = corpus(num_docs=12, num_queries=6, seed=9, lengths=(30, 31))
    copies = 20
    base = tokens.reshape(12, 30, -1)
    stacked = np.repeat(base, copies, axis=0).copy()
    stacked[1::2, 0, 0] = np.nextafter(stacked[1::2, 0, 0], np.float32(np.inf))
    documents = documents_of(np.ascontiguousarray(stacked.reshape(-1, tokens.shape[1]), dtype=store),
                             np.full(12 * copies, 30))
    random = np.random.default_rng(10)
    candidates = np.stack([random.permutation(12 * copies)[:100] for _ in range(6)])
    candidates[:, 50:60] = candidates[:, :10]  # repeated ids
    for k in (1, 10, 25, 49):
        assert_rerank_unchanged(queries, query_counts, documents, candidates, k)


@needs_screen
def test_a_document_that_is_not_finite_gets_no_bound(screen_kernel):
    """A token store that was not checked (a mapped file) may hold a NaN: the
    document's norm counts as infinite, whatever rows follow it."""
    tokens, counts, queries, query_counts = corpus(num_docs=20, num_queries=4, seed=13)
    tokens[1] = np.nan  # the second token of document 0, followed by finite ones
    documents = documents_of(tokens, counts)
    candidates = np.tile(np.arange(20), (4, 1))
    lower, upper = bounds(queries, query_counts, documents, candidates)
    assert np.all(np.isneginf(lower[:, 0])) and np.all(np.isposinf(upper[:, 0]))
    assert np.all(np.isfinite(lower[:, 1:])) and np.all(np.isfinite(upper[:, 1:]))


@needs_screen
def test_no_bound_outside_the_default_float_environment(screen_kernel, upward_rounding):
    """Rounding upwards (or flushing underflows to zero: the same check of
    MXCSR) breaks the bound's assumptions: every valid pair gets (-inf, +inf)."""
    tokens, counts, queries, query_counts = corpus(num_docs=20, num_queries=2, seed=16)
    documents = documents_of(tokens, counts)
    candidates = np.tile(np.arange(20), (2, 1))
    candidates[1, 3] = -1
    with upward_rounding():
        assert not kernels.float_environment()
        lower, upper = bounds(queries, query_counts, documents, candidates)
    assert kernels.float_environment()
    valid = candidates >= 0
    assert np.all(np.isneginf(lower[valid])) and np.all(np.isposinf(upper[valid]))
    assert np.isneginf(lower[1, 3]) and np.isneginf(upper[1, 3])
    lower, upper = bounds(queries, query_counts, documents, candidates)
    assert np.all(np.isfinite(lower[valid]))


@needs_screen
def test_the_same_results_for_any_thread_count(screen_kernel):
    tokens, counts, queries, query_counts = corpus(seed=11)
    documents = documents_of(tokens, counts)
    candidates = random_candidates(8, 300, 100, seed=12)
    results = [bounds(queries, query_counts, documents, candidates, num_threads) for num_threads in (1, 2, 3)]
    for lower, upper in results[1:]:
        np.testing.assert_array_equal(lower, results[0][0])
        np.testing.assert_array_equal(upper, results[0][1])
    for num_threads in (1, 3):
        assert_rerank_unchanged(queries, query_counts, documents, candidates, 10, num_threads)


def test_the_screen_runs_only_where_it_pays():
    assert not screening.applies(1, 200, 10)          # one query: bound by reading the tokens
    assert not screening.applies(100, 20, 10)         # nearly every candidate needed
    assert screening.applies(100, 200, 10) == bool(kernels.SCREEN_KERNEL)
    assert screening.KERNEL == kernels.SCREEN_KERNEL
    assert set(screening.MIN_QUERIES) >= set(kernels.SCREEN_KERNELS)


@needs_screen
def test_an_unknown_or_absent_kernel_is_refused():
    tokens, counts, queries, query_counts = corpus(num_docs=5, num_queries=1)
    absent = [name for name in (kernels.TILES_SCREEN, kernels.BFLOAT16_SCREEN, kernels.INT16_SCREEN)
              if name not in kernels.SCREEN_KERNELS]
    for kernel in ["float64 tiles", *absent]:
        with pytest.raises(ValueError, match="kernel must be one of"):
            kernels.maxsim_bounds(queries, offsets_of(query_counts), tokens, offsets_of(counts),
                                  np.zeros((1, 2), dtype=np.int64), np.empty((1, 2)), np.empty((1, 2)), 1, kernel)


@needs_screen
def test_bounds_of_the_wrong_shape_are_refused(screen_kernel):
    tokens, counts, queries, query_counts = corpus(num_docs=5, num_queries=1)
    with pytest.raises(ValueError, match="shape"):
        kernels.maxsim_bounds(queries, offsets_of(query_counts), tokens, offsets_of(counts),
                              np.zeros((1, 3), dtype=np.int64), np.empty((1, 2)), np.empty((1, 3)), 1,
                              screen_kernel)


@pytest.mark.skipif(bool(kernels.SCREEN_KERNELS), reason="this CPU has a screen")
def test_the_bounds_kernel_refuses_to_run_without_a_screen():
    tokens, counts, queries, query_counts = corpus(num_docs=5, num_queries=1)
    with pytest.raises(RuntimeError, match="needs a screen kernel"):
        bounds(queries, query_counts, documents_of(tokens, counts), np.zeros((1, 2), dtype=np.int64))

"""lemur.retrieval: top-k over W, exact MaxSim and rerank, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, VARIANTS, golden

import lemur
from lemur import _dispatch, retrieval

# -- brute-force references ---------------------------------------------------------


def brute_top_k(features, W, k):
    scores = features.astype(np.float64) @ W.T.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def brute_maxsim(query_tokens, query_counts, doc_tokens, doc_counts, candidates):
    query_offsets = np.concatenate([[0], np.cumsum(query_counts)])
    doc_offsets = np.concatenate([[0], np.cumsum(doc_counts)])
    out = np.zeros(candidates.shape)
    for query in range(candidates.shape[0]):
        q = query_tokens[query_offsets[query] : query_offsets[query + 1]].astype(np.float64)
        for position, doc in enumerate(candidates[query]):
            if doc < 0:
                out[query, position] = -np.inf
            elif len(q):
                d = doc_tokens[doc_offsets[doc] : doc_offsets[doc + 1]].astype(np.float64)
                out[query, position] = (q @ d.T).max(axis=1).sum()
    return out


def brute_rerank(exact, candidates, query_counts, k):
    indices = np.full((len(candidates), k), -1, dtype=np.int64)
    scores = np.full((len(candidates), k), -np.inf)
    for query, (row, ids) in enumerate(zip(exact, candidates)):
        if query_counts[query] == 0:
            chosen = list(range(min(k, len(ids))))
        else:
            valid = [p for p in range(len(ids)) if ids[p] >= 0]
            chosen = sorted(valid, key=lambda p: (-row[p], ids[p]))[:k]
        indices[query, : len(chosen)] = ids[chosen]
        scores[query, : len(chosen)] = row[chosen]
    return indices, scores


def corpus(num_docs, dim, seed=0, max_tokens=40):
    random = np.random.default_rng(seed)
    counts = random.integers(1, max_tokens, num_docs)
    counts[:3] = 1  # 1-token documents
    tokens = random.standard_normal((counts.sum(), dim)).astype(np.float32)
    return tokens, counts


def queries(counts, dim, seed=1):
    random = np.random.default_rng(seed)
    return random.standard_normal((int(np.sum(counts)), dim)).astype(np.float32), np.asarray(counts)


# -- top-k ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_queries", "num_docs", "h", "k"),
    [(1, 1000, 64, 10), (3, 2500, 37, 1), (5, 3000, 64, 50), (100, 5000, 96, 100),
     (700, 800, 16, 7), (2, 40, 8, 39), (1, 1, 4, 1)],
)
@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_top_k_matches_brute_force(num_queries, num_docs, h, k, num_threads):
    random = np.random.default_rng(num_queries + num_docs)
    features = random.standard_normal((num_queries, h)).astype(np.float32)
    W = random.standard_normal((num_docs, h)).astype(np.float32)
    indices, scores = lemur.top_k(features, W, k, num_threads=num_threads)
    expected_indices, expected_scores = brute_top_k(features, W, k)
    assert indices.dtype == np.int64 and scores.dtype == np.float32
    assert indices.shape == scores.shape == (num_queries, min(k, num_docs))
    assert np.array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [30, 31, 1000])
def test_k_at_least_num_docs_returns_every_document_sorted(k):
    random = np.random.default_rng(0)
    features = random.standard_normal((4, 8)).astype(np.float32)
    W = random.standard_normal((30, 8)).astype(np.float32)
    indices, scores = lemur.top_k(features, W, k)
    assert indices.shape == (4, 30)
    assert np.array_equal(np.sort(indices, axis=1), np.tile(np.arange(30), (4, 1)))
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.array_equal(indices, brute_top_k(features, W, 30)[0])


@pytest.mark.parametrize("k", [1, 5, 12, 40])
@pytest.mark.parametrize("num_queries", [1, 3, 600])
def test_ties_go_to_the_smaller_index(k, num_queries):
    # many exactly equal scores: W rows repeat four values
    random = np.random.default_rng(k)
    W = np.repeat(random.standard_normal((4, 16)).astype(np.float32), 10, axis=0)[random.permutation(40)]
    features = random.standard_normal((num_queries, 16)).astype(np.float32)
    indices, scores = lemur.top_k(features, W, k, num_threads=2)
    assert np.array_equal(indices, brute_top_k(features, W, k)[0])
    for row, values in zip(indices, scores):
        for a, b, x, y in zip(row[:-1], row[1:], values[:-1], values[1:]):
            assert x > y or (x == y and a < b)


def test_scores_is_the_full_matrix():
    random = np.random.default_rng(0)
    features = random.standard_normal((3, 20)).astype(np.float32)
    W = random.standard_normal((50, 20)).astype(np.float32)
    np.testing.assert_allclose(lemur.scores(features, W), features @ W.T, rtol=1e-5, atol=1e-5)


def test_first_stage_memory_does_not_grow_with_queries_times_docs():
    # the kernel's plan: score blocks and k-best lists within the budget
    from lemur._dispatch import kernels

    for num_queries, num_docs, threads in [(100, 100_000, 2), (5000, 1_000_000, 16), (1, 10**7, 8)]:
        on_queries, chunk, block = kernels.top_k_workspace_shape(
            num_queries, num_docs, 100, threads, retrieval.TOP_K_BUDGET_BYTES
        )
        per_thread = chunk * block * 4 + (0 if on_queries else chunk * 100 * 12)
        assert threads * per_thread <= 2 * retrieval.TOP_K_BUDGET_BYTES
        assert block <= 1024


@pytest.mark.parametrize("variant_name", _dispatch.runnable_variants())
def test_top_k_in_every_kernel_variant(variant_name):
    kernels = _dispatch.load_variant(variant_name)
    random = np.random.default_rng(1)
    features = random.standard_normal((7, 33)).astype(np.float32)
    W = random.standard_normal((900, 33)).astype(np.float32)
    indices = np.empty((7, 20), np.int64)
    scores = np.empty((7, 20), np.float32)
    kernels.top_k_inner_products(features, W, 20, indices, scores, 2, retrieval.TOP_K_BUDGET_BYTES)
    assert np.array_equal(indices, brute_top_k(features, W, 20)[0])


# -- exact MaxSim and rerank -----------------------------------------------------------


QUERY_COUNTS = [0, 1, 5, 16, 17, 33, 70, 0, 3]


@pytest.mark.parametrize("dim", [7, 20, 100, 128])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_maxsim_matches_brute_force(dim, num_threads):
    doc_tokens, doc_counts = corpus(150, dim, seed=dim)
    query_tokens, query_counts = queries(QUERY_COUNTS, dim)
    random = np.random.default_rng(dim)
    candidates = random.integers(-1, 150, (len(QUERY_COUNTS), 30))
    candidates[:, 0] = 0  # a 1-token document for everyone
    out = lemur.maxsim_scores(
        query_tokens, query_counts, doc_tokens, doc_counts, candidates, num_threads=num_threads
    )
    expected = brute_maxsim(query_tokens, query_counts, doc_tokens, doc_counts, candidates)
    assert out.dtype == np.float32 and out.shape == candidates.shape
    assert np.array_equal(np.isneginf(out), candidates < 0)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-5, atol=1e-4)
    assert np.all(out[np.asarray(QUERY_COUNTS) == 0][candidates[np.asarray(QUERY_COUNTS) == 0] >= 0] == 0)


@pytest.mark.parametrize("variant_name", _dispatch.runnable_variants())
def test_maxsim_in_every_kernel_variant(variant_name):
    kernels = _dispatch.load_variant(variant_name)
    doc_tokens, doc_counts = corpus(60, 19, seed=4)
    query_tokens, query_counts = queries([1, 9, 40], 19)
    candidates = np.random.default_rng(4).integers(-1, 60, (3, 25))
    out = np.empty(candidates.shape, np.float32)
    kernels.maxsim_scores(
        query_tokens, np.concatenate([[0], np.cumsum(query_counts)]),
        doc_tokens, np.concatenate([[0], np.cumsum(doc_counts)]), candidates, out, 2,
    )
    expected = brute_maxsim(query_tokens, query_counts, doc_tokens, doc_counts, candidates)
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k", [1, 10, 30, 45])
def test_rerank_matches_brute_force(k):
    dim = 24
    doc_tokens, doc_counts = corpus(120, dim, seed=k)
    query_tokens, query_counts = queries(QUERY_COUNTS, dim)
    candidates = np.random.default_rng(k).integers(-1, 120, (len(QUERY_COUNTS), 30))
    candidates[2, :] = -1  # a query with no valid candidate
    indices, scores = lemur.rerank(query_tokens, query_counts, doc_tokens, doc_counts, candidates, k)
    exact = brute_maxsim(query_tokens, query_counts, doc_tokens, doc_counts, candidates)
    expected_indices, expected_scores = brute_rerank(exact, candidates, QUERY_COUNTS, k)
    assert indices.dtype == np.int64 and indices.shape == (len(QUERY_COUNTS), k)
    assert np.array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-4)
    assert np.all(indices[2] == -1) and np.all(np.isneginf(scores[2]))


def test_rerank_ties_and_duplicates():
    # two identical documents tie exactly: the smaller id first; a duplicated
    # candidate is kept twice, as the original does
    doc_tokens = np.array([[1, 0], [0, 1], [1, 0], [0.5, 0.5]], np.float32)
    doc_counts = [1, 1, 1, 1]
    query_tokens = np.array([[1, 0]], np.float32)
    candidates = [[3, 2, 1, 0, 2]]
    indices, scores = lemur.rerank(query_tokens, [1], doc_tokens, doc_counts, candidates, 5)
    assert indices.tolist() == [[0, 2, 2, 3, 1]]
    assert scores.tolist() == [[1.0, 1.0, 1.0, 0.5, 0.0]]


def test_empty_query_keeps_its_first_candidates():
    doc_tokens, doc_counts = corpus(20, 4)
    query_tokens, query_counts = queries([0, 2], 4)
    candidates = [[5, -1, 7, 3], [1, 2, 3, 4]]
    indices, scores = lemur.rerank(query_tokens, query_counts, doc_tokens, doc_counts, candidates, 6)
    assert indices[0].tolist() == [5, -1, 7, 3, -1, -1]
    assert scores[0, 0] == 0 and np.isneginf(scores[0, 1])


# -- the original's outputs ---------------------------------------------------------------


def fixture_index(variant):
    filename, activation = VARIANTS[variant]
    loaded = lemur.Index.load(DATA / variant / filename, activation=activation)
    with np.load(DATA / "corpus.npz") as archive:
        expected = golden(variant)
        doc_tokens = archive[str(expected["corpus_key"])]
        doc_counts = archive["doc_counts"]
    return lemur.Index(loaded.model, loaded.W, doc_tokens, doc_counts), expected


def test_top_k_matches_the_original(variant):
    index, expected = fixture_index(variant)
    features = index.features(expected["query_tokens"], expected["query_counts"])
    real = np.arange(41) != int(expected["zero_query_index"])
    for k in (10, 50):
        indices, scores = index.top_k(features, k)
        assert np.array_equal(indices[real], expected[f"topk{k}_indices"][real])
        np.testing.assert_allclose(scores[real], expected[f"topk{k}_scores"][real], rtol=1e-5, atol=2e-5)
        # the empty query scores 0 everywhere; its tie order is by index here
        assert np.all(scores[~real] == 0) and indices[~real].tolist() == [list(range(k))]


def test_rerank_matches_the_original(variant):
    index, expected = fixture_index(variant)
    args = (expected["query_tokens"], expected["query_counts"], expected["candidates"])
    assert np.array_equal(index.rerank(*args, k=10)[0], expected["rerank_top10"])
    assert np.array_equal(index.rerank(*args, k=60)[0], expected["rerank_k60_of_50"])
    np.testing.assert_allclose(
        index.maxsim_scores(*args), expected["exact_maxsim_candidates"], rtol=1e-6, atol=2e-5
    )


def test_search_matches_the_pipeline_of_the_original(variant):
    index, expected = fixture_index(variant)
    indices, scores = index.search(expected["query_tokens"], expected["query_counts"], k=10, candidates=50)
    real = np.arange(41) != int(expected["zero_query_index"])
    assert np.array_equal(indices[real], expected["rerank_top10"][real])
    assert scores.shape == (41, 10)


# -- bad input ----------------------------------------------------------------------------


DOCS = np.ones((6, 4), np.float32)
COUNTS = [2, 3, 1]
QUERY = np.ones((3, 4), np.float32)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS, COUNTS, [[0, 3]]), ValueError,
         r"candidates\[0, 1\] = 3 is not a document id: ids go from 0 to 2, and -1 marks padding"),
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS, COUNTS, [[-2]]), ValueError, r"candidates\[0, 0\] = -2 is not a document id"),
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS, COUNTS, [[0.5]]), TypeError, "candidates must hold integers"),
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS, COUNTS, [0, 1]), ValueError, "candidates must be 2-D"),
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS, COUNTS, [[0], [1]]), ValueError, "candidates has 2 rows, but there are 1 queries"),
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS, [2, 5], [[0]]), ValueError, "doc_counts sums to 7, but doc_tokens has 6 rows"),
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS, [6, 0], [[0]]), ValueError, r"doc_counts\[1\] = 0: every document needs at least one token"),
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS, [-1, 7], [[0]]), ValueError, "doc_counts must be non-negative"),
        (lambda: lemur.maxsim_scores(QUERY, [2], DOCS, COUNTS, [[0]]), ValueError, "query_counts sums to 2, but query_tokens has 3 rows"),
        (lambda: lemur.maxsim_scores(QUERY[:, :3].copy(), [3], DOCS, COUNTS, [[0]]), ValueError, "query_tokens holds vectors of dimension 3, but doc_tokens' dimension is 4"),
        (lambda: lemur.maxsim_scores(QUERY.astype(np.float64), [3], DOCS, COUNTS, [[0]]), TypeError, "query_tokens must have dtype float32"),
        (lambda: lemur.maxsim_scores(QUERY, [3], DOCS.astype(np.float64), COUNTS, [[0]]), TypeError, "doc_tokens must have dtype float32 or float16"),
        (lambda: lemur.maxsim_scores(QUERY, [3], np.ones((4, 6), np.float32).T, COUNTS, [[0]]), ValueError, "doc_tokens must be C-contiguous"),
        (lambda: lemur.maxsim_scores(np.ones((4, 3), np.float32).T, [3], DOCS, COUNTS, [[0]]), ValueError, "query_tokens must be C-contiguous"),
        (lambda: lemur.maxsim_scores(QUERY, [], DOCS, COUNTS, np.zeros((0, 1), int)), ValueError, "query_counts is empty"),
        (lambda: lemur.maxsim_scores(np.full((3, 4), np.nan, np.float32), [3], DOCS, COUNTS, [[0]]), ValueError, "query_tokens contains NaN"),
        (lambda: lemur.rerank(QUERY, [3], DOCS, COUNTS, [[0]], 0), ValueError, "k must be >= 1, got 0"),
        (lambda: lemur.rerank(QUERY, [3], DOCS, COUNTS, [[0]], -3), ValueError, "k must be >= 1, got -3"),
        (lambda: lemur.rerank(QUERY, [3], DOCS, COUNTS, [[0]], 2.0), TypeError, "k must be an int"),
        (lambda: lemur.top_k(np.ones((2, 4), np.float32), np.ones((5, 4), np.float32), 0), ValueError, "k must be >= 1"),
        (lambda: lemur.top_k(np.ones((2, 4), np.float32), np.ones((5, 3), np.float32), 2), ValueError, r"features holds vectors of dimension 4, but W's width \(h\) is 3"),
        (lambda: lemur.top_k(np.ones((2, 4), np.float32), np.ones((0, 4), np.float32), 2), ValueError, "W has no rows"),
        (lambda: lemur.top_k(np.ones((0, 4), np.float32), np.ones((5, 4), np.float32), 2), ValueError, "features has no rows"),
        (lambda: lemur.top_k(np.ones((2, 4), np.float32), np.ones((5, 4), np.float64), 2), TypeError, "W must have dtype float32"),
        (lambda: lemur.top_k(np.ones((2, 4), np.float32), np.full((5, 4), np.inf, np.float32), 2), ValueError, "W contains NaN or infinite values"),
        (lambda: lemur.top_k(np.ones((2, 4), np.float32)[:, ::2], np.ones((5, 2), np.float32), 2), ValueError, "features must be C-contiguous"),
    ],
)
def test_bad_inputs_are_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_counts_beyond_int64_are_refused():
    with pytest.raises(ValueError, match="doc_counts holds values too large for int64"):
        lemur.maxsim_scores(QUERY, [3], DOCS, np.array([2**64 - 1, 1, 1], np.uint64), [[0]])


def test_k_far_beyond_the_documents_allocates_nothing_for_them():
    # k = 10**12 would be terabytes of output if it were not clamped
    doc_tokens, doc_counts = corpus(7, 4)
    query_tokens, query_counts = queries([3, 2], 4)
    W = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    features = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    indices, scores = lemur.top_k(features, W, 10**12)
    assert indices.shape == scores.shape == (2, 7)
    candidates = [[0, 1, 2], [6, 5, -1]]
    indices, scores = lemur.rerank(query_tokens, query_counts, doc_tokens, doc_counts, candidates, 10**12)
    assert indices.shape == (2, 7) and indices[1, 2:].tolist() == [-1] * 5


# -- float16 token stores ------------------------------------------------------------------


@pytest.mark.parametrize("dim", [7, 128])
@pytest.mark.parametrize("variant_name", _dispatch.runnable_variants())
def test_float16_documents_score_as_float32_on_their_values(dim, variant_name, monkeypatch):
    """Bitwise the float32 scores of the widened tokens, for documents that fit
    one piece and for longer ones (widened piece by piece)."""
    kernels = _dispatch.load_variant(variant_name)
    monkeypatch.setattr(retrieval, "kernels", kernels)
    counts = np.array([1, 5, 40, 900, 3000, 2])  # 3000 x 128 values: several pieces
    doc_tokens = np.random.default_rng(dim).standard_normal((int(counts.sum()), dim)).astype(np.float16)
    query_tokens, query_counts = queries([0, 3, 32, 70], dim)
    candidates = np.array([[0, 1, 2, 3, 4, 5, -1]] * 4)
    half = lemur.maxsim_scores(query_tokens, query_counts, doc_tokens, counts, candidates)
    single = lemur.maxsim_scores(query_tokens, query_counts, doc_tokens.astype(np.float32), counts, candidates)
    np.testing.assert_array_equal(half.view(np.uint32), single.view(np.uint32))
    for ours, theirs in zip(lemur.rerank(query_tokens, query_counts, doc_tokens, counts, candidates, 4),
                            lemur.rerank(query_tokens, query_counts, doc_tokens.astype(np.float32), counts,
                                         candidates, 4)):
        np.testing.assert_array_equal(ours, theirs)


def test_float16_documents_with_infinities_are_refused():
    doc_tokens = np.ones((3, 4), np.float16)
    doc_tokens[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"doc_tokens contains NaN or infinite values at index \(1,\)"):
        lemur.maxsim_scores(np.ones((1, 4), np.float32), [1], doc_tokens, [1, 2], [[0]])

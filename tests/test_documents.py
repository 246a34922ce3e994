import numpy as np
import pytest

from lemur.documents import Documents, maxsim_unchecked


def corpus(seed=0, num_docs=7, dim=16):
    random = np.random.default_rng(seed)
    counts = random.integers(1, 9, num_docs)
    tokens = random.standard_normal((int(counts.sum()), dim), dtype=np.float32)
    return tokens, counts


def reference_maxsim(queries, query_offsets, tokens, offsets, candidates):
    """float64 MaxSim of each query with each candidate (-inf for -1), and a
    bound on a float32 evaluation's error: each dot product of d terms is off
    by at most gamma_2d times the sum of its terms' magnitudes, and the sum of
    the maxima adds gamma_n of theirs."""
    out = np.full(candidates.shape, -np.inf)
    error = np.zeros(candidates.shape)
    gamma = lambda n: n * 2.0**-24 / (1 - n * 2.0**-24)  # noqa: E731
    for q in range(candidates.shape[0]):
        query = queries[query_offsets[q]:query_offsets[q + 1]].astype(np.float64)
        for c, doc in enumerate(candidates[q]):
            if doc >= 0:
                document = tokens[offsets[doc]:offsets[doc + 1]].astype(np.float64)
                maxima = (query @ document.T).max(axis=1)
                out[q, c] = maxima.sum()
                magnitudes = (np.abs(query) @ np.abs(document).T).max(axis=1)
                error[q, c] = gamma(2 * query.shape[1]) * magnitudes.sum() + gamma(query.shape[0]) * (
                    np.abs(maxima).sum() + gamma(2 * query.shape[1]) * magnitudes.sum())
    return out, error


def test_check_gives_offsets_and_keeps_the_tokens_as_given():
    tokens, counts = corpus()
    for dtype in (np.float32, np.float16):
        documents = Documents.check(tokens.astype(dtype), counts)
        assert documents.tokens.dtype == dtype
        assert documents.num_docs == counts.size and documents.dim == 16
        np.testing.assert_array_equal(documents.counts, counts)
        np.testing.assert_array_equal(documents.offsets, np.concatenate([[0], np.cumsum(counts)]))
        assert not documents.offsets.flags.writeable
    assert Documents.check(tokens.astype(np.float16), counts).kernel_tokens.dtype == np.uint16


@pytest.mark.parametrize(
    "counts, message",
    [([3, 0, 2], r"doc_counts\[1\] = 0"), ([3, 3], "doc_counts"), ([-1, 6], "doc_counts")],
)
def test_check_names_bad_counts(counts, message):
    tokens = np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        Documents.check(tokens, counts)


def test_check_refuses_tokens_that_are_not_finite_or_of_another_width():
    tokens, counts = corpus()
    bad = tokens.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="doc_tokens"):
        Documents.check(bad, counts)
    with pytest.raises(ValueError, match="doc_tokens"):
        Documents.check(tokens, counts, dim=8)
    with pytest.raises(TypeError, match="doc_tokens"):
        Documents.check(tokens.astype(np.float64), counts)


def test_subset_copies_the_kept_documents_in_order():
    tokens, counts = corpus(seed=1)
    documents = Documents.check(tokens, counts)
    keep = np.array([True, False, True, True, False, False, True])
    subset = documents.subset(keep)
    kept = np.flatnonzero(keep)
    np.testing.assert_array_equal(subset.counts, counts[kept])
    expected = np.concatenate([tokens[documents.offsets[d]:documents.offsets[d + 1]] for d in kept])
    np.testing.assert_array_equal(subset.tokens, expected)
    assert not np.shares_memory(subset.tokens, tokens)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_maxsim_matches_a_float64_reference(dtype):
    tokens, counts = corpus(seed=2, num_docs=30, dim=64)
    documents = Documents.check(tokens.astype(dtype), counts)
    random = np.random.default_rng(3)
    query_offsets = np.array([0, 5, 6, 14], dtype=np.int64)
    queries = random.standard_normal((14, 64), dtype=np.float32)
    candidates = random.integers(-1, 30, (3, 12)).astype(np.int64)
    scores = maxsim_unchecked(queries, query_offsets, documents, candidates, 2)
    assert scores.dtype == np.float32 and scores.shape == candidates.shape
    # float16 tokens are scored as their float32 values: the reference upcasts them too
    expected, error = reference_maxsim(queries, query_offsets, documents.tokens.astype(np.float32),
                                       documents.offsets, candidates)
    assert np.all(np.isneginf(scores[candidates < 0]))
    scored = candidates >= 0
    assert np.all(np.abs(scores[scored] - expected[scored]) <= error[scored])

"""lemur.maxsim.MaxSim: the drop-in for the original's C++ MaxSim."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from conftest import DATA, golden
from test_retrieval import brute_maxsim, brute_rerank, corpus, queries

from lemur.maxsim import MaxSim


def fixture_maxsim(variant):
    expected = golden(variant)
    with np.load(DATA / "corpus.npz") as archive:
        return MaxSim(archive[str(expected["corpus_key"])], archive["doc_counts"]), expected


def test_rerank_subset_returns_what_the_original_returns(variant):
    maxsim, expected = fixture_maxsim(variant)
    args = (expected["query_tokens"], expected["query_counts"])
    top10 = maxsim.rerank_subset(*args, 10, expected["candidates"])
    assert top10.dtype == np.int32 and top10.shape == (41, 10)
    assert np.array_equal(top10, expected["rerank_top10"])
    top60 = maxsim.rerank_subset(*args, 60, expected["candidates"], num_threads=1)
    assert np.array_equal(top60, expected["rerank_k60_of_50"])


def test_padding_and_brute_force():
    doc_tokens, doc_counts = corpus(50, 16)
    query_tokens, query_counts = queries([3, 0, 20], 16)
    candidates = np.random.default_rng(2).integers(-1, 50, (3, 12)).astype(np.int32)
    found = MaxSim(doc_tokens, doc_counts).rerank_subset(query_tokens, query_counts, 8, candidates)
    exact = brute_maxsim(query_tokens, query_counts, doc_tokens, doc_counts, candidates)
    assert np.array_equal(found, brute_rerank(exact, candidates, [3, 0, 20], 8)[0])


def test_fixed_length_queries_and_flattened_input():
    doc_tokens, doc_counts = corpus(30, 8)
    padded = np.random.default_rng(5).standard_normal((4, 6, 8)).astype(np.float32)
    candidates = np.tile(np.arange(30, dtype=np.int32), (4, 1))
    maxsim = MaxSim(doc_tokens.astype(np.float64), doc_counts)  # cast, as pybind11 does
    fixed = maxsim.rerank_subset_fixed(padded, 5, candidates)
    ragged = maxsim.rerank_subset(padded.reshape(-1), [6] * 4, 5, candidates)
    assert np.array_equal(fixed, ragged)
    with pytest.raises(ValueError, match="queries must be 3-D"):
        maxsim.rerank_subset_fixed(padded[0], 5, candidates)


def test_keeps_its_documents_alive():
    doc_tokens, doc_counts = corpus(30, 8)
    maxsim = MaxSim(doc_tokens.copy(), list(doc_counts))
    gc.collect()
    query_tokens, query_counts = queries([4], 8)
    assert maxsim.rerank_subset(query_tokens, query_counts, 2, [[0, 1, 2]]).shape == (1, 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, q: m.rerank_subset(q, [4], 2, [[0, 30]]), r"indices\[0, 1\] = 30 is not a document id"),
        (lambda m, q: m.rerank_subset(q, [4], 0, [[0]]), "k must be >= 1"),
        (lambda m, q: m.rerank_subset(q, [3], 2, [[0]]), "query_counts sums to 3, but query_tokens has 4 rows"),
        (lambda m, q: m.rerank_subset(q, [4], 2, [[0]], num_threads=0), "num_threads must be >= 1"),
        (lambda m, q: MaxSim(np.ones((2, 8)), [1, 1, 0]), r"train_counts\[2\] = 0"),
        (lambda m, q: MaxSim(np.full((3, 8), np.nan), [1, 1, 1]), "train contains NaN"),
    ],
)
def test_bad_inputs_are_refused(call, message):
    doc_tokens, doc_counts = corpus(30, 8)
    query_tokens, _ = queries([4], 8)
    with pytest.raises(ValueError, match=message):
        call(MaxSim(doc_tokens, doc_counts), query_tokens)


def test_k_far_beyond_the_documents_is_clamped():
    doc_tokens, doc_counts = corpus(5, 4)
    query_tokens, query_counts = queries([3], 4)
    found = MaxSim(doc_tokens, doc_counts).rerank_subset(query_tokens, query_counts, 10**12, [[4, 0]])
    assert found.shape == (1, 5) and found[0, 2:].tolist() == [-1] * 3


def test_float16_documents_are_kept_and_rerank_as_their_float32_values():
    random = np.random.default_rng(3)
    counts = random.integers(1, 30, 50)
    train = random.standard_normal((int(counts.sum()), 16)).astype(np.float16)
    queries = random.standard_normal((4 * 8, 16)).astype(np.float32)
    indices = random.integers(-1, 50, (4, 20))
    half = MaxSim(train, counts)
    assert half._documents.tokens.dtype == np.float16 and np.shares_memory(half._documents.tokens, train)
    np.testing.assert_array_equal(half.rerank_subset(queries, [8] * 4, 5, indices),
                                  MaxSim(train.astype(np.float32), counts).rerank_subset(queries, [8] * 4, 5, indices))

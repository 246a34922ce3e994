"""lemur.Index: construction checks, the search pipeline, save and load."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
from conftest import DATA, random_model, random_tokens
from test_retrieval import corpus, fixture_index

import lemur


@pytest.fixture(scope="module")
def small():
    model = random_model("mlp", "gelu", dims=(12, 48))
    doc_tokens, doc_counts = corpus(80, 12, seed=3)
    W = np.random.default_rng(3).standard_normal((80, 48)).astype(np.float32)
    return model, W, doc_tokens, doc_counts


def test_index_describes_itself(small):
    model, W, doc_tokens, doc_counts = small
    index = lemur.Index(model, W, doc_tokens, doc_counts)
    assert np.shares_memory(index.W, W) and np.shares_memory(index.doc_tokens, doc_tokens)  # no copies
    assert index.num_docs == 80 and index.has_documents
    assert np.array_equal(index.doc_counts, doc_counts)
    assert index.nbytes == model.nbytes + W.nbytes + doc_tokens.nbytes
    assert repr(index).startswith("Index(Model(kind='mlp'") and "num_docs=80" in repr(index)
    bare = lemur.Index(model, W)
    assert not bare.has_documents and bare.doc_tokens is None and bare.doc_counts is None


def test_search_is_features_then_top_k_then_rerank(small):
    model, W, doc_tokens, doc_counts = small
    index = lemur.Index(model, W, doc_tokens, doc_counts)
    query_tokens, counts = random_tokens(50, 12, seed=9), [10, 0, 25, 15]
    indices, scores = index.search(query_tokens, counts, k=5, candidates=20)
    features = index.features(query_tokens, counts)
    candidates, _ = index.top_k(features, 20)
    expected = index.rerank(query_tokens, counts, candidates, k=5)
    assert np.array_equal(indices, expected[0]) and np.array_equal(scores, expected[1])
    assert indices.shape == (4, 5) and indices.dtype == np.int64


def test_search_of_one_query(small):
    model, W, doc_tokens, doc_counts = small
    index = lemur.Index(model, W, doc_tokens, doc_counts)
    indices, scores = index.search(random_tokens(32, 12), [32], k=3, candidates=10, num_threads=2)
    assert indices.shape == (1, 3) and np.all(np.diff(scores[0]) <= 0)


def test_search_without_documents_returns_the_first_stage(small):
    model, W, _, _ = small
    index = lemur.Index(model, W)
    query_tokens = random_tokens(20, 12)
    indices, scores = index.search(query_tokens, [20], k=7)
    expected = index.top_k(index.features(query_tokens, [20]), 7)
    assert np.array_equal(indices, expected[0]) and np.array_equal(scores, expected[1])
    with pytest.raises(ValueError, match="rerank needs the documents' token vectors"):
        index.rerank(query_tokens, [20], [[1, 2]])
    with pytest.raises(ValueError, match="maxsim_scores needs the documents' token vectors"):
        index.maxsim_scores(query_tokens, [20], [[1, 2]])


@pytest.mark.parametrize("k", [9, 10**12])
def test_search_for_more_results_than_documents_returns_every_document(small, k):
    model, W, doc_tokens, doc_counts = small
    index = lemur.Index(model, W[:6], doc_tokens[: int(np.sum(doc_counts[:6]))], doc_counts[:6])
    indices, scores = index.search(random_tokens(8, 12), [8], k=k, candidates=k)
    assert indices.shape == scores.shape == (1, 6)
    assert sorted(indices[0].tolist()) == list(range(6)) and np.all(np.diff(scores[0]) <= 0)
    bare = lemur.Index(model, W[:6])
    indices, _ = bare.search(random_tokens(8, 12), [8], k=k, candidates=k)
    assert sorted(indices[0].tolist()) == list(range(6))
    features = index.features(random_tokens(8, 12), [8])
    assert index.top_k(features, k)[0].shape == (1, 6)
    assert index.rerank(random_tokens(8, 12), [8], [[0, 3]], k=k)[0].shape == (1, 6)


def test_index_keeps_its_arrays_alive(small):
    model, W, doc_tokens, doc_counts = small
    index = lemur.Index(model, W.copy(), doc_tokens.copy(), list(doc_counts))
    gc.collect()
    query_tokens = random_tokens(10, 12)
    assert index.search(query_tokens, [10], k=3, candidates=5)[0].shape == (1, 3)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (lambda m, W, t, c: (None, W), TypeError, "model must be a lemur.Model"),
        (lambda m, W, t, c: (m, W[:, :40].copy()), ValueError, "W holds vectors of dimension 40, but the feature dimension is 48"),
        (lambda m, W, t, c: (m, W.astype(np.float64)), TypeError, "W must have dtype float32"),
        (lambda m, W, t, c: (m, W, t), ValueError, "pass doc_tokens and doc_counts together"),
        (lambda m, W, t, c: (m, W[:79].copy(), t, c), ValueError, "doc_counts describes 80 documents, but W has 79 rows"),
        (lambda m, W, t, c: (m, W, t[:, :10].copy(), c), ValueError, "doc_tokens holds vectors of dimension 10, but the model's input dimension is 12"),
        (lambda m, W, t, c: (m, W, t, np.r_[c[:-2], c[-2] + c[-1], 0]), ValueError, r"doc_counts\[79\] = 0: every document needs at least one token"),
    ],
)
def test_bad_indexes_are_refused(small, arguments, error, message):
    with pytest.raises(error, match=message):
        lemur.Index(*arguments(*small))


def test_bad_search_arguments(small):
    model, W, doc_tokens, doc_counts = small
    index = lemur.Index(model, W, doc_tokens, doc_counts)
    query_tokens = random_tokens(10, 12)
    with pytest.raises(ValueError, match=r"candidates \(5\) must be >= k \(10\)"):
        index.search(query_tokens, [10], k=10, candidates=5)
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        index.search(query_tokens, [10], k=1, candidates=0)
    with pytest.raises(ValueError, match="query_tokens holds vectors of dimension 12, but the model's input dimension"):
        lemur.Index(random_model("mlp", "gelu", dims=(8, 48)), W).search(query_tokens, [10])
    with pytest.raises(ValueError, match=r"candidates\[0, 0\] = 80 is not a document id"):
        index.rerank(query_tokens, [10], [[80]])
    with pytest.raises(ValueError, match="features holds vectors of dimension 12, but the model's feature dimension is 48"):
        index.top_k(query_tokens, 3)


def test_save_and_load_round_trip(tmp_path, small):
    model, W, doc_tokens, doc_counts = small
    index = lemur.Index(model, W, doc_tokens, doc_counts)
    index.save(tmp_path / "index.npz")
    again = lemur.Index.load(tmp_path / "index.npz")
    assert np.array_equal(again.W, W) and np.array_equal(again.doc_tokens, doc_tokens)
    assert np.array_equal(again.doc_counts, doc_counts)
    for ours, theirs in zip(model.layers, again.model.layers):
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    query_tokens = random_tokens(30, 12)
    first = index.search(query_tokens, [10, 20], k=4, candidates=12)
    second = again.search(query_tokens, [10, 20], k=4, candidates=12)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    lemur.Index(model, W).save(tmp_path / "bare.npz")
    assert not lemur.Index.load(tmp_path / "bare.npz").has_documents


def test_load_a_fork_export_and_refuse_a_bare_model(tmp_path):
    index = lemur.Index.load(DATA / "mlp1_silu_d100_h256" / "model.npz", activation="silu")
    assert index.num_docs == 300 and not index.has_documents
    random_model("mlp", "gelu").save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="holds a model but no W; it is not an index"):
        lemur.Index.load(tmp_path / "model.npz")


def test_loading_does_not_copy_W_twice(tmp_path):
    model = random_model("mlp", "gelu", dims=(8, 256))
    W = np.random.default_rng(0).standard_normal((40_000, 256)).astype(np.float32)  # 41 MB
    lemur.Index(model, W).save(tmp_path / "big.npz")
    del W
    gc.collect()
    tracemalloc.start()
    index = lemur.Index.load(tmp_path / "big.npz")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert index.W.nbytes <= peak < 1.25 * index.W.nbytes


def test_fixture_index_round_trip(tmp_path):
    index, expected = fixture_index("mlp2_relu_d96_h256")
    index.save(tmp_path / "fixture.npz")
    again = lemur.Index.load(tmp_path / "fixture.npz")
    indices, _ = again.search(expected["query_tokens"], expected["query_counts"], k=10, candidates=50)
    real = np.arange(41) != int(expected["zero_query_index"])
    assert np.array_equal(indices[real], expected["rerank_top10"][real])

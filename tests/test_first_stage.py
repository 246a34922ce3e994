"""lemur.first_stage: the interface, and tombstones filtered out of any first stage."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import random_model
from test_index import assert_same_results
from test_retrieval import corpus

import lemur
from lemur.first_stage import FirstStage, live_top_k
from lemur.first_stage.exhaustive import ExhaustiveScan


def reference_live_top_k(features, W, removed, k):
    """Plain numpy: the k best live rows by lemur's own float32 scores (ties: smaller row)."""
    scores = lemur.scores(features, W)
    scores[:, removed] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
def test_live_top_k_is_the_exact_top_k_of_the_live_rows(precision):
    random = np.random.default_rng(0)
    W = random.standard_normal((500, 64)).astype(np.float32)
    W[100:110] = W[5]  # exact ties
    features = random.standard_normal((7, 64)).astype(np.float32)
    stage = ExhaustiveScan.build(W, precision, lemur.first_stage.compact.subspace(features), 2)
    assert isinstance(stage, FirstStage)
    exact = lemur.top_k(features, W, 500)[0]
    for removed_rows in (np.array([3]), exact[0, :40], np.unique(exact[:, :60]), np.arange(499)):
        removed = np.zeros(500, bool)
        removed[removed_rows] = True
        live = int((~removed).sum())
        for k in (1, 10, 50, live):
            rows, scores = live_top_k(stage, removed, live, features, k, 2)
            expected = reference_live_top_k(features, W, removed, min(k, live))
            np.testing.assert_array_equal(rows, expected[0])
            np.testing.assert_array_equal(scores.view(np.uint32), expected[1].view(np.uint32))


def index_with_sample(precision="float32", num_docs=200, seed=5):
    model = random_model("mlp", "gelu", dims=(16, 64))
    tokens, counts = corpus(num_docs, 16, seed=seed)
    sample = np.random.default_rng(6).standard_normal((300, 16)).astype(np.float32)
    index = lemur.Index(model, np.zeros((0, 64), np.float32), np.zeros((0, 16), np.float32), [],
                        sample=sample, precision=precision)
    index.add_documents(tokens, counts)
    return index, tokens, counts


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_removed_documents_are_tombstones_until_a_fraction_then_compacted(precision):
    index, tokens, counts = index_with_sample(precision)
    W_before = index._store.W
    queries = np.random.default_rng(7).standard_normal((60, 16)).astype(np.float32)
    features = index.features(queries, [20, 20, 20])
    best = index.top_k(features, 20)[0]
    removed = np.unique(best[:, :8])  # the best documents of every query
    assert removed.size < index.REMOVED_FRACTION * 200
    index.remove_documents(removed)
    assert index._store.W is W_before and index._store.num_removed == removed.size  # nothing copied
    assert index.num_docs == 200 - removed.size
    # the same results as an index that never had them
    keep = ~np.isin(np.arange(200), removed)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    fresh = lemur.Index(index.model, index._store.W[:200][keep],
                        np.concatenate([tokens[offsets[i] : offsets[i + 1]] for i in np.flatnonzero(keep)]),
                        counts[keep], doc_ids=np.flatnonzero(keep), doc_tokens_centered=True, precision=precision)
    for k in (1, 20, index.num_docs):
        assert_same_results(index.top_k(features, k), fresh.top_k(features, k))
    assert_same_results(index.search(queries, [20, 20, 20], k=5, candidates=30),
                        fresh.search(queries, [20, 20, 20], k=5, candidates=30))
    with pytest.raises(ValueError, match="is not a document id"):
        index.rerank(queries, [20, 20, 20], [[int(removed[0])]] * 3)
    with pytest.raises(ValueError, match="is not a document id"):
        index.remove_documents(removed[:1])
    # an id removed can be used again
    index.add_documents(tokens[:counts[0]], counts[:1], ids=[int(removed[0])])
    assert index.num_docs == 201 - removed.size
    # past the fraction: compacted
    more = np.setdiff1d(np.arange(200), removed)[:60]
    index.remove_documents(more)
    assert index._store.num_removed == 0 and index._store.num_docs == index.num_docs == 141 - removed.size


def test_reading_the_arrays_or_saving_compacts(tmp_path):
    index, _, _ = index_with_sample()
    index.remove_documents([3, 4])
    assert index._store.num_removed == 2
    ids = index.doc_ids
    assert index._store.num_removed == 0 and ids.size == 198 and not np.isin([3, 4], ids).any()
    index.remove_documents([5])
    index.save(tmp_path / "index.npz")
    loaded = lemur.load(tmp_path / "index.npz")
    assert loaded.num_docs == 197 and not np.isin([3, 4, 5], loaded.doc_ids).any()

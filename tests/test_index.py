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


# -- precision: the compact first stage ------------------------------------------------------


def assert_same_results(ours, theirs):
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
        if a.dtype == np.float32:
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_every_precision_returns_bitwise_the_float32_results_on_the_fixtures(variant, precision):
    index, expected = fixture_index(variant)
    compact = index.with_precision(precision)
    assert compact.precision == precision and index.precision == "float32"
    assert np.shares_memory(compact.W, index.W) and np.shares_memory(compact.doc_tokens, index.doc_tokens)
    tokens, counts = expected["query_tokens"], expected["query_counts"]
    features = index.features(tokens, counts)
    for k in (1, 10, 50, 299):
        assert_same_results(compact.top_k(features, k), index.top_k(features, k))
    for k, candidates in ((10, 50), (10, 100), (5, 300)):
        assert_same_results(compact.search(tokens, counts, k=k, candidates=candidates),
                            index.search(tokens, counts, k=k, candidates=candidates))


def test_an_index_without_tokens_takes_its_directions_from_unit_vectors():
    """Given neither a sample nor the documents' tokens, the compact scan's
    exact directions follow random unit vectors (the scale of token
    embeddings): on the original's model their bound leaves fewer pairs to
    rescore than directions from standard normal tokens (norm about sqrt(d),
    what they were drawn from before: 74% of the pairs against 93% with
    AVX2's int8 query codes, 33% against 66% with the others'), and the
    results stay bitwise the float32 ones."""
    index, expected = fixture_index("mlp1_gelu_d128_h2048")
    features = index.features(expected["query_tokens"], expected["query_counts"])
    normal = np.random.default_rng(0).standard_normal((32 * 1024, index.model.input_dim)).astype(np.float32)

    def rescored(compact):
        report = {}
        compact._store.scan.top_k(features, 10, 2, report)
        return report["rescored"]

    unit = lemur.Index(index.model, index.W, precision="int8")
    assert rescored(unit) < 0.9 * rescored(lemur.Index(index.model, index.W, sample=normal, precision="int8"))
    assert_same_results(unit.top_k(features, 10), index.top_k(features, 10))


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_a_compact_index_describes_itself(small, precision):
    model, W, doc_tokens, doc_counts = small
    index = lemur.Index(model, W, doc_tokens, doc_counts, precision=precision)
    assert index.precision == precision and index.compact.num_docs == 80
    assert index.nbytes == model.nbytes + W.nbytes + doc_tokens.nbytes + index.compact.nbytes
    assert f"precision='{precision}'" in repr(index)
    assert lemur.Index(model, W).compact is None
    with pytest.raises(ValueError, match="precision must be one of 'float32', 'bfloat16', 'int8'"):
        lemur.Index(model, W, precision="float16")


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_adding_and_removing_keep_the_compact_copy_in_step(precision):
    model = random_model("mlp", "gelu", dims=(16, 64))
    tokens, counts = corpus(150, 16, seed=5)
    sample = np.random.default_rng(6).standard_normal((300, 16)).astype(np.float32)
    index = lemur.Index(model, np.zeros((0, 64), np.float32), np.zeros((0, 16), np.float32), [],
                        sample=sample, precision=precision)
    plain = lemur.Index(model, np.zeros((0, 64), np.float32), np.zeros((0, 16), np.float32), [], sample=sample)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for first, last in ((0, 70), (70, 71), (71, 150)):
        for each in (index, plain):
            each.add_documents(tokens[offsets[first] : offsets[last]], counts[first:last])
    for each in (index, plain):
        each.remove_documents([0, 64, 65, 149])
    rebuilt = plain.with_precision(precision)
    np.testing.assert_array_equal(index.compact.codes, rebuilt.compact.codes)
    np.testing.assert_array_equal(index.compact.params, rebuilt.compact.params)
    queries = np.random.default_rng(7).standard_normal((60, 16)).astype(np.float32)
    assert_same_results(index.search(queries, [20, 20, 20], k=5, candidates=30),
                        plain.search(queries, [20, 20, 20], k=5, candidates=30))


# -- float16 token stores ---------------------------------------------------------------------


def test_a_float16_token_store_is_kept_as_given_and_searches_as_its_float32_values(small):
    model, W, doc_tokens, doc_counts = small
    half = doc_tokens.astype(np.float16)
    index = lemur.Index(model, W, half, doc_counts)
    assert index.doc_tokens.dtype == np.float16 and np.shares_memory(index.doc_tokens, half)
    assert index.nbytes == model.nbytes + W.nbytes + half.nbytes
    widened = lemur.Index(model, W, half.astype(np.float32), doc_counts)
    query_tokens, counts = random_tokens(50, 12, seed=9), [10, 0, 25, 15]
    assert_same_results(index.search(query_tokens, counts, k=5, candidates=20),
                        widened.search(query_tokens, counts, k=5, candidates=20))
    candidates = np.random.default_rng(1).integers(-1, 80, (4, 30))
    assert_same_results(index.rerank(query_tokens, counts, candidates, 7),
                        widened.rerank(query_tokens, counts, candidates, 7))


def test_a_model_with_a_centre_keeps_centred_float32_copies_of_float16_tokens(small):
    model, W, doc_tokens, doc_counts = small
    centred = lemur.Model(list(model.layers), kind="mlp", activation="gelu", center=np.full(12, 0.1, np.float32))
    half = doc_tokens.astype(np.float16)
    index = lemur.Index(centred, W, half, doc_counts)
    assert index.doc_tokens.dtype == np.float32
    np.testing.assert_array_equal(index.doc_tokens, centred.centred(half.astype(np.float32), 1))
    already = lemur.Index(centred, W, half, doc_counts, doc_tokens_centered=True)
    assert already.doc_tokens.dtype == np.float16


def test_documents_added_to_a_float16_store_are_fitted_on_the_values_stored():
    model = random_model("mlp", "gelu", dims=(16, 64))
    tokens, counts = corpus(40, 16, seed=5)
    sample = np.random.default_rng(6).standard_normal((200, 16)).astype(np.float32)
    half = lemur.Index(model, np.zeros((0, 64), np.float32), np.zeros((0, 16), np.float16), [], sample=sample)
    single = lemur.Index(model, np.zeros((0, 64), np.float32), np.zeros((0, 16), np.float32), [], sample=sample)
    half.add_documents(tokens, counts)  # float32 tokens into a float16 store: rounded first
    single.add_documents(tokens.astype(np.float16).astype(np.float32), counts)
    assert half.doc_tokens.dtype == np.float16
    np.testing.assert_array_equal(half.W, single.W)
    elm_half = lemur.fit_elm(tokens.astype(np.float16), counts, hidden_dim=64, sample_size=100, seed=3)
    elm_single = lemur.fit_elm(tokens.astype(np.float16).astype(np.float32), counts, hidden_dim=64,
                               sample_size=100, seed=3)
    assert elm_half.doc_tokens.dtype == np.float16
    np.testing.assert_array_equal(elm_half.W, elm_single.W)


@pytest.mark.parametrize("mmap", [False, True])
def test_a_float16_token_store_survives_save_and_load(tmp_path, small, mmap):
    model, W, doc_tokens, doc_counts = small
    lemur.Index(model, W, doc_tokens.astype(np.float16), doc_counts).save(tmp_path / "half.npz")
    again = lemur.load(tmp_path / "half.npz", mmap=mmap)
    assert again.doc_tokens.dtype == np.float16
    np.testing.assert_array_equal(again.doc_tokens, doc_tokens.astype(np.float16))

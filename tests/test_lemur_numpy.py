"""lemur.lemur_numpy: the drop-in replacement for the Numba fork's class."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, FEATURE_TOLERANCE, golden

import lemur as lemur_module
from lemur.lemur_numpy import LemurNumPy, create_synthetic_model


def loaded(variant="mlp1_gelu_d128_h2048", **options) -> LemurNumPy:
    return LemurNumPy(**options).load_npz(DATA / variant / "model.npz")


def fork_features_float32(lemur: LemurNumPy, embeddings, counts) -> np.ndarray:
    """The fork's own formulas (tanh GELU), in float32 NumPy."""
    x = embeddings @ lemur.W_proj.T + lemur.b_proj
    mean = x.mean(axis=-1, keepdims=True)
    variance = x.var(axis=-1, keepdims=True)
    x = lemur.ln_w * ((x - mean) / np.sqrt(variance + 1e-5)) + lemur.ln_b
    x = 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x**3)))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return np.stack([x[a:b].sum(axis=0) / 32.0 for a, b in zip(offsets[:-1], offsets[1:])])


def test_load_npz_sets_the_forks_attributes():
    lemur = loaded()
    arrays = np.load(DATA / "mlp1_gelu_d128_h2048" / "model.npz")
    assert lemur.load_npz(DATA / "mlp1_gelu_d128_h2048" / "model.npz") is lemur
    assert np.array_equal(lemur.W_proj, arrays["layer_0_weight"])
    assert np.array_equal(lemur.b_proj, arrays["layer_0_bias"])
    assert np.array_equal(lemur.ln_w, arrays["layer_0_ln_weight"])
    assert np.array_equal(lemur.ln_b, arrays["layer_0_ln_bias"])
    assert np.array_equal(lemur.W_out, arrays["W"])
    assert (lemur.hidden_dim, lemur.embed_dim, lemur.num_docs) == (2048, 128, 300)
    assert lemur.activation == "gelu"


@pytest.mark.parametrize(
    ("variant", "activation"),
    [("mlp1_gelu_d128_h2048", "gelu"), ("mlp2_relu_d96_h256", "relu"), ("mlp1_mish_d64_h256", "mish")],
)
def test_features_and_scores_match_the_original(variant, activation):
    lemur = LemurNumPy(activation=activation).load_npz(DATA / variant / "model.npz")
    expected = golden(variant)
    features = lemur.compute_features(expected["query_tokens"], expected["query_counts"])
    np.testing.assert_allclose(features, expected["features_ragged"], **FEATURE_TOLERANCE)
    scores = lemur.approximate_scores(features)
    assert scores.dtype == np.float32 and scores.shape == (41, 300)
    np.testing.assert_allclose(scores, expected["scores"], **FEATURE_TOLERANCE)


def test_gelu_tanh_reproduces_the_fork():
    expected = golden("mlp1_gelu_d128_h2048")
    tokens, counts = expected["query_tokens"], expected["query_counts"]
    fork_like = loaded(activation="gelu-tanh")
    fork = fork_features_float32(fork_like, tokens, counts)
    np.testing.assert_allclose(fork_like.compute_features(tokens, counts), fork, atol=2e-5, rtol=1e-5)
    # ... whereas the default exact GELU is what the trained model computes
    exact = loaded().compute_features(tokens, counts)
    assert np.max(np.abs(exact - fork)) > 1e-4
    np.testing.assert_allclose(exact, expected["features_ragged"], **FEATURE_TOLERANCE)


def test_inputs_are_converted_as_the_fork_does():
    lemur = loaded()
    expected = golden("mlp1_gelu_d128_h2048")
    features = lemur.compute_features(
        expected["query_tokens"].astype(np.float64)[:, :].copy(order="F"),
        list(expected["query_counts"]),
    )
    np.testing.assert_allclose(features, expected["features_ragged"], **FEATURE_TOLERANCE)


def test_synthetic_model_draws_the_forks_numbers():
    state = np.random.get_state()
    lemur = create_synthetic_model(embed_dim=16, hidden_dim=32, num_docs=50, seed=7)
    assert np.array_equal(np.random.get_state()[1], state[1])  # global state untouched
    np.random.seed(7)
    assert np.array_equal(lemur.W_proj, (np.random.randn(32, 16).astype(np.float32) * 0.02))
    assert np.array_equal(lemur.W_out, (np.random.randn(50, 32).astype(np.float32) * 0.02))
    np.random.set_state(state)
    tokens = np.random.default_rng(0).standard_normal((10, 16)).astype(np.float32)
    features = lemur.compute_features(tokens, [4, 6])
    assert features.shape == (2, 32)
    assert lemur.approximate_scores(features).shape == (2, 50)
    assert (lemur.num_docs, lemur.hidden_dim, lemur.embed_dim) == (50, 32, 16)


def test_replacing_an_attribute_changes_the_model():
    lemur = create_synthetic_model(embed_dim=8, hidden_dim=16, num_docs=5)
    tokens = np.ones((3, 8), np.float32)
    before = lemur.compute_features(tokens, [3])
    lemur.ln_b = np.full(16, 0.5, np.float32)
    after = lemur.compute_features(tokens, [3])
    assert not np.allclose(before, after)


def test_errors(tmp_path):
    elm_npz = tmp_path / "elm.npz"
    lemur_module.load(DATA / "elm_gelu_d128_h512").save(elm_npz)
    empty = LemurNumPy()
    assert empty.num_docs == 0
    with pytest.raises(ValueError, match="no model loaded: call load_npz"):
        empty.compute_features(np.ones((2, 4), np.float32), [2])
    with pytest.raises(ValueError, match="no document matrix"):
        empty.approximate_scores(np.ones((2, 4), np.float32))
    lemur = loaded()
    with pytest.raises(ValueError, match="query_features holds vectors of dimension 100, but W_out's width"):
        lemur.approximate_scores(np.ones((2, 100), np.float32))
    with pytest.raises(ValueError, match="holds an ELM model; LemurNumPy supports MLP models only"):
        LemurNumPy().load_npz(elm_npz)
    with pytest.raises(ValueError, match="unknown activation"):
        LemurNumPy(activation="GELU")
    with pytest.raises(ValueError, match="counts sums to 3, but tokens has 4 rows"):
        lemur.compute_features(np.ones((4, 128), np.float32), [3])


def test_num_threads_option():
    expected = golden("mlp1_gelu_d128_h2048")
    one = loaded(num_threads=1).compute_features(expected["query_tokens"], expected["query_counts"])
    two = loaded(num_threads=2).compute_features(expected["query_tokens"], expected["query_counts"])
    assert np.array_equal(one, two)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        LemurNumPy(num_threads=0)


def fork_top_k(scores, k):
    """The fork's top_k on a score matrix (argpartition, then argsort)."""
    if k >= scores.shape[1]:
        indices = np.argsort(-scores, axis=1)
        return indices, np.take_along_axis(scores, indices, axis=1)
    indices = np.argpartition(-scores, k, axis=1)[:, :k]
    top = np.take_along_axis(scores, indices, axis=1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(top, order, axis=1)


@pytest.mark.parametrize("k", [1, 10, 100, 300, 1000])
def test_top_k_behaves_as_the_forks(k):
    lemur = loaded()
    expected = golden("mlp1_gelu_d128_h2048")
    features = lemur.compute_features(expected["query_tokens"], expected["query_counts"])
    indices, scores = lemur.top_k(features, k=k)
    fork_indices, fork_scores = fork_top_k(lemur.approximate_scores(features), k)
    assert indices.shape == fork_indices.shape and indices.dtype == fork_indices.dtype
    assert scores.dtype == fork_scores.dtype == np.float32
    np.testing.assert_allclose(scores, fork_scores, **FEATURE_TOLERANCE)
    real = np.arange(41) != int(expected["zero_query_index"])  # all-zero row: ties
    assert np.array_equal(indices[real], fork_indices[real])


def test_exact_maxsim_behaves_as_the_forks():
    lemur = loaded()
    expected = golden("mlp1_gelu_d128_h2048")
    with np.load(DATA / "corpus.npz") as archive:
        doc_tokens, doc_counts = archive["doc_tokens_d128"], archive["doc_counts"]
    scores = lemur.exact_maxsim(
        expected["query_tokens"], expected["query_counts"], doc_tokens, doc_counts,
        expected["candidates"].astype(np.int64),
    )
    assert scores.dtype == np.float32 and scores.shape == (41, 50)
    np.testing.assert_allclose(scores, expected["exact_maxsim_candidates"], rtol=1e-6, atol=2e-5)
    with pytest.raises(ValueError, match="is not a document id"):
        lemur.exact_maxsim(expected["query_tokens"], expected["query_counts"], doc_tokens, doc_counts,
                           np.full((41, 1), 300))


def test_top_k_refuses_k_below_one():
    with pytest.raises(ValueError, match="k must be >= 1"):
        loaded().top_k(np.ones((1, 2048), np.float32), k=0)


def test_top_k_far_beyond_the_documents_is_clamped():
    lemur = create_synthetic_model(embed_dim=8, hidden_dim=32, num_docs=20)
    features = lemur.compute_features(np.ones((3, 8), np.float32), [3])
    indices, scores = lemur.top_k(features, k=10**12)
    assert indices.shape == scores.shape == (1, 20)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_a_compact_precision_gives_the_float32_top_k(precision):
    plain = create_synthetic_model(embed_dim=32, hidden_dim=256, num_docs=3000, seed=1)
    compact = LemurNumPy(precision=precision)
    compact.W_proj, compact.b_proj, compact.ln_w, compact.ln_b = plain.W_proj, plain.b_proj, plain.ln_w, plain.ln_b
    compact.W_out = plain.W_out
    tokens = np.random.default_rng(2).standard_normal((50 * 8, 32)).astype(np.float32)
    features = plain.compute_features(tokens, [8] * 50)
    for k in (1, 10, 100):
        for ours, theirs in zip(compact.top_k(features, k), plain.top_k(features, k)):
            np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(ValueError, match="precision must be one of"):
        LemurNumPy(precision="float16")

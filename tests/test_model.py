"""lemur.Model: features against the original's outputs, float64 and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FEATURE_TOLERANCE, golden, load_variant, random_model, random_tokens

import lemur
import reference
from lemur import _dispatch

KINDS_AND_ACTIVATIONS = [("mlp", name) for name in lemur.ACTIVATIONS] + [
    ("elm", name) for name in lemur.ACTIVATIONS
]


# -- the original's outputs ----------------------------------------------------


def test_ragged_features_match_original(variant):
    model, expected = load_variant(variant), golden(variant)
    features = model.features(expected["query_tokens"], expected["query_counts"])
    np.testing.assert_allclose(features, expected["features_ragged"], **FEATURE_TOLERANCE)


def test_empty_query_features_are_exactly_zero(variant):
    model, expected = load_variant(variant), golden(variant)
    features = model.features(expected["query_tokens"], expected["query_counts"])
    assert expected["query_counts"][int(expected["zero_query_index"])] == 0
    assert np.all(features[int(expected["zero_query_index"])] == 0)


def test_padded_features_match_original(variant):
    model, expected = load_variant(variant), golden(variant)
    np.testing.assert_allclose(
        model.features(expected["padded_queries"]), expected["features_padded"], **FEATURE_TOLERANCE
    )
    np.testing.assert_allclose(
        model.features(expected["padded_queries_full"]),
        expected["features_padded_full"],
        **FEATURE_TOLERANCE,
    )


def test_token_features_match_original(variant):
    model, expected = load_variant(variant), golden(variant)
    np.testing.assert_allclose(
        model.token_features(expected["query_tokens"][:16]),
        expected["token_features_first16"],
        **FEATURE_TOLERANCE,
    )


def test_features_match_float64_recomputation(variant):
    model, expected = load_variant(variant), golden(variant)
    exact = reference.features(model, expected["query_tokens"], expected["query_counts"])
    features = model.features(expected["query_tokens"], expected["query_counts"])
    # the original itself is within 8e-7 of float64 here (fixtures README)
    np.testing.assert_allclose(features, exact, atol=2e-6, rtol=2e-6)


# -- random models of every kind and activation against float64 ------------------


@pytest.mark.parametrize(("kind", "activation"), KINDS_AND_ACTIVATIONS)
def test_random_model_matches_float64(kind, activation):
    dims = (20, 72) if kind == "elm" else (20, 33, 72)  # two MLP layers, odd widths
    model = random_model(kind, activation, dims=dims)
    tokens = random_tokens(150, 20)
    counts = np.array([0, 1, 7, 64, 65, 0, 13], dtype=np.int64)
    counts[-1] += tokens.shape[0] - counts.sum()
    exact = reference.features(model, tokens, counts)
    np.testing.assert_allclose(model.features(tokens, counts), exact, atol=2e-6, rtol=2e-6)
    np.testing.assert_allclose(
        model.token_features(tokens), reference.psi(model, tokens), atol=2e-6, rtol=2e-6
    )
    padded = tokens[:144].reshape(8, 18, 20)
    np.testing.assert_allclose(
        model.features(padded), reference.features(model, padded), atol=2e-6, rtol=2e-6
    )


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_deep_mlp_matches_float64(num_layers):
    dims = (16,) + (48,) * num_layers
    model = random_model("mlp", "gelu", dims=dims, seed=num_layers)
    tokens = random_tokens(70, 16)
    counts = [30, 40]
    np.testing.assert_allclose(
        model.features(tokens, counts), reference.features(model, tokens, counts), atol=2e-6, rtol=2e-6
    )


def test_long_queries_span_several_blocks():
    # a query longer than a kernel block (64 rows) is pooled across blocks
    model = random_model("mlp", "silu", dims=(8, 24))
    tokens = random_tokens(700, 8)
    counts = [1, 300, 0, 399]
    np.testing.assert_allclose(
        model.features(tokens, counts), reference.features(model, tokens, counts), atol=3e-6, rtol=3e-6
    )


def test_all_queries_empty_gives_zeros():
    model = random_model("mlp", "gelu")
    features = model.features(np.empty((0, 24), dtype=np.float32), [0, 0, 0])
    assert features.shape == (3, 40)
    assert np.all(features == 0)


def test_results_do_not_depend_on_thread_count():
    model = random_model("mlp", "gelu", dims=(32, 128))
    tokens = random_tokens(3000, 32)
    counts = np.random.default_rng(3).multinomial(3000, np.ones(90) / 90)
    one = model.features(tokens, counts, num_threads=1)
    for threads in (2, 3, 8):
        assert np.array_equal(model.features(tokens, counts, num_threads=threads), one)


@pytest.mark.parametrize("counts", [[32], [200], [33], [0, 40, 0], [20, 12], [64]])
def test_a_small_batch_split_over_threads_gives_the_batch_numbers(counts):
    """Fewer groups of queries than threads (one query): every token's
    features in parallel blocks, pooled after in the same order; bitwise the
    features of the same queries inside a large batch, for any thread count."""
    model = random_model("mlp", "gelu", dims=(32, 128, 96))
    tokens = random_tokens(sum(counts), 32)
    filler = random_tokens(3000, 32)
    batch = model.features(np.concatenate([filler, tokens]), [3000 // 60] * 60 + list(counts), num_threads=2)
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(model.features(tokens, counts, num_threads=threads), batch[60:])


@pytest.mark.parametrize("variant_name", _dispatch.runnable_variants())
def test_every_kernel_variant_is_exact(monkeypatch, variant_name):
    from lemur import model as model_module

    monkeypatch.setattr(model_module, "kernels", _dispatch.load_variant(variant_name))
    model = random_model("mlp", "mish", dims=(20, 33, 72))
    tokens = random_tokens(100, 20)
    counts = [50, 0, 50]
    np.testing.assert_allclose(
        model.features(tokens, counts), reference.features(model, tokens, counts), atol=2e-6, rtol=2e-6
    )


# -- PyTorch's own modules, where torch is installed -----------------------------


@pytest.mark.parametrize("activation", list(lemur.ACTIVATIONS))
def test_matches_pytorch_modules(activation):
    torch = pytest.importorskip("torch")
    modules = {
        "relu": torch.nn.ReLU(),
        "gelu": torch.nn.GELU(),
        "gelu-tanh": torch.nn.GELU(approximate="tanh"),
        "silu": torch.nn.SiLU(),
        "mish": torch.nn.Mish(),
    }
    model = random_model("mlp", activation, dims=(20, 33, 72))
    stack = []
    for layer in model.layers:
        linear = torch.nn.Linear(*layer.weight.shape[::-1])
        norm = torch.nn.LayerNorm(layer.weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(layer.weight))
            linear.bias.copy_(torch.tensor(layer.bias))
            norm.weight.copy_(torch.tensor(layer.ln_weight))
            norm.bias.copy_(torch.tensor(layer.ln_bias))
        stack += [linear, norm, modules[activation]]
    network = torch.nn.Sequential(*stack).eval()
    tokens = random_tokens(90, 20)
    counts = torch.tensor([40, 0, 50])
    with torch.inference_mode():
        expected = torch.segment_reduce(network(torch.from_numpy(tokens)), "sum", lengths=counts) / 32
    np.testing.assert_allclose(
        model.features(tokens, counts.numpy()), expected.numpy(), **FEATURE_TOLERANCE
    )


def test_elm_matches_pytorch_modules():
    torch = pytest.importorskip("torch")
    model = random_model("elm", "gelu", dims=(20, 64))
    R = torch.from_numpy(model.layers[0].weight.T.copy())
    tokens = torch.from_numpy(random_tokens(30, 20))
    with torch.inference_mode():
        hidden = (2.0 / 64) ** 0.5 * torch.nn.functional.gelu(tokens @ R)
        expected = torch.nn.functional.layer_norm(hidden, (64,))
    np.testing.assert_allclose(
        model.token_features(tokens.numpy()), expected.numpy(), **FEATURE_TOLERANCE
    )


# -- construction and description ------------------------------------------------


def test_model_describes_itself():
    model = random_model("mlp", "silu", dims=(20, 33, 72))
    assert (model.kind, model.activation, model.num_layers) == ("mlp", "silu", 2)
    assert (model.input_dim, model.feature_dim) == (20, 72)
    assert model.nbytes == sum(a.nbytes for layer in model.layers for a in layer)
    assert repr(model) == "Model(kind='mlp', activation='silu', layers=2, dims=20 -> 33 -> 72)"


def test_model_owns_read_only_copies_of_its_weights():
    weight = np.ones((4, 3), dtype=np.float64)
    model = lemur.Model([lemur.Layer(weight, np.zeros(4), np.ones(4), np.zeros(4))])
    weight[:] = np.nan
    assert model.layers[0].weight.dtype == np.float32
    assert np.all(model.layers[0].weight == 1)
    with pytest.raises(ValueError, match="read-only"):
        model.layers[0].weight[0, 0] = 2


LAYER = lemur.Layer(
    np.ones((4, 3), np.float32), np.zeros(4, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32)
)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (dict(layers=[]), ValueError, "layers is empty"),
        (dict(layers="abc"), TypeError, "layers must be a sequence"),
        (dict(layers=[(1, 2)]), TypeError, r"layers\[0\] must be a lemur.Layer"),
        (dict(layers=[LAYER], kind="cnn"), ValueError, "unknown model kind 'cnn'"),
        (dict(layers=[LAYER], activation="tanh"), ValueError, "unknown activation 'tanh'; expected one of relu, gelu"),
        (dict(layers=[LAYER], activation=3), TypeError, "activation must be a str"),
        (dict(layers=[LAYER._replace(weight=np.ones((4, 3), np.int32))]), TypeError, "layer_0_weight must hold floating-point values"),
        (dict(layers=[LAYER._replace(weight=np.ones(4, np.float32))]), ValueError, r"layer_0_weight must have shape \(output_dim, input_dim\)"),
        (dict(layers=[LAYER._replace(bias=np.zeros(5, np.float32))]), ValueError, r"layer_0_bias must have shape \(4,\)"),
        (dict(layers=[LAYER._replace(ln_bias=None)]), ValueError, "an MLP layer needs layer_0_ln_bias"),
        (dict(layers=[LAYER._replace(ln_weight=np.array([1, np.nan, 1, 1], np.float32))]), ValueError, "layer_0_ln_weight contains NaN or infinite values"),
        (dict(layers=[LAYER._replace(weight=np.full((4, 3), np.inf, np.float32))]), ValueError, "layer_0_weight contains NaN or infinite"),
        (dict(layers=[LAYER, LAYER]), ValueError, r"layer_1_weight has shape \(4, 3\): its input dimension 3 does not match the output dimension 4 of layer_0_weight"),
        (dict(layers=[LAYER], kind="elm"), ValueError, "an ELM layer has no bias"),
        (dict(layers=[lemur.Layer(np.ones((4, 3))), lemur.Layer(np.ones((4, 4)))], kind="elm"), ValueError, "an ELM model has exactly one layer"),
        (dict(layers=[LAYER], output_std=0.0), ValueError, "output_std must be > 0"),
        (dict(layers=[LAYER], output_mean=float("nan")), ValueError, "output_mean must be finite"),
        (dict(layers=[LAYER], output_mean="x"), TypeError, "output_mean must be a real number"),
        (dict(layers=[lemur.Layer(np.ones((0, 3), np.float32))], kind="elm"), ValueError, "layer_0_weight must not be empty"),
    ],
)
def test_bad_models_are_refused(arguments, error, message):
    with pytest.raises(error, match=message):
        lemur.Model(**arguments)


# -- bad inputs to features ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    return random_model("mlp", "gelu", dims=(6, 10))


@pytest.mark.parametrize(
    ("tokens", "counts", "error", "message"),
    [
        ([[0.0] * 6], [1], TypeError, "tokens must be a numpy.ndarray, got list"),
        (np.zeros((4, 6), np.float64), [4], TypeError, r"tokens must have dtype float32, got float64 \(convert with tokens.astype\(np.float32\)\)"),
        (np.zeros((4, 6), np.int32), [4], TypeError, "tokens must have dtype float32, got int32"),
        (np.zeros(6, np.float32), [1], ValueError, r"tokens must be 2-D, got an array of shape \(6,\)"),
        (np.zeros((4, 5), np.float32), [4], ValueError, "tokens holds vectors of dimension 5, but the model's input dimension is 6"),
        (np.zeros((6, 4), np.float32).T, [4], ValueError, "tokens must be C-contiguous"),
        (np.zeros((4, 6), np.float32), [2, 1], ValueError, "counts sums to 3, but tokens has 4 rows"),
        (np.zeros((4, 6), np.float32), [5, -1], ValueError, r"counts must be non-negative, but counts\[1\] = -1"),
        (np.zeros((4, 6), np.float32), [9], ValueError, r"counts\[0\] = 9 exceeds the 4 rows of tokens"),
        (np.zeros((4, 6), np.float32), [2.0, 2.0], TypeError, "counts must hold integers, got dtype float64"),
        (np.zeros((4, 6), np.float32), [[4]], ValueError, r"counts must be 1-D, got an array of shape \(1, 1\)"),
        (np.zeros((4, 6), np.float32), [], ValueError, "counts is empty: the batch must hold at least one item"),
        (np.zeros((4, 6), np.float32), [True, True], TypeError, "counts must hold integers, got dtype bool"),
        (np.zeros((4, 6), np.float32), None, ValueError, "tokens is 2-D, which is a ragged batch: pass counts"),
        (np.zeros((2, 0, 6), np.float32), None, ValueError, "padded tokens must have N >= 1"),
        (np.zeros((0, 3, 6), np.float32), None, ValueError, "tokens has no queries"),
        (np.zeros((2, 3, 5), np.float32), None, ValueError, "tokens holds vectors of dimension 5"),
    ],
)
def test_bad_inputs_are_refused(small_model, tokens, counts, error, message):
    with pytest.raises(error, match=message):
        small_model.features(tokens, counts)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_tokens_are_refused(small_model, bad):
    tokens = np.zeros((40, 6), np.float32)
    tokens[37, 2] = bad
    with pytest.raises(ValueError, match=r"tokens contains NaN or infinite values at index \(37,\)"):
        small_model.features(tokens, [40])
    padded = tokens.reshape(4, 10, 6)
    with pytest.raises(ValueError, match=r"tokens contains NaN or infinite values at index \(3, 7\)"):
        small_model.features(padded)


@pytest.mark.parametrize(
    ("num_threads", "error", "message"),
    [(0, ValueError, "num_threads must be >= 1"), (-1, ValueError, "num_threads must be >= 1"),
     (1.5, TypeError, "num_threads must be a positive int or None, got float"),
     (True, TypeError, "num_threads must be a positive int or None, got bool")],
)
def test_bad_num_threads_are_refused(small_model, num_threads, error, message):
    with pytest.raises(error, match=message):
        small_model.features(np.zeros((2, 6), np.float32), [2], num_threads=num_threads)


def test_int_count_dtypes_are_accepted(small_model):
    tokens = random_tokens(9, 6)
    expected = small_model.features(tokens, np.array([4, 5], np.int64))
    for dtype in (np.int32, np.uint8, np.uint64, np.int16):
        assert np.array_equal(small_model.features(tokens, np.array([4, 5], dtype)), expected)
    assert np.array_equal(small_model.features(tokens, [4, 5]), expected)


def test_concurrent_calls_from_python_threads():
    # kernels release the GIL; calls from several threads at once stay correct
    from concurrent.futures import ThreadPoolExecutor

    model = random_model("mlp", "gelu", dims=(32, 256))
    tokens = random_tokens(2000, 32)
    counts = [500, 700, 800]
    expected = model.features(tokens, counts, num_threads=1)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: model.features(tokens, counts, num_threads=t), [1, 2, 1, 2] * 4))
    for result in results:
        assert np.array_equal(result, expected)

"""lemur.train and fit_elm: derivatives, gradients, fidelity to PyTorch's
training, reproducibility, bad inputs, interruption, quality."""

from __future__ import annotations

import math
import os
import signal
import threading

import numpy as np
import pytest

import lemur
from lemur import training
from lemur._dispatch import kernels
from lemur.cli import _synthetic_corpus
from lemur.model import ACTIVATIONS

SQRT2 = math.sqrt(2.0)


def reference_activation(x: np.ndarray, name: str) -> np.ndarray:
    """float64 activations, written from their definitions."""
    if name == "relu":
        return np.maximum(x, 0)
    if name == "gelu":
        return x * 0.5 * (1 + np.vectorize(math.erf)(x / SQRT2))
    if name == "gelu-tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if name == "silu":
        return x / (1 + np.exp(-x))
    return x * np.tanh(np.logaddexp(0, x))  # mish


@pytest.mark.parametrize("name", training.TRAINABLE_ACTIVATIONS)
def test_each_derivative_matches_finite_differences_in_float64(name):
    x = np.concatenate([np.linspace(-12, 12, 2001), [-0.3, 1e-3, 7.5]])
    x = x[np.abs(x) > 1e-2] if name == "relu" else x  # relu has no derivative at 0
    step = 1e-6
    expected = (reference_activation(x + step, name) - reference_activation(x - step, name)) / (2 * step)
    got = x.astype(np.float32)
    kernels.activation_derivative_inplace(got, ACTIVATIONS[name])
    # the kernels' exp and erf are within about one float32 rounding; the
    # derivative combines a few of them, so a few roundings of max(1, |x|)
    np.testing.assert_allclose(got, expected, atol=2e-6 * np.maximum(1, np.abs(x)).max(), rtol=1e-5)


def reference_loss(layers, output, x, y, activation):
    """The MLP's mean squared error in float64 (numpy only)."""
    h = x.astype(np.float64)
    for weight, bias, gamma, beta in layers:
        a = h @ weight.T + bias
        normalized = (a - a.mean(1, keepdims=True)) / np.sqrt(a.var(1, keepdims=True) + 1e-5)
        h = reference_activation(normalized * gamma + beta, activation)
    return float(np.mean((h @ output.T - y) ** 2))


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "mish"])
def test_gradients_match_finite_differences_of_the_float64_loss(activation):
    random = np.random.default_rng(0)
    layers, output = training.initial_weights(5, 2, 6, 7, 4, random)
    x = random.standard_normal((9, 5)).astype(np.float32)
    y = random.standard_normal((9, 4)).astype(np.float32)
    trainer = training.Trainer(layers, output, activation, 1e-3, 0.0, 2)
    loss = trainer.gradients(x, y)
    wide = [[parameter.value.astype(np.float64) for parameter in layer] for layer in trainer.layers]
    wide_output = trainer.output.value.astype(np.float64)
    assert loss == pytest.approx(reference_loss(wide, wide_output, x, y, activation), rel=1e-5)
    step = 1e-6
    arrays = [array for layer in wide for array in layer] + [wide_output]
    for array, parameter in zip(arrays, trainer.parameters):
        for flat in random.choice(array.size, min(array.size, 6), replace=False):
            position = np.unravel_index(flat, array.shape)
            original = array[position]
            array[position] = original + step
            above = reference_loss(wide, wide_output, x, y, activation)
            array[position] = original - step
            below = reference_loss(wide, wide_output, x, y, activation)
            array[position] = original
            # float32 forward and backward against float64 differences
            assert parameter.grad[position] == pytest.approx((above - below) / (2 * step), abs=2e-5, rel=2e-3)


def small_problem(seed=0, rows=1500, outputs=40):
    random = np.random.default_rng(seed)
    x = random.standard_normal((rows, 16)).astype(np.float32)
    y = np.tanh(x @ random.standard_normal((16, outputs))).astype(np.float32)
    return random, x, (y - y.mean()) / y.std()


@pytest.mark.parametrize("activation, num_layers", [("gelu", 1), ("relu", 2), ("silu", 2), ("mish", 1)])
def test_one_epoch_equals_the_originals_procedure_in_pytorch(activation, num_layers):
    torch = pytest.importorskip("torch")
    random, x, y = small_problem()
    layers, output = training.initial_weights(16, num_layers, 24, 32, y.shape[1], random)
    order = random.permutation(x.shape[0])
    trainer = training.Trainer(layers, output, activation, 3e-3, 0.5, 2)
    for start in range(0, x.shape[0], 128):
        trainer.step(x[order[start : start + 128]], y[order[start : start + 128]])

    # the original's Lemur._train_mlp, one epoch, from the same weights and order
    modules = []
    for layer in layers:
        linear = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
        norm = torch.nn.LayerNorm(layer.weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(layer.weight))
            linear.bias.copy_(torch.from_numpy(layer.bias))
        modules += [linear, norm, {"gelu": torch.nn.GELU, "relu": torch.nn.ReLU, "silu": torch.nn.SiLU,
                                   "mish": torch.nn.Mish}[activation]()]
    head = torch.nn.Linear(output.shape[1], output.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(output))
    model = torch.nn.Sequential(*modules, head)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    X, Y, perm = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(order)
    for start in range(0, x.shape[0], 128):
        index = perm[start : start + 128]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(X[index]), Y[index])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
    theirs = [parameter.detach().numpy() for parameter in model.parameters()]
    # 12 Adam steps: each moves a weight by about lr, with m / sqrt(v) computed
    # from float32 gradients that differ from PyTorch's by a few roundings
    # (other summation orders); where a gradient is near 0, m / sqrt(v) is
    # sensitive to that, so the tolerance is a fraction of one step (lr)
    for ours, expected in zip((parameter.value for parameter in trainer.parameters), theirs):
        np.testing.assert_allclose(ours, expected, atol=3e-4, rtol=1e-4)
    assert sum(np.abs(ours - expected).mean() for ours, expected in zip(
        (parameter.value for parameter in trainer.parameters), theirs)) < 1e-5 * len(theirs)


def test_the_first_step_is_adam_on_the_clipped_gradients():
    random, x, y = small_problem(rows=256)
    layers, output = training.initial_weights(16, 1, 24, 32, y.shape[1], random)
    for clip in (1e-3, 0.0):
        trainer = training.Trainer(layers, output, "gelu", 0.01, clip, 1)
        trainer.gradients(x, y)
        grads = [parameter.grad.astype(np.float64) for parameter in trainer.parameters]
        norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads))
        scale = min(1.0, clip / (norm + 1e-6)) if clip else 1.0
        assert (scale < 1) == bool(clip)
        before = [parameter.value.astype(np.float64) for parameter in trainer.parameters]
        trainer.step(x, y)
        for start, g, parameter in zip(before, grads, trainer.parameters):
            # step 1: m = 0.1 g, v = 0.001 g^2, so p -= lr g / (|g| + eps) for g = scale * gradient
            clipped = scale * g
            expected = start - 0.01 * clipped / (np.abs(clipped) + 1e-8)
            np.testing.assert_allclose(parameter.value, expected, atol=2e-7, rtol=1e-5)


def corpus_of(num_docs=400, dim=16, seed=0):
    return _synthetic_corpus(np.random.default_rng(seed), num_docs, 12, dim)


SMALL = dict(epochs=2, hidden_dim=32, final_hidden_dim=64, train_subset_size=128, learn_subset_size=3000,
             sample_size=512, batch_size=256, progress=False, num_threads=2)


def test_the_same_seed_trains_the_same_model_and_another_seed_another():
    tokens, counts = corpus_of()
    first = lemur.train(tokens, counts, **SMALL)
    second = lemur.train(tokens, counts, **SMALL)
    other = lemur.train(tokens, counts, **{**SMALL, "seed": 1})
    for a, b in zip(first.model.layers, second.model.layers):
        np.testing.assert_array_equal(a.weight, b.weight)
        np.testing.assert_array_equal(a.ln_bias, b.ln_bias)
    np.testing.assert_array_equal(first.W, second.W)
    assert not np.array_equal(first.model.layers[0].weight, other.model.layers[0].weight)
    assert first.model.kind == "mlp" and first.model.feature_dim == 64 and first.sample.shape == (512, 16)
    assert first.num_docs == 400 and first.has_documents
    assert first.model.output_std > 0


def test_bfloat16_gradients_are_the_float32_ones_within_bfloat16_rounding():
    """matmul_precision="bfloat16" changes only the products' operands
    (rounded, relative error 2^-9 each): the gradients stay within about a
    percent of the float32 ones (gradient norms: 0.2%)."""
    random = np.random.default_rng(0)
    layers, output = training.initial_weights(16, 2, 48, 64, 40, random)
    x = random.standard_normal((300, 16)).astype(np.float32)
    y = random.standard_normal((300, 40)).astype(np.float32)
    exact, rounded = (training.Trainer(layers, output, "gelu", 1e-3, 0.0, 2, precision)
                      for precision in ("float32", "bfloat16"))
    assert rounded.gradients(x, y) == pytest.approx(exact.gradients(x, y), rel=1e-3)
    for ours, theirs in zip(rounded.parameters, exact.parameters):
        difference = np.linalg.norm(ours.grad - theirs.grad) / np.linalg.norm(theirs.grad)
        assert difference < 0.02


@pytest.mark.filterwarnings("ignore:matmul_precision='bfloat16' without AMX")
def test_bfloat16_training_is_reproducible_and_learns_as_float32_does():
    tokens, counts = corpus_of()
    settings = {**SMALL, "epochs": 4, "matmul_precision": "bfloat16"}
    first, second = lemur.train(tokens, counts, **settings), lemur.train(tokens, counts, **settings)
    np.testing.assert_array_equal(first.model.layers[0].weight, second.model.layers[0].weight)
    np.testing.assert_array_equal(first.W, second.W)
    exact = lemur.train(tokens, counts, **{**settings, "matmul_precision": "float32"})
    assert first.training_log["matmul_precision"] == "bfloat16"
    ours, theirs = first.training_log["losses"], exact.training_log["losses"]
    assert ours[-1] < 0.9 * ours[0]
    assert ours[-1] == pytest.approx(theirs[-1], rel=0.02)


def test_bfloat16_without_amx_says_it_is_slower(monkeypatch):
    monkeypatch.setattr(training.kernels, "AMX_BFLOAT16", False)
    tokens, counts = corpus_of(num_docs=60)
    with pytest.warns(RuntimeWarning, match="without AMX tiles here"):
        lemur.train(tokens, counts, **{**SMALL, "epochs": 1, "matmul_precision": "bfloat16"})


def test_epochs_0_is_fit_elm():
    tokens, counts = corpus_of()
    elm = lemur.train(tokens, counts, **{**SMALL, "epochs": 0})
    direct = lemur.fit_elm(tokens, counts, hidden_dim=64, sample_size=512, train_subset_size=128,
                           learn_subset_size=3000, progress=False, num_threads=2)
    assert elm.model.kind == "elm"
    np.testing.assert_array_equal(elm.W, direct.W)


def test_validation_split_and_more_training_documents_than_there_are():
    tokens, counts = corpus_of(num_docs=100)
    index = lemur.train(tokens, counts, **{**SMALL, "train_subset_size": 10_000, "validation_split": 0.2})
    assert index.num_docs == 100
    ids, _ = index.search(tokens[:24], [12, 12], k=5, candidates=10_000)  # candidates past the corpus
    assert ids.shape == (2, 5)


@pytest.mark.parametrize("arguments, message", [
    ({"epochs": -1}, "epochs must be a non-negative int"),
    ({"lr": 0.0}, "lr must be a positive number"),
    ({"lr": float("nan")}, "lr must be a positive number"),
    ({"grad_clip": -1.0}, "grad_clip must be a non-negative number"),
    ({"batch_size": 0}, "batch_size must be"),
    ({"validation_split": 1.0}, r"validation_split must be a number in \[0, 1\)"),
    ({"activation": "tanh"}, "activation"),
    ({"num_layers": 0}, "num_layers must be"),
    ({"train_subset_size": 0}, "train_subset_size must be"),
    ({"matmul_precision": "float16"}, "matmul_precision must be one of 'float32', 'bfloat16'"),
])
def test_bad_arguments_are_refused(arguments, message):
    tokens, counts = corpus_of(num_docs=50)
    with pytest.raises(ValueError, match=message):
        lemur.train(tokens, counts, **{**SMALL, **arguments})


def test_bad_corpora_are_refused():
    tokens, counts = corpus_of(num_docs=50)
    with pytest.raises(ValueError):
        lemur.train(tokens[:0], [], **SMALL)
    bad = tokens.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        lemur.train(bad, counts, **SMALL)
    with pytest.raises(ValueError, match="all equal"):
        lemur.train(np.ones_like(tokens), counts, **SMALL)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="needs POSIX signals")
def test_ctrl_c_stops_after_the_batch_and_keeps_the_best_epoch(capfd):
    tokens, counts = corpus_of()
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        index = lemur.train(tokens, counts, **{**SMALL, "epochs": 100_000, "batch_size": 16})
    finally:
        timer.cancel()
    assert "interrupted after" in capfd.readouterr().err
    assert index.num_docs == 400 and np.isfinite(index.W).all()


@pytest.mark.slow
def test_training_lowers_the_loss_and_the_model_retrieves_as_well_as_elm_or_better():
    tokens, counts = _synthetic_corpus(np.random.default_rng(3), 3000, 30, 32)
    settings = dict(train_subset_size=1024, learn_subset_size=30_000, sample_size=4096, progress=False)
    trained = lemur.train(tokens, counts, epochs=8, hidden_dim=128, final_hidden_dim=512, **settings)
    elm = lemur.train(tokens, counts, epochs=0, final_hidden_dim=512, **settings)
    losses = trained.training_log["losses"]
    assert len(losses) == 8 and trained.training_log["best_epoch"] == int(np.argmin(losses)) + 1
    assert min(losses) < 0.75 * losses[0]
    offsets = np.concatenate([[0], np.cumsum(counts)])
    random = np.random.default_rng(4)
    targets = random.choice(3000, 60, replace=False)
    queries = np.concatenate([tokens[random.integers(offsets[t], offsets[t + 1], 16)] for t in targets])
    query_counts = np.full(60, 16)
    everything = np.tile(np.arange(3000), (60, 1))
    truth = np.argsort(-lemur.maxsim_scores(queries, query_counts, tokens, counts, everything), axis=1)[:, :10]

    def recall(index, candidates):
        found = index.search(queries, query_counts, k=10, candidates=candidates)[0]
        return np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(found, truth)])

    # measured 0.57 / 0.73 / 0.84 for the trained model, 0.55 / 0.72 / 0.84 for ELM
    for candidates in (20, 50, 100):
        assert recall(trained, candidates) >= recall(elm, candidates) - 0.03
    assert recall(trained, 100) >= 0.75

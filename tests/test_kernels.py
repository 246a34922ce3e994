"""The compiled kernels directly: element-wise accuracy, checks, GEMM, variants."""

from __future__ import annotations

import numpy as np
import pytest

import lemur
import reference
from lemur import _dispatch

VARIANTS = _dispatch.runnable_variants()

# Dense grid, large and tiny magnitudes, both signs.
GRID = np.concatenate(
    [
        np.linspace(-30, 30, 600_001),
        np.geomspace(30, 1e30, 2_000),
        -np.geomspace(30, 1e30, 2_000),
        np.geomspace(1e-30, 1e-3, 2_000),
        -np.geomspace(1e-30, 1e-3, 2_000),
        [0.0],
    ]
).astype(np.float32)


@pytest.fixture(params=VARIANTS)
def kernels(request):
    return _dispatch.load_variant(request.param)


@pytest.mark.parametrize("name", list(lemur.ACTIVATIONS))
def test_activation_is_accurate_to_float32_rounding(kernels, name):
    values = GRID.copy()
    kernels.activation_inplace(values, lemur.ACTIVATIONS[name])
    with np.errstate(over="ignore"):
        exact = reference.activation(GRID.astype(np.float64), name)
    assert np.all(np.isfinite(values))
    error = np.abs(values - exact)
    # within about 1.7 ulp of max(1, |x|) everywhere ...
    assert np.max(error / np.maximum(1.0, np.abs(GRID))) < 2e-7
    # ... and relatively accurate near zero, where the values are tiny
    tiny = (np.abs(GRID) < 1e-3) & (np.abs(exact) > 1e-37)
    assert np.max(error[tiny] / np.abs(exact[tiny])) < 2e-7


def test_gelu_is_the_exact_form_not_tanh(kernels):
    # the tanh approximation differs from the erf form by up to ~5e-4 near |x| = 2
    x = np.linspace(-4, 4, 4001, dtype=np.float32)
    exact, approximate = x.copy(), x.copy()
    kernels.activation_inplace(exact, lemur.ACTIVATIONS["gelu"])
    kernels.activation_inplace(approximate, lemur.ACTIVATIONS["gelu-tanh"])
    assert np.max(np.abs(exact - approximate)) > 1e-4
    np.testing.assert_allclose(exact, reference.activation(x, "gelu"), atol=5e-7, rtol=0)


def test_exp_is_accurate(kernels):
    x = np.linspace(-87, 88, 1_000_001, dtype=np.float32)
    values = x.copy()
    kernels.exp_inplace(values)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(values - exact) / exact) < 3e-7


def test_exp_clamps_outside_its_range(kernels):
    values = np.array([-1e30, -1000, -88, 89, 1000, 1e30], dtype=np.float32)
    kernels.exp_inplace(values)
    assert np.all(np.isfinite(values))
    assert np.all(values[:3] < 2e-38) and np.all(values[3:] > 1e38)


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (1000, 5), (70_000, 3)])
def test_first_nonfinite_row(kernels, shape):
    values = np.zeros(shape, dtype=np.float32)
    assert kernels.first_nonfinite_row(values, 2) == -1
    for row in sorted({shape[0] - 1, shape[0] // 2, 0}, reverse=True):
        values[row, -1] = np.nan if row % 2 else np.inf
        assert kernels.first_nonfinite_row(values, 2) == row


def test_first_nonfinite_row_of_empty_array(kernels):
    assert kernels.first_nonfinite_row(np.zeros((0, 4), np.float32), 1) == -1


@pytest.mark.parametrize("shape", [(1, 7, 5), (33, 40, 129), (100, 1000, 64)])
@pytest.mark.parametrize("b_transposed", [True, False])
def test_gemm_matches_numpy(kernels, shape, b_transposed):
    m, n, k = shape
    random = np.random.default_rng(0)
    a = random.standard_normal((m, k), dtype=np.float32)
    b = random.standard_normal((n, k) if b_transposed else (k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    kernels.gemm(a, b, out, b_transposed, 2)
    expected = a.astype(np.float64) @ (b.T if b_transposed else b).astype(np.float64)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-5)


def test_blas_threads_are_restored_after_kernels():
    kernels = _dispatch.kernels
    with kernels.BlasThreads(2):
        a = np.ones((8, 4), np.float32)
        kernels.gemm(a, a, np.empty((8, 8), np.float32), True, 1)
        assert kernels.blas_info()["num_threads"] == 2
    with kernels.BlasThreads(1):
        assert kernels.blas_info()["num_threads"] == 1


def test_dispatch_picks_the_best_runnable_variant():
    assert _dispatch.variant == VARIANTS[0]
    assert "baseline" in VARIANTS


def test_unknown_or_unsupported_variants_are_refused():
    with pytest.raises(ImportError, match="unknown kernel variant 'avx9000'"):
        _dispatch.load_variant("avx9000")

"""Shared fixtures: the original LEMUR's models and outputs (tests/data)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import lemur

DATA = pathlib.Path(__file__).parent / "data"

#: variant -> (model file, activation to pass for fork exports). The fork's
#: exporter fails on ELM models, so the ELM is read from the original's files.
VARIANTS = {
    "mlp1_gelu_d128_h2048": ("model.npz", "gelu"),
    "mlp2_relu_d96_h256": ("model.npz", "relu"),
    "elm_gelu_d128_h512": ("", None),
    "mlp1_silu_d100_h256": ("model.npz", "silu"),
    "mlp1_mish_d64_h256": ("model.npz", "mish"),
}

# Tolerances for float32 results against the original and against float64,
# about 10x the worst differences the fixtures README reports.
FEATURE_TOLERANCE = {"atol": 2e-5, "rtol": 1e-5}


def load_variant(variant: str) -> lemur.Model:
    filename, activation = VARIANTS[variant]
    return lemur.Model.load(DATA / variant / filename, activation=activation)


def golden(variant: str) -> dict[str, np.ndarray]:
    with np.load(DATA / variant / "golden.npz", allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture(params=sorted(VARIANTS))
def variant(request) -> str:
    return request.param


def random_model(
    kind: str,
    activation: str,
    *,
    dims: tuple[int, ...] = (24, 40),
    seed: int = 0,
) -> lemur.Model:
    """A random model whose pre-activations spread over the interesting range."""
    random = np.random.default_rng(seed)
    layers = []
    for input_dim, output_dim in zip(dims[:-1], dims[1:]):
        weight = random.standard_normal((output_dim, input_dim)).astype(np.float32)
        if kind == "elm":
            layers.append(lemur.Layer(weight))
        else:
            weight /= np.sqrt(input_dim)
            layers.append(
                lemur.Layer(
                    weight,
                    random.standard_normal(output_dim).astype(np.float32),
                    (1.0 + 0.5 * random.standard_normal(output_dim)).astype(np.float32),
                    (0.5 * random.standard_normal(output_dim)).astype(np.float32),
                )
            )
    return lemur.Model(layers, kind=kind, activation=activation)


def random_tokens(num_tokens: int, dim: int, seed: int = 1) -> np.ndarray:
    random = np.random.default_rng(seed)
    return random.standard_normal((num_tokens, dim)).astype(np.float32)


#: fesetround's FE_UPWARD in glibc, by machine
_FE_UPWARD = {"x86_64": 0x800, "AMD64": 0x800, "aarch64": 0x400000, "arm64": 0x400000}


@pytest.fixture
def upward_rounding():
    """A context manager that rounds this thread's floating point upwards
    (C's fesetround), and back to nearest after."""
    import contextlib
    import ctypes
    import ctypes.util
    import platform

    name = ctypes.util.find_library("m")
    if name is None or platform.machine() not in _FE_UPWARD:
        pytest.skip("no libm with fesetround on this platform")
    libm = ctypes.CDLL(name)

    @contextlib.contextmanager
    def rounding():
        if libm.fesetround(_FE_UPWARD[platform.machine()]) != 0:
            pytest.skip("fesetround refused FE_UPWARD")
        try:
            yield
        finally:
            libm.fesetround(0)

    return rounding

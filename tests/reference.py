"""Plain float64 NumPy implementations of what lemur computes, for the tests."""

from __future__ import annotations

import math

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def activation(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if name == "gelu-tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    if name == "mish":
        return x * np.tanh(np.logaddexp(0.0, x))
    raise ValueError(name)


def layer_norm(x: np.ndarray, gamma=None, beta=None, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    normed = (x - mean) / np.sqrt(variance + eps)
    if gamma is not None:
        normed = normed * np.asarray(gamma, np.float64) + np.asarray(beta, np.float64)
    return normed


def psi(model, tokens: np.ndarray) -> np.ndarray:
    """Per-token features, float64, from a lemur.Model's weights."""
    h = np.asarray(tokens, dtype=np.float64)
    for layer in model.layers:
        z = h @ np.asarray(layer.weight, np.float64).T
        if model.kind == "elm":
            a = math.sqrt(2.0 / z.shape[1]) * activation(z, model.activation)
            h = layer_norm(a)
        else:
            z = z + np.asarray(layer.bias, np.float64)
            h = activation(layer_norm(z, layer.ln_weight, layer.ln_bias), model.activation)
    return h


def features(model, tokens: np.ndarray, counts=None) -> np.ndarray:
    """Pooled query features, float64: ragged sum / 32, or padded mean over N."""
    if counts is None:
        num_queries, num_padded, dim = tokens.shape
        per_token = psi(model, tokens.reshape(-1, dim))
        return per_token.reshape(num_queries, num_padded, -1).mean(axis=1)
    per_token = psi(model, tokens)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    out = np.zeros((len(counts), per_token.shape[1]))
    for query in range(len(counts)):
        out[query] = per_token[offsets[query] : offsets[query + 1]].sum(axis=0) / 32.0
    return out

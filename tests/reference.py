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


def unfused_score(f: np.ndarray, w: np.ndarray, lanes: int) -> np.float32:
    """lemur's score(f, w) (_tiles.h) exactly, where multiply-adds are not fused
    (two float32 roundings each): lane l sums f[j] w[j] for j = l mod `lanes`
    below the last full vector, in increasing j; the lanes are added pairwise
    (lane i + lane i + width/2, ...); then the remaining elements one by one."""
    f, w = np.asarray(f, np.float32), np.asarray(w, np.float32)
    full = len(f) // lanes * lanes
    partial = np.zeros(lanes, np.float32)
    for j in range(0, full, lanes):
        partial = partial + f[j : j + lanes] * w[j : j + lanes]  # float32: two roundings
    width = lanes // 2
    while width:
        partial[:width] = partial[:width] + partial[width : 2 * width]
        width //= 2
    total = partial[0]
    for j in range(full, len(f)):
        total = np.float32(total + f[j] * w[j])
    return total


def unfused_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """lemur's products (_tiles.h) exactly, where multiply-adds are not fused:
    every element a float32 chain over k = 0, 1, ... from 0."""
    out = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k in range(a.shape[1]):
        out = out + np.outer(a[:, k], b[k]).astype(np.float32)
    return out


def bfloat16(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, magnitudes below 2^-126 to zero: float64 of the
    results (finite values)."""
    bits = values.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    rounded = np.where((bits & 0x7FFFFFFF) < 0x00800000, bits & 0x80000000, rounded)
    return rounded.astype(np.uint32).view(np.float32).astype(np.float64)

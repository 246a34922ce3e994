"""The benchmarks' synthetic workload, written once to .npy files and memory-mapped.

Documents of 16 to 48 tokens (32 on average), d = 128; a one-layer GELU model
with h = 2048; W random. asv's setup_cache writes the files once per run, in
its working folder; each benchmark process maps them.
"""

from __future__ import annotations

import os

import numpy as np

DIM, HIDDEN, QUERY_TOKENS = 128, 2048, 32
NUM_DOCS = (10_000, 100_000)
BATCHES = (1, 100)
THREADS = (1, 2)
PRECISIONS = ("float32", "bfloat16", "int8")
TOKEN_DTYPES = ("float32", "float16")


def _unit(random: np.random.Generator, rows: int) -> np.ndarray:
    out = np.empty((rows, DIM), dtype=np.float32)
    for start in range(0, rows, 1 << 20):
        block = random.standard_normal((min(1 << 20, rows - start), DIM), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def write(folder: str) -> str:
    """Write the model, queries and the corpora of every size into `folder`."""
    import lemur

    os.makedirs(folder, exist_ok=True)
    random = np.random.default_rng(0)
    layer = lemur.Layer(
        random.standard_normal((HIDDEN, DIM), dtype=np.float32) / np.float32(np.sqrt(DIM)),
        random.standard_normal(HIDDEN, dtype=np.float32) * np.float32(0.1),
        1 + random.standard_normal(HIDDEN, dtype=np.float32) * np.float32(0.1),
        random.standard_normal(HIDDEN, dtype=np.float32) * np.float32(0.1),
    )
    lemur.Model([layer]).save(os.path.join(folder, "model.npz"))
    np.save(os.path.join(folder, "queries.npy"), _unit(random, max(BATCHES) * QUERY_TOKENS))
    for num_docs in NUM_DOCS:
        counts = random.integers(16, 49, num_docs)
        np.save(os.path.join(folder, f"counts_{num_docs}.npy"), counts)
        np.save(os.path.join(folder, f"tokens_{num_docs}.npy"), _unit(random, int(counts.sum())))
        np.save(os.path.join(folder, f"W_{num_docs}.npy"),
                random.standard_normal((num_docs, HIDDEN), dtype=np.float32) * np.float32(0.05))
    return folder


def load(folder: str, num_docs: int):
    """The model, (W, doc tokens, doc counts) for num_docs, and all queries."""
    import lemur

    model = lemur.Model.load(os.path.join(folder, "model.npz"))
    W = np.load(os.path.join(folder, f"W_{num_docs}.npy"), mmap_mode="r")
    tokens = np.load(os.path.join(folder, f"tokens_{num_docs}.npy"), mmap_mode="r")
    counts = np.load(os.path.join(folder, f"counts_{num_docs}.npy"))
    queries = np.load(os.path.join(folder, "queries.npy"))
    return model, (W, tokens, counts), queries


def batch(queries: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(queries[: size * QUERY_TOKENS]), np.full(size, QUERY_TOKENS)


def index_file(folder: str, num_docs: int, precision: str, token_dtype: type, ann: bool = False) -> str:
    """A saved index of the num_docs corpus at `precision` with its token store
    as `token_dtype` (and an ANN graph with `ann`), written on first use."""
    import lemur

    name = f"index_{num_docs}_{precision}_{np.dtype(token_dtype).name}{'_ann' if ann else ''}.npz"
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        model, (W, tokens, counts), _ = load(folder, num_docs)
        index = lemur.Index(model, np.ascontiguousarray(W), np.ascontiguousarray(tokens, dtype=token_dtype),
                            counts, precision=precision)
        if ann:
            index.build_ann(progress=False)
        index.save(path)
    return path

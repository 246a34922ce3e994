"""Timings and peak memory of each stage: features, top-k, rerank, search, indexing."""

from __future__ import annotations

import os

import numpy as np

from . import data


def setup_cache():
    return data.write(os.path.abspath("lemur-bench-data"))


class Features:
    params = (data.BATCHES, data.THREADS)
    param_names = ["batch", "threads"]

    def setup(self, folder, batch, threads):
        model, _, queries = data.load(folder, data.NUM_DOCS[0])
        self.model, (self.tokens, self.counts) = model, data.batch(queries, batch)
        self.model.features(self.tokens, self.counts, num_threads=threads)

    def time_features(self, folder, batch, threads):
        self.model.features(self.tokens, self.counts, num_threads=threads)

    def peakmem_features(self, folder, batch, threads):
        self.model.features(self.tokens, self.counts, num_threads=threads)


class _Index:
    """An index at each first-stage precision (the results are the same)."""

    params = (data.NUM_DOCS, data.BATCHES, data.THREADS, data.PRECISIONS)
    param_names = ["num_docs", "batch", "threads", "precision"]

    def setup(self, folder, num_docs, batch, threads, precision):
        import lemur

        model, (W, tokens, counts), queries = data.load(folder, num_docs)
        self.index = lemur.Index(model, W, tokens, counts, precision=precision, num_threads=threads)
        self.tokens, self.counts = data.batch(queries, batch)
        self.features = self.index.features(self.tokens, self.counts, num_threads=threads)
        self.candidates = self.index.top_k(self.features, 100, num_threads=threads)[0]


class TopK(_Index):
    def time_top_k(self, folder, num_docs, batch, threads, precision):
        self.index.top_k(self.features, 100, num_threads=threads)

    def peakmem_top_k(self, folder, num_docs, batch, threads, precision):
        self.index.top_k(self.features, 100, num_threads=threads)


class Search(_Index):
    def time_search(self, folder, num_docs, batch, threads, precision):
        self.index.search(self.tokens, self.counts, k=10, candidates=100, num_threads=threads)

    def peakmem_search(self, folder, num_docs, batch, threads, precision):
        self.index.search(self.tokens, self.counts, k=10, candidates=100, num_threads=threads)


class Rerank:
    """The exact rerank over a float32 and a float16 token store."""

    params = (data.NUM_DOCS, data.BATCHES, data.THREADS, data.TOKEN_DTYPES)
    param_names = ["num_docs", "batch", "threads", "tokens"]

    def setup(self, folder, num_docs, batch, threads, token_dtype):
        import lemur

        model, (W, tokens, counts), queries = data.load(folder, num_docs)
        tokens = np.ascontiguousarray(tokens, dtype=token_dtype)
        self.index = lemur.Index(model, W, tokens, counts, num_threads=threads)
        self.tokens, self.counts = data.batch(queries, batch)
        features = self.index.features(self.tokens, self.counts, num_threads=threads)
        self.candidates = self.index.top_k(features, 100, num_threads=threads)[0]

    def time_rerank(self, folder, num_docs, batch, threads, token_dtype):
        self.index.rerank(self.tokens, self.counts, self.candidates, 10, num_threads=threads)

    def peakmem_rerank(self, folder, num_docs, batch, threads, token_dtype):
        self.index.rerank(self.tokens, self.counts, self.candidates, 10, num_threads=threads)


class Mapped:
    """An int8 index with a float16 token store, opened with mmap=True: the
    opening, and a single-query search (what stays resident: bench/compare.py)."""

    params = (data.NUM_DOCS,)
    param_names = ["num_docs"]
    timeout = 300

    def setup(self, folder, num_docs):
        import lemur

        self.path = data.index_file(folder, num_docs, "int8", np.float16)
        self.index = lemur.load(self.path, mmap=True)
        _, _, queries = data.load(folder, num_docs)
        self.tokens, self.counts = data.batch(queries, 1)

    def time_open(self, folder, num_docs):
        import lemur

        lemur.load(self.path, mmap=True)

    def time_search(self, folder, num_docs):
        self.index.search(self.tokens, self.counts, k=10, candidates=200)


class Indexing:
    """Fitting W for 200 new documents (S = 16,384; its pseudo-inverse computed in setup)."""

    params = (data.THREADS,)
    param_names = ["threads"]
    timeout = 300

    def setup(self, folder, threads):
        import lemur

        model, (_, tokens, counts), _ = data.load(folder, data.NUM_DOCS[0])
        self.index = lemur.Index(model, np.empty((0, model.feature_dim), np.float32))
        self.index.attach_sample(np.ascontiguousarray(tokens[:100_000]), size=16384, seed=0)
        self.new_tokens = np.ascontiguousarray(tokens[: int(counts[:200].sum())])
        self.new_counts = counts[:200]
        self.index.add_documents(self.new_tokens[: counts[0]], counts[:1], progress=False,
                                 num_threads=threads)  # computes and keeps pinv(psi(S))

    def time_add_documents(self, folder, threads):
        self.index.add_documents(self.new_tokens, self.new_counts, progress=False, num_threads=threads)

    def peakmem_add_documents(self, folder, threads):
        self.index.add_documents(self.new_tokens, self.new_counts, progress=False, num_threads=threads)


class Ann:
    """The embedded ANN first stage (usearch; build_ann's defaults): top-100,
    and search with 100 candidates; skipped without usearch."""

    params = (data.NUM_DOCS, data.BATCHES)
    param_names = ["num_docs", "batch"]
    timeout = 600

    def setup(self, folder, num_docs, batch):
        import lemur

        try:
            import usearch  # noqa: F401
        except ImportError:
            raise NotImplementedError("usearch is not installed") from None
        path = data.index_file(folder, num_docs, "float32", np.float16, ann=True)
        self.index = lemur.load(path, mmap=True)
        _, _, queries = data.load(folder, num_docs)
        self.tokens, self.counts = data.batch(queries, batch)
        self.features = self.index.features(self.tokens, self.counts)

    def time_top_k(self, folder, num_docs, batch):
        self.index.top_k(self.features, 100)

    def time_search(self, folder, num_docs, batch):
        self.index.search(self.tokens, self.counts, k=10, candidates=100)

"""Drop-in replacement for the original LEMUR's ``lemur.maxsim.MaxSim``.

``MaxSim(train, train_counts).rerank_subset(queries, query_counts, k, indices)``
returns what the original's C++ extension returns: int32 ``(num_queries, k)``
document ids, best exact MaxSim first (ties: smaller id), padded with -1 where
fewer than k candidates exist; a query with 0 tokens returns its first k
candidates unchanged. Unlike the original it checks its input: a candidate id
outside ``[0, num_docs)`` other than -1 (padding, skipped) raises ValueError
instead of reading arbitrary memory, and it keeps references to the arrays it
reads later, so they cannot be freed under it.
"""

from __future__ import annotations

import numpy as np

from lemur._threads import resolve_num_threads
from lemur.documents import Documents
from lemur.retrieval import check_candidates, check_k, check_queries, rerank_unchecked

__all__ = ["MaxSim"]


def _threads(num_threads: int) -> int:
    """The original's convention: -1 means all cores (here: lemur's default)."""
    return resolve_num_threads(None if num_threads == -1 else num_threads)


class MaxSim:
    """Exact MaxSim reranking over a fixed set of documents.

    Parameters
    ----------
    train : array-like, shape (num_train_tokens, dim)
        The documents' token vectors, one document after the other: a
        float16 array is kept as it is (MaxSim widens its values in
        registers), anything else cast to float32 and kept.
    train_counts : array-like of int, shape (num_docs,)
        Tokens per document, each at least 1.
    """

    def __init__(self, train: object, train_counts: object) -> None:
        half = isinstance(train, np.ndarray) and train.dtype == np.float16
        self._documents = Documents.check(
            np.ascontiguousarray(train, dtype=np.float16 if half else np.float32),
            train_counts,
            name="train",
            counts_name="train_counts",
        )

    def rerank_subset(
        self,
        queries: object,
        query_counts: object,
        k: int,
        indices: object,
        num_threads: int = -1,
    ) -> np.ndarray:
        """The k best of each query's candidate documents by exact MaxSim.

        Parameters
        ----------
        queries : array-like, shape (num_query_tokens, dim) (or flattened)
        query_counts : array-like of int, shape (num_queries,)
        k : int
        indices : array-like of int, shape (num_queries, num_candidates)
            Candidate document ids; -1 marks padding.
        num_threads : int, default -1 (all cores, or OMP_NUM_THREADS)

        Returns
        -------
        ndarray of int32, shape (num_queries, k), k clamped to the larger of
        the number of documents and of candidates per query
        """
        threads = _threads(num_threads)
        documents = self._documents
        tokens = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, documents.dim)
        tokens, offsets = check_queries(
            tokens, query_counts, dim=documents.dim, dim_name="train's dimension",
            num_threads=threads,
        )
        candidates = check_candidates(
            indices, num_queries=offsets.size - 1, num_docs=documents.num_docs, name="indices"
        )
        found, _ = rerank_unchecked(tokens, offsets, documents, candidates,
                                    check_k(k, at_most=max(documents.num_docs, candidates.shape[1])),
                                    threads)
        return found.astype(np.int32)

    def rerank_subset_fixed(
        self, queries: object, k: int, indices: object, num_threads: int = -1
    ) -> np.ndarray:
        """:meth:`rerank_subset` for queries of equal length, shape
        ``(num_queries, query_vec_count, dim)``."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 3:
            raise ValueError(
                "queries must be 3-D (num_queries, query_vec_count, dim), "
                f"got an array of shape {queries.shape}"
            )
        counts = np.full(queries.shape[0], queries.shape[1], dtype=np.int64)
        return self.rerank_subset(queries.reshape(-1, queries.shape[2]), counts, k, indices, num_threads)

"""The documents' token store, and exact MaxSim over it.

:class:`Documents` holds the token vectors of every document, one after the
other, and where each document starts; :func:`maxsim_unchecked` scores
queries against candidate documents on the kernels. The rerank
(:mod:`lemur.retrieval`) and its screen (:mod:`lemur.screening`) both score
through it.
"""

from __future__ import annotations

import numpy as np

from lemur._dispatch import kernels
from lemur._validation import check_vectors, counts_to_offsets, kernel_values


class Documents:
    """Document token vectors, ``tokens`` (total, d), and per-document
    ``offsets`` (num_docs + 1); built by :meth:`check`, or directly from arrays
    already checked."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens, self.offsets = tokens, offsets

    @classmethod
    def check(
        cls,
        tokens: np.ndarray,
        counts: object,
        *,
        name: str = "doc_tokens",
        counts_name: str = "doc_counts",
        dim: int | None = None,
        allow_empty: bool = False,
        num_threads: int | None = None,
    ) -> Documents:
        """Check tokens (float32 or float16, C order, finite, `dim` columns)
        and counts (each at least 1, summing to the rows)."""
        tokens = check_vectors(tokens, name=name, dim=dim, num_threads=num_threads, half=True)
        offsets = counts_to_offsets(
            counts, name=counts_name, total=tokens.shape[0], total_name=name, allow_empty=allow_empty
        )
        empty = np.flatnonzero(offsets[1:] == offsets[:-1])
        if empty.size:
            raise ValueError(
                f"{counts_name}[{int(empty[0])}] = 0: every document needs at least one token"
            )
        offsets.flags.writeable = False
        return cls(tokens, offsets)

    @property
    def num_docs(self) -> int:
        return self.offsets.size - 1

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def kernel_tokens(self) -> np.ndarray:
        """The tokens as the kernels take them: float32, or float16 as its bits."""
        return kernel_values(self.tokens)

    def subset(self, keep: np.ndarray) -> Documents:
        """The documents where `keep` (bool, (num_docs,)) is True, in their order,
        with copies of their tokens."""
        counts = self.counts
        tokens = np.ascontiguousarray(self.tokens[np.repeat(keep, counts)])
        return Documents(tokens, np.concatenate([[0], np.cumsum(counts[keep])]).astype(np.int64))


def maxsim_unchecked(
    query_tokens: np.ndarray,
    query_offsets: np.ndarray,
    documents: Documents,
    candidates: np.ndarray,
    num_threads: int,
) -> np.ndarray:
    """:func:`lemur.maxsim_scores` on validated arguments (float32 scores,
    -inf for the padding -1)."""
    out = np.empty(candidates.shape, dtype=np.float32)
    kernels.maxsim_scores(
        query_tokens, query_offsets, documents.kernel_tokens, documents.offsets, candidates, out, num_threads
    )
    return out

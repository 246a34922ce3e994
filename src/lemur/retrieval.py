"""First-stage top-k over W, exact MaxSim and rerank, as plain functions.

These validate every argument on every call (including a full finiteness
check of W and of the document tokens). For repeated searches over the same
documents, use :class:`lemur.Index`, which checks them once.
"""

from __future__ import annotations

import numpy as np

from lemur import screening
from lemur._dispatch import kernels
from lemur._scratch import aligned
from lemur._threads import resolve_num_threads
from lemur._validation import (
    check_integer_array,
    check_positive_int,
    check_vectors,
    counts_to_offsets,
)
from lemur.documents import Documents, maxsim_unchecked

#: Memory the first stage may use for its score blocks and thread-local k-best
#: lists together (the full num_queries x num_docs matrix is never held).
TOP_K_BUDGET_BYTES = 32 * 2**20


def check_W(W: object, *, name: str = "W", dim: int | None = None, num_threads: int | None = None) -> np.ndarray:
    """Check a document matrix: float32, (num_docs >= 1, h), C-contiguous, finite."""
    W = check_vectors(W, name=name, dim=dim, dim_name="the feature dimension", num_threads=num_threads)
    if W.shape[0] == 0:
        raise ValueError(f"{name} has no rows: there must be at least one document")
    return W


def check_k(k: object, *, at_most: int, name: str = "k") -> int:
    """A positive int, clamped to `at_most` (the number of documents, or of
    candidates): asking for more results than can exist gives all of them,
    and allocates nothing for the rest."""
    return min(check_positive_int(k, name=name), max(at_most, 1))


def check_features(
    features: object, *, dim: int, dim_name: str, num_threads: int
) -> np.ndarray:
    """Check a batch of query features: float32, (num_queries >= 1, dim), C order, finite."""
    features = check_vectors(
        features, name="features", dim=dim, dim_name=dim_name, num_threads=num_threads
    )
    if features.shape[0] == 0:
        raise ValueError("features has no rows: the batch must hold at least one query")
    return features


def check_candidate_ids(candidates: object, *, num_queries: int, name: str = "candidates") -> np.ndarray:
    """Check the shape of candidate ids: ints, (num_queries, c); return them as int64."""
    candidates = check_integer_array(candidates, name=name, ndim=2)
    if candidates.shape[0] != num_queries:
        raise ValueError(
            f"{name} has {candidates.shape[0]} rows, but there are {num_queries} queries"
        )
    return candidates


def check_candidates(
    candidates: object, *, num_queries: int, num_docs: int, name: str = "candidates"
) -> np.ndarray:
    """Check candidate document ids: ints, (num_queries, c), each in [0, num_docs) or -1."""
    candidates = check_candidate_ids(candidates, num_queries=num_queries, name=name)
    bad = np.argwhere((candidates < -1) | (candidates >= num_docs))
    if bad.size:
        row, column = (int(i) for i in bad[0])
        raise ValueError(
            f"{name}[{row}, {column}] = {candidates[row, column]} is not a document id: "
            f"ids go from 0 to {num_docs - 1}, and -1 marks padding"
        )
    return np.ascontiguousarray(candidates)


def scores_unchecked(features: np.ndarray, W: np.ndarray, num_threads: int) -> np.ndarray:
    """:func:`scores` on validated arguments."""
    out = np.empty((features.shape[0], W.shape[0]), dtype=np.float32)
    kernels.score_matrix(aligned(features), W, out, num_threads)
    return out


def top_k_unchecked(
    features: np.ndarray, W: np.ndarray, k: int, num_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` on validated arguments."""
    num_queries, num_docs = features.shape[0], W.shape[0]
    if k >= num_docs:
        scores = scores_unchecked(features, W, num_threads)
        order = np.argsort(-scores, axis=1, kind="stable")  # ties: smaller index first
        return order.astype(np.int64, copy=False), np.take_along_axis(scores, order, axis=1)
    indices = np.empty((num_queries, k), dtype=np.int64)
    scores = np.empty((num_queries, k), dtype=np.float32)
    kernels.top_k_inner_products(aligned(features), W, k, indices, scores, num_threads,
                                 TOP_K_BUDGET_BYTES)
    return indices, scores


def rerank_unchecked(
    query_tokens: np.ndarray,
    query_offsets: np.ndarray,
    documents: Documents,
    candidates: np.ndarray,
    k: int,
    num_threads: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rerank` on validated arguments: where the CPU has a screen
    (AMX tiles, AMD's AVX512_BF16) and there are many candidates per result,
    only those the screen (:mod:`lemur.screening`) cannot rule out are
    scored exactly."""
    if screening.applies(candidates.shape[0], candidates.shape[1], k):
        candidates, exact = screening.screened_scores(query_tokens, query_offsets, documents, candidates, k,
                                                      num_threads)
    else:
        exact = maxsim_unchecked(query_tokens, query_offsets, documents, candidates, num_threads)
    indices = np.empty((candidates.shape[0], k), dtype=np.int64)
    scores = np.empty((candidates.shape[0], k), dtype=np.float32)
    kernels.select_reranked(exact, candidates, query_offsets, k, indices, scores, num_threads)
    return indices, scores


def check_queries(
    query_tokens: object, query_counts: object, *, dim: int, dim_name: str, num_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check a ragged batch of query tokens; return (tokens, offsets)."""
    tokens = check_vectors(
        query_tokens, name="query_tokens", dim=dim, dim_name=dim_name, num_threads=num_threads
    )
    offsets = counts_to_offsets(
        query_counts, name="query_counts", total=tokens.shape[0], total_name="query_tokens"
    )
    return tokens, offsets


def scores(features: np.ndarray, W: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
    """Approximate MaxSim scores of every query with every document: ``features @ W.T``.

    Parameters
    ----------
    features : ndarray of float32, shape (num_queries, h)
    W : ndarray of float32, shape (num_docs, h)
    num_threads : int, optional

    Returns
    -------
    ndarray of float32, shape (num_queries, num_docs)
    """
    threads = resolve_num_threads(num_threads)
    W = check_W(W, num_threads=threads)
    features = check_vectors(
        features, name="features", dim=W.shape[1], dim_name="W's width (h)", num_threads=threads
    )
    return scores_unchecked(features, W, threads)


def top_k(
    features: np.ndarray, W: np.ndarray, k: int, *, num_threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` documents with the largest inner product with each query's features.

    Scores are computed block by block with the selection fused in, so memory
    stays bounded (:data:`TOP_K_BUDGET_BYTES`) whatever the number of queries
    and documents.

    Parameters
    ----------
    features : ndarray of float32, shape (num_queries, h)
    W : ndarray of float32, shape (num_docs, h)
    k : int
        At least 1. With ``k >= num_docs`` every document is returned, sorted
        (nothing is allocated for the rest).
    num_threads : int, optional

    Returns
    -------
    indices : ndarray of int64, shape (num_queries, min(k, num_docs))
    scores : ndarray of float32, same shape
        Sorted by score, largest first; equal scores by smaller index.
    """
    threads = resolve_num_threads(num_threads)
    W = check_W(W, num_threads=threads)
    k = check_k(k, at_most=W.shape[0])
    features = check_features(features, dim=W.shape[1], dim_name="W's width (h)", num_threads=threads)
    return top_k_unchecked(features, W, k, threads)


def maxsim_scores(
    query_tokens: np.ndarray,
    query_counts: object,
    doc_tokens: np.ndarray,
    doc_counts: object,
    candidates: object,
    *,
    num_threads: int | None = None,
) -> np.ndarray:
    """Exact MaxSim of each query with each of its candidate documents.

    ``MaxSim(Q, D) = sum over q in Q of max over d in D of <q, d>``.

    Parameters
    ----------
    query_tokens : ndarray of float32, shape (num_query_tokens, d)
    query_counts : array-like of int, shape (num_queries,)
        Tokens per query (0 allowed: its scores are 0).
    doc_tokens : ndarray of float32 or float16, shape (num_doc_tokens, d)
        float16 values are widened in registers: the scores equal float32's
        on the widened tokens.
    doc_counts : array-like of int, shape (num_docs,)
        Tokens per document, each at least 1.
    candidates : array-like of int, shape (num_queries, num_candidates)
        Document ids, or -1 for padding. Any other id outside
        ``[0, num_docs)`` is an error.
    num_threads : int, optional

    Returns
    -------
    ndarray of float32, shape (num_queries, num_candidates)
        ``-inf`` where the candidate is -1.
    """
    threads = resolve_num_threads(num_threads)
    return maxsim_unchecked(
        *_check_maxsim_arguments(query_tokens, query_counts, doc_tokens, doc_counts, candidates, threads),
        threads,
    )


def rerank(
    query_tokens: np.ndarray,
    query_counts: object,
    doc_tokens: np.ndarray,
    doc_counts: object,
    candidates: object,
    k: int,
    *,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best candidates of each query by exact MaxSim.

    Parameters are those of :func:`maxsim_scores`, and `k` (at least 1;
    more than both the documents and the candidates per query counts as the
    larger of the two).

    Returns
    -------
    indices : ndarray of int64, shape (num_queries, k)
    scores : ndarray of float32, same shape
        Best first; equal scores by smaller document id. Rows with fewer than
        `k` valid (not -1) candidates are padded with -1 and -inf. A query
        with no tokens keeps its first `k` candidates in their given order
        (scores 0), as the original LEMUR does.
    """
    threads = resolve_num_threads(num_threads)
    tokens, offsets, documents, candidates = _check_maxsim_arguments(
        query_tokens, query_counts, doc_tokens, doc_counts, candidates, threads)
    return rerank_unchecked(tokens, offsets, documents, candidates,
                            check_k(k, at_most=max(documents.num_docs, candidates.shape[1])), threads)


def _check_maxsim_arguments(
    query_tokens: object,
    query_counts: object,
    doc_tokens: object,
    doc_counts: object,
    candidates: object,
    num_threads: int,
) -> tuple[np.ndarray, np.ndarray, Documents, np.ndarray]:
    """(query tokens, query offsets, documents, candidates), all checked."""
    documents = Documents.check(doc_tokens, doc_counts, num_threads=num_threads)
    tokens, offsets = check_queries(
        query_tokens, query_counts, dim=documents.dim, dim_name="doc_tokens' dimension",
        num_threads=num_threads,
    )
    candidates = check_candidates(
        candidates, num_queries=offsets.size - 1, num_docs=documents.num_docs
    )
    return tokens, offsets, documents, candidates

"""lemur.Index: a model, its document matrix W and, optionally, the documents'
token vectors; the whole LEMUR search pipeline on top of them."""

from __future__ import annotations

import os

import numpy as np

from lemur import npz
from lemur._threads import resolve_num_threads
from lemur._validation import check_vectors
from lemur.model import RAGGED_POOL_DIVISOR, Model
from lemur.retrieval import (
    Documents,
    check_candidates,
    check_k,
    check_queries,
    check_W,
    maxsim_unchecked,
    rerank_unchecked,
    top_k_unchecked,
)


class Index:
    """A LEMUR index: search = features -> top candidates over W -> exact MaxSim rerank.

    Parameters
    ----------
    model : Model
        The feature map psi.
    W : ndarray of float32, shape (num_docs, feature_dim)
        One row per document.
    doc_tokens : ndarray of float32, shape (num_doc_tokens, input_dim), optional
        The documents' token vectors, one document after the other; needed for
        the exact rerank.
    doc_counts : array-like of int, shape (num_docs,), optional
        Tokens per document (each at least 1); with `doc_tokens`.
    num_threads : int, optional
        Threads for the one-time checks of the arrays.

    Notes
    -----
    Every array is checked once, here (dtype, shape, C order, finiteness,
    counts), and the index keeps references to the checked arrays (the counts
    become its own offsets). Do not modify W or `doc_tokens` afterwards: pass
    copies if the originals will change.
    """

    def __init__(
        self,
        model: Model,
        W: np.ndarray,
        doc_tokens: np.ndarray | None = None,
        doc_counts: object = None,
        *,
        num_threads: int | None = None,
    ) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lemur.Model, got {type(model).__name__}")
        threads = resolve_num_threads(num_threads)
        self._model = model
        self._W = check_W(W, dim=model.feature_dim, num_threads=threads)
        if (doc_tokens is None) != (doc_counts is None):
            raise ValueError("pass doc_tokens and doc_counts together, or neither")
        self._documents: Documents | None = None
        if doc_tokens is not None:
            documents = Documents(doc_tokens, doc_counts, num_threads=threads)
            if documents.dim != model.input_dim:
                raise ValueError(
                    f"doc_tokens holds vectors of dimension {documents.dim}, but the model's "
                    f"input dimension is {model.input_dim}"
                )
            if documents.num_docs != self._W.shape[0]:
                raise ValueError(
                    f"doc_counts describes {documents.num_docs} documents, but W has "
                    f"{self._W.shape[0]} rows"
                )
            self._documents = documents

    # -- description -------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model

    @property
    def W(self) -> np.ndarray:
        """The document matrix, ``(num_docs, feature_dim)`` float32."""
        return self._W

    @property
    def num_docs(self) -> int:
        return int(self._W.shape[0])

    @property
    def has_documents(self) -> bool:
        """Whether the index holds the documents' tokens (needed to rerank)."""
        return self._documents is not None

    @property
    def doc_tokens(self) -> np.ndarray | None:
        return None if self._documents is None else self._documents.tokens

    @property
    def doc_counts(self) -> np.ndarray | None:
        return None if self._documents is None else self._documents.counts

    @property
    def nbytes(self) -> int:
        """Bytes held by the model, W and the token store."""
        tokens = 0 if self._documents is None else self._documents.tokens.nbytes
        return self._model.nbytes + self._W.nbytes + tokens

    def __repr__(self) -> str:
        tokens = (
            f", doc_tokens={self._documents.tokens.shape[0]}x{self._documents.dim}"
            if self._documents is not None
            else ""
        )
        return f"Index({self._model!r}, num_docs={self.num_docs}{tokens})"

    def _require_documents(self, what: str) -> Documents:
        if self._documents is None:
            raise ValueError(
                f"{what} needs the documents' token vectors: build the index with "
                "doc_tokens and doc_counts"
            )
        return self._documents

    # -- the pipeline, stage by stage ---------------------------------------

    def features(
        self, query_tokens: np.ndarray, query_counts: object = None, *, num_threads: int | None = None
    ) -> np.ndarray:
        """Query features; see :meth:`Model.features`."""
        return self._model.features(query_tokens, query_counts, num_threads=num_threads)

    def scores(self, features: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
        """Approximate scores with every document, ``features @ W.T``: (num_queries, num_docs)."""
        from lemur._dispatch import kernels

        threads = resolve_num_threads(num_threads)
        features = self._check_features(features, threads)
        out = np.empty((features.shape[0], self.num_docs), dtype=np.float32)
        kernels.gemm_nt(features, self._W, out, threads)
        return out

    def top_k(
        self, features: np.ndarray, k: int, *, num_threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` documents with the largest approximate score for each query.

        See :func:`lemur.top_k`: int64 ids and float32 scores, shape
        ``(num_queries, min(k, num_docs))``, best first, ties by smaller id;
        memory stays bounded whatever the number of queries and documents.
        """
        threads = resolve_num_threads(num_threads)
        k = check_k(k)
        return top_k_unchecked(self._check_features(features, threads), self._W, k, threads)

    def maxsim_scores(
        self,
        query_tokens: np.ndarray,
        query_counts: object,
        candidates: object,
        *,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Exact MaxSim of each query with each candidate (-1: padding, -inf).

        See :func:`lemur.maxsim_scores`.
        """
        documents = self._require_documents("maxsim_scores")
        threads = resolve_num_threads(num_threads)
        tokens, offsets = self._check_queries(query_tokens, query_counts, threads)
        candidates = check_candidates(candidates, num_queries=offsets.size - 1, num_docs=self.num_docs)
        return maxsim_unchecked(tokens, offsets, documents, candidates, threads)

    def rerank(
        self,
        query_tokens: np.ndarray,
        query_counts: object,
        candidates: object,
        k: int = 10,
        *,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best candidates of each query by exact MaxSim.

        See :func:`lemur.rerank`: int64 ids and float32 scores, ``(num_queries,
        k)``, padded with -1/-inf; a query without tokens keeps its first `k`
        candidates.
        """
        documents = self._require_documents("rerank")
        threads = resolve_num_threads(num_threads)
        k = check_k(k)
        tokens, offsets = self._check_queries(query_tokens, query_counts, threads)
        candidates = check_candidates(candidates, num_queries=offsets.size - 1, num_docs=self.num_docs)
        return rerank_unchecked(tokens, offsets, documents, candidates, k, threads)

    def search(
        self,
        query_tokens: np.ndarray,
        query_counts: object,
        k: int = 10,
        candidates: int = 100,
        *,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The whole pipeline: the `k` best documents of each query.

        Query features, then the `candidates` documents with the largest
        approximate score, then exact MaxSim over those, keeping `k`.

        Parameters
        ----------
        query_tokens : ndarray of float32, shape (num_query_tokens, input_dim)
            The token vectors of all queries, one after the other.
        query_counts : array-like of int, shape (num_queries,)
        k : int, default 10
        candidates : int, default 100
            Candidates per query for the exact rerank; at least `k`. Without
            document tokens in the index there is no rerank, and the first
            stage's top `k` (approximate scores) is returned.
        num_threads : int, optional

        Returns
        -------
        indices : ndarray of int64, shape (num_queries, k)
        scores : ndarray of float32, shape (num_queries, k)
            Best first, padded with -1/-inf when fewer than `k` documents exist.
        """
        threads = resolve_num_threads(num_threads)
        k = check_k(k)
        candidates = check_k(candidates, name="candidates")
        if candidates < k:
            raise ValueError(f"candidates ({candidates}) must be >= k ({k})")
        tokens, offsets = self._check_queries(query_tokens, query_counts, threads)
        features = self._model._pooled(tokens, offsets, RAGGED_POOL_DIVISOR, threads)
        if self._documents is None:
            found, scores = top_k_unchecked(features, self._W, k, threads)
            return _pad(found, scores, k)
        found, _ = top_k_unchecked(features, self._W, candidates, threads)
        return rerank_unchecked(tokens, offsets, self._documents, found, k, threads)

    def _check_features(self, features: np.ndarray, num_threads: int) -> np.ndarray:
        features = check_vectors(
            features,
            name="features",
            dim=self._model.feature_dim,
            dim_name="the model's feature dimension",
            num_threads=num_threads,
        )
        if features.shape[0] == 0:
            raise ValueError("features has no rows: the batch must hold at least one query")
        return features

    def _check_queries(
        self, query_tokens: np.ndarray, query_counts: object, num_threads: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return check_queries(
            query_tokens,
            query_counts,
            dim=self._model.input_dim,
            dim_name="the model's input dimension",
            num_threads=num_threads,
        )

    # -- files -------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index (model, W, token store if any) to `path` in lemur's
        ``.npz`` format, atomically (see :mod:`lemur.npz`)."""
        npz.save(
            path,
            model=self._model,
            W=self._W,
            doc_tokens=None if self._documents is None else self._documents.tokens,
            doc_counts=None if self._documents is None else self._documents.counts,
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        activation: str | None = None,
        num_threads: int | None = None,
    ) -> Index:
        """Read an index from any file :func:`lemur.load` reads: a lemur
        ``.npz``, a LEMUR-NumPy export, or an original LEMUR index directory.

        The arrays are read once, into memory of their own (no second copy).
        `activation` is for exports, which do not record it (default "gelu").
        """
        from lemur import files

        contents = files.read(path, activation=activation)
        if contents.W is None:
            raise ValueError(f"{os.fspath(path)}: holds a model but no W; it is not an index")
        return cls(
            contents.model,
            contents.W,
            contents.doc_tokens,
            contents.doc_counts,
            num_threads=num_threads,
        )


def _pad(indices: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a first-stage result with fewer than k columns to k (-1, -inf)."""
    missing = k - indices.shape[1]
    if missing <= 0:
        return indices, scores
    return (
        np.pad(indices, ((0, 0), (0, missing)), constant_values=-1),
        np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf),
    )

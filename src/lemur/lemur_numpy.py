"""Drop-in replacement for the LEMUR-NumPy (Numba) fork's ``lemur.lemur_numpy``.

``from lemur.lemur_numpy import LemurNumPy`` keeps working, with the fork's
methods and attributes, on lemur's compiled kernels. Differences, all on
purpose:

* GELU is the exact erf form, as the model was trained; the fork uses the tanh
  approximation (about 4e-4 off in features). Pass ``activation="gelu-tanh"``
  to reproduce the fork's numbers.
* Every layer of a multi-layer export is used (the fork reads only layer 0).
* Files are read with ``allow_pickle=False``; bad input raises a clear error.
"""

from __future__ import annotations

import os

import numpy as np

from lemur import formats, retrieval
from lemur._threads import resolve_num_threads
from lemur._validation import check_vectors
from lemur.first_stage import compact
from lemur.index import Index
from lemur.model import Layer, Model, check_activation
from lemur.retrieval import check_k

__all__ = ["LemurNumPy", "create_synthetic_model"]


class LemurNumPy:
    """NumPy-only LEMUR for CPU inference (the fork's interface).

    Parameters
    ----------
    activation : str, default "gelu"
        Activation of the MLP. "gelu" is the exact erf form (PyTorch's
        ``nn.GELU()``, what the original trains with), unlike the fork, which
        always uses the tanh approximation; "gelu-tanh" reproduces the fork.
    num_threads : int, optional
        Threads for every computation; default ``OMP_NUM_THREADS`` if set,
        else all cores.
    precision : {"float32", "bfloat16", "int8"}, default "float32"
        How :meth:`top_k` scans W_out: "bfloat16" and "int8" keep a compact
        copy of it (made once per W_out) and return bitwise the float32
        results, faster (see :class:`lemur.Index`).

    Attributes
    ----------
    W_proj, b_proj, ln_w, ln_b : ndarray or None
        Layer 0 of the MLP: Linear weight ``(hidden_dim, embed_dim)`` and bias,
        LayerNorm weight and bias. Replace them (do not modify them in place) to
        change the model.
    W_out : ndarray or None
        The document matrix, ``(num_docs, hidden_dim)``.
    hidden_dim, embed_dim : int
        Feature dimension h and token dimension d.
    """

    def __init__(self, activation: str = "gelu", num_threads: int | None = None,
                 precision: str = "float32") -> None:
        self.W_proj: np.ndarray | None = None
        self.b_proj: np.ndarray | None = None
        self.ln_w: np.ndarray | None = None
        self.ln_b: np.ndarray | None = None
        self.W_out: np.ndarray | None = None
        self.hidden_dim: int = 0
        self.embed_dim: int = 0
        self.activation = check_activation(activation)
        self.num_threads = resolve_num_threads(num_threads) if num_threads is not None else None
        self._deeper_layers: tuple[Layer, ...] = ()
        self._W_source: object = None
        self._W: np.ndarray | None = None
        self._model: Model | None = None
        self._model_parts: tuple[object, ...] = ()
        self.precision = compact.check_precision(precision)
        self._first_stage: tuple[object, object, str, Index] | None = None

    def load_npz(self, path: str | os.PathLike[str], activation: str | None = None) -> LemurNumPy:
        """Load a model from a fork export (or a lemur ``.npz`` with W).

        Parameters
        ----------
        path : path-like
        activation : str, optional
            The activation the model was trained with, for files that do not
            record it (fork exports); default: this object's `activation`.
        """
        path = os.fspath(path)
        if formats.detect(path) not in ("lemur", "lemur-numpy"):
            raise ValueError(f"{path}: not an .npz (lemur's or a LEMUR-NumPy export); open other "
                             "formats with lemur.load")
        record = formats.read(path)
        if record.W is None:
            raise ValueError(f"{path}: missing key 'W' (the document matrix)")
        if record.kind != "mlp":
            raise ValueError(
                f"{path} holds an ELM model; LemurNumPy supports MLP models only "
                "(use lemur.Model for ELM models)"
            )
        model = formats.model_of(record, path=path,
                                 activation=activation or (None if record.activation else self.activation))
        first = model.layers[0]
        self.W_proj, self.b_proj, self.ln_w, self.ln_b = first
        self._deeper_layers = model.layers[1:]
        self.W_out = record.W
        self.activation = model.activation
        self.hidden_dim = model.feature_dim
        self.embed_dim = model.input_dim
        self._model = model
        self._model_parts = self._parts()
        return self

    def _parts(self) -> tuple[object, ...]:
        return (self.W_proj, self.b_proj, self.ln_w, self.ln_b, self._deeper_layers, self.activation)

    def _current_model(self) -> Model:
        """The Model for the current attributes, rebuilt when one was replaced."""
        parts = self._parts()
        if self._model is not None and all(a is b for a, b in zip(parts, self._model_parts)):
            return self._model
        if any(part is None for part in parts[:4]):
            raise ValueError(
                "no model loaded: call load_npz() first, or set W_proj, b_proj, ln_w and ln_b"
            )
        self._model = Model(
            [Layer(*parts[:4]), *self._deeper_layers],  # type: ignore[arg-type]
            activation=self.activation,
        )
        self._model_parts = parts
        return self._model

    def compute_features(self, embeddings: np.ndarray, counts: object) -> np.ndarray:
        """Pooled features of a ragged batch of queries.

        Parameters
        ----------
        embeddings : array-like, shape (total_tokens, embed_dim)
            Token vectors of all queries, one after the other (cast to float32).
        counts : array-like of int, shape (num_queries,)
            Tokens per query.

        Returns
        -------
        ndarray of float32, shape (num_queries, hidden_dim)
            Sum of psi over each query's tokens, divided by 32.
        """
        model = self._current_model()
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        return model.features(embeddings, counts, num_threads=self.num_threads)

    def approximate_scores(self, query_features: np.ndarray) -> np.ndarray:
        """Approximate MaxSim scores against every document.

        Parameters
        ----------
        query_features : array-like, shape (num_queries, hidden_dim)

        Returns
        -------
        ndarray of float32, shape (num_queries, num_docs)
            ``query_features @ W_out.T``.
        """
        W = self._checked_W()
        features = self._checked_features(query_features, W)
        return retrieval.scores_unchecked(features, W, resolve_num_threads(self.num_threads))

    def top_k(self, query_features: np.ndarray, k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """The k documents with the largest approximate score per query.

        Parameters
        ----------
        query_features : array-like, shape (num_queries, hidden_dim)
        k : int, default 100

        Returns
        -------
        indices : ndarray of int64, shape (num_queries, min(k, num_docs))
        scores : ndarray of float32, same shape
            Largest score first; equal scores by smaller index (the fork leaves
            their order arbitrary). Scores are never held for all documents
            at once, unlike the fork's.
        """
        W = self._checked_W()
        features = self._checked_features(query_features, W)
        threads = resolve_num_threads(self.num_threads)
        k = check_k(k, at_most=W.shape[0])
        if self.precision == "float32":
            return retrieval.top_k_unchecked(features, W, k, threads)
        return self._compact_index(W, threads).top_k(features, k, num_threads=threads)

    def _compact_index(self, W: np.ndarray, num_threads: int) -> Index:
        """An Index over W at this object's precision, kept while W_out, the
        model and the precision stay the same."""
        model = self._current_model()
        kept = self._first_stage
        if kept is None or kept[0] is not W or kept[1] is not model or kept[2] != self.precision:
            index = Index(model, W, precision=compact.check_precision(self.precision), num_threads=num_threads)
            self._first_stage = kept = (W, model, self.precision, index)
        return kept[3]

    def exact_maxsim(
        self,
        query_embeddings: np.ndarray,
        query_counts: object,
        doc_embeddings: np.ndarray,
        doc_counts: object,
        candidate_indices: object,
    ) -> np.ndarray:
        """Exact MaxSim of each query with each of its candidates.

        Parameters
        ----------
        query_embeddings : array-like, shape (num_query_tokens, embed_dim)
        query_counts : array-like of int, shape (num_queries,)
        doc_embeddings : array-like, shape (num_doc_tokens, embed_dim)
        doc_counts : array-like of int, shape (num_docs,)
        candidate_indices : array-like of int, shape (num_queries, k)

        Returns
        -------
        ndarray of float32, shape (num_queries, k)
            Unlike the fork, a candidate id of -1 is padding (score -inf) and
            any other id outside the documents raises ValueError.
        """
        return retrieval.maxsim_scores(
            np.ascontiguousarray(query_embeddings, dtype=np.float32),
            query_counts,
            np.ascontiguousarray(doc_embeddings, dtype=np.float32),
            doc_counts,
            candidate_indices,
            num_threads=self.num_threads,
        )

    def _checked_W(self) -> np.ndarray:
        """W_out as float32, checked once per array assigned to W_out."""
        if self.W_out is None:
            raise ValueError("no document matrix: call load_npz() first, or set W_out")
        if self.W_out is not self._W_source:
            self._W = retrieval.check_W(
                np.ascontiguousarray(self.W_out, dtype=np.float32), name="W_out"
            )
            self._W_source = self.W_out
        return self._W

    def _checked_features(self, query_features: object, W: np.ndarray) -> np.ndarray:
        return check_vectors(
            np.ascontiguousarray(query_features, dtype=np.float32),
            name="query_features",
            dim=W.shape[1],
            dim_name="W_out's width (hidden_dim)",
        )

    @property
    def num_docs(self) -> int:
        """Number of indexed documents (rows of W_out)."""
        return self.W_out.shape[0] if self.W_out is not None else 0


def create_synthetic_model(
    embed_dim: int = 128,
    hidden_dim: int = 2048,
    num_docs: int = 10000,
    seed: int = 42,
) -> LemurNumPy:
    """A random single-layer model and W, as the fork's function makes them.

    Draws the same numbers as the fork for the same seed (the legacy
    ``RandomState`` stream) without touching NumPy's global random state.
    """
    random = np.random.RandomState(seed)
    lemur = LemurNumPy()
    lemur.embed_dim = embed_dim
    lemur.hidden_dim = hidden_dim
    lemur.W_proj = np.ascontiguousarray(
        random.randn(hidden_dim, embed_dim).astype(np.float32) * 0.02
    )
    lemur.b_proj = np.zeros(hidden_dim, dtype=np.float32)
    lemur.ln_w = np.ones(hidden_dim, dtype=np.float32)
    lemur.ln_b = np.zeros(hidden_dim, dtype=np.float32)
    lemur.W_out = np.ascontiguousarray(
        random.randn(num_docs, hidden_dim).astype(np.float32) * 0.02
    )
    return lemur

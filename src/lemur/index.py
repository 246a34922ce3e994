"""lemur.Index: a model, its document matrix W, optionally the documents' token
vectors and the OLS sample; the LEMUR search pipeline on top of them, and
documents added and removed without a rebuild."""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, replace

import numpy as np

from lemur import fitting
from lemur._scratch import aligned_empty
from lemur._threads import resolve_num_threads
from lemur._validation import (
    check_integer_array,
    check_positive_int,
    check_vectors,
    counts_to_offsets,
)
from lemur.documents import Documents, maxsim_unchecked
from lemur.first_stage import FirstStage, compact, live_top_k
from lemur.first_stage.ann import AnnSettings, AnnStage
from lemur.first_stage.exhaustive import ExhaustiveScan
from lemur.model import Model
from lemur.retrieval import (
    check_candidate_ids,
    check_features,
    check_k,
    check_queries,
    rerank_unchecked,
    scores_unchecked,
)


@dataclass(frozen=True)
class _Store:
    """The index's documents: rows of W, ids, the token store (optional),
    the first stages over W (the exhaustive scan at the index's precision,
    and the embedded ANN if one was built) and the tombstones of removed
    rows.

    The buffers may have room past the filled part; appending writes there and
    returns a new _Store, so that an index whose update is interrupted keeps
    its old store intact (what is written past its counts is not part of it),
    and a search that took the old store runs on it unchanged.
    """

    W: np.ndarray  # (capacity, h), the first num_docs rows filled
    ids: np.ndarray  # (capacity,) int64
    num_docs: int
    scan: ExhaustiveScan  # over W[:num_docs]
    tokens: np.ndarray | None = None  # (token capacity, d), the first num_tokens rows filled
    offsets: np.ndarray | None = None  # (num_docs + 1,) int64
    owned: bool = False  # whether the buffers are lemur's own (else: the caller's arrays)
    #: file mappings W and the token store are read through (a mapped index):
    #: what the index lets go of as it reads them (see Index._read_from_mappings)
    mappings: tuple = ()
    ann: AnnStage | None = None  # over W[:num_docs]
    #: (num_docs,) bool, True for the rows of removed documents (tombstones:
    #: the first stages still hold them, the results never do); None: none
    removed: np.ndarray | None = None
    num_removed: int = 0

    @property
    def first_stage(self) -> FirstStage:
        return self.ann if self.ann is not None else self.scan

    @property
    def num_live(self) -> int:
        return self.num_docs - self.num_removed

    @property
    def num_tokens(self) -> int:
        return 0 if self.offsets is None else int(self.offsets[-1])

    def documents(self) -> Documents | None:
        if self.tokens is None:
            return None
        return Documents(self.tokens[: self.num_tokens], self.offsets)

    def rows_of_W(self) -> np.ndarray:
        return self.W[: self.num_docs]

    def appended(self, W: np.ndarray, ids: np.ndarray, tokens: np.ndarray | None,
                 counts: np.ndarray | None, num_threads: int) -> _Store:
        num_docs = self.num_docs + W.shape[0]
        grown = _room(self.W, self.num_docs, num_docs, self.owned)
        grown[self.num_docs : num_docs] = W
        store = replace(self, W=grown, ids=_room(self.ids, self.num_docs, num_docs, self.owned),
                        num_docs=num_docs, owned=True, mappings=(),
                        scan=self.scan.appended(grown[:num_docs], W, num_threads),
                        ann=None if self.ann is None else self.ann.appended(grown[:num_docs], W, num_threads),
                        removed=None if self.removed is None else np.concatenate(
                            [self.removed, np.zeros(W.shape[0], bool)]))
        store.ids[self.num_docs : num_docs] = ids
        if self.tokens is not None:
            num_tokens = self.num_tokens + tokens.shape[0]
            store = replace(store, tokens=_room(self.tokens, self.num_tokens, num_tokens, self.owned),
                            offsets=np.concatenate([self.offsets, self.offsets[-1] + np.cumsum(counts)]))
            store.tokens[self.num_tokens : num_tokens] = tokens
        return store

    def with_removed(self, rows: np.ndarray) -> _Store:
        """The store with tombstones on these rows too."""
        removed = np.zeros(self.num_docs, bool) if self.removed is None else self.removed.copy()
        removed[rows] = True
        return replace(self, removed=removed, num_removed=int(np.count_nonzero(removed)))

    def compacted(self) -> _Store:
        """The store without the tombstoned rows (new arrays of the live ones)."""
        if not self.num_removed:
            return self
        keep = ~self.removed
        W = aligned_empty((int(keep.sum()), self.W.shape[1]), np.float32)
        W[...] = self.rows_of_W()[keep]
        store = _Store(W, self.ids[: self.num_docs][keep], W.shape[0], self.scan.subset(W, keep), owned=True,
                       ann=None if self.ann is None else self.ann.subset(W, keep))
        if self.tokens is None:
            return store
        kept = self.documents().subset(keep)
        return replace(store, tokens=kept.tokens, offsets=kept.offsets)


#: What the kernel maps around a page read through a file mapping: at least
#: its fault-around window (64 KiB), up to a whole large folio of the page
#: cache (512 KiB seen on Linux 6.18). The estimate where the process's
#: resident file pages cannot be read (see _file_pages_resident).
_MAPPED_WINDOW = 65536


def _file_pages_resident() -> int | None:
    """Bytes of file pages mapped into this process and resident: Linux's
    count (/proc/self/statm's shared pages, kept by the kernel as it maps
    them, so reading it costs microseconds); None where there is none."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return None


def _room(buffer: np.ndarray, filled: int, needed: int, owned: bool) -> np.ndarray:
    """`buffer` if it is lemur's own and holds `needed` rows, else a larger copy of
    its `filled` rows (growing by half, so that appends cost amortised O(new rows))."""
    if owned and buffer.shape[0] >= needed:
        return buffer
    grown = aligned_empty((max(needed, filled + filled // 2),) + buffer.shape[1:], buffer.dtype)
    grown[:filled] = buffer[:filled]
    return grown


class Index:
    """A LEMUR index: search = features -> top candidates over W -> exact MaxSim rerank.

    Parameters
    ----------
    model : Model
        The feature map psi.
    W : ndarray of float32, shape (num_docs, feature_dim)
        One row per document (num_docs may be 0: add documents later).
    doc_tokens : ndarray of float32 or float16, shape (num_doc_tokens, input_dim), optional
        The documents' token vectors, one document after the other; needed for
        the exact rerank. float16 is kept as it is (half the memory; MaxSim
        widens the values in registers and equals float32 on them), except
        that a model with a centre keeps centred float32 copies (pass
        float16 tokens already centred with `doc_tokens_centered=True`).
    doc_counts : array-like of int, shape (num_docs,), optional
        Tokens per document (each at least 1); with `doc_tokens`.
    doc_ids : array-like of int, shape (num_docs,), optional
        The documents' ids (unique int64); default 0, 1, ..., num_docs - 1.
        Search results are ids.
    sample : ndarray of float32, shape (sample_size, input_dim), optional
        The OLS sample S that W was fitted against, in the model's (centred)
        space; needed to add documents (see :meth:`attach_sample`).
    doc_tokens_centered : bool, default False
        For a model with a centre: whether `doc_tokens` are already centred
        (as lemur's own files store them). By default they are the encoder's
        raw tokens, and the index keeps centred copies.
    precision : {"float32", "bfloat16", "int8"}, default "float32"
        How the first stage scans W. "bfloat16" and "int8" keep a compact
        copy of W (half, a quarter of its bytes) built once here, scan it,
        and rescore in float32 only the documents a proven bound cannot
        place (see :mod:`lemur.first_stage.compact`): ids and scores are
        bitwise those of "float32", only faster. How few need rescoring
        depends on directions drawn from tokens like the queries': the
        `sample`, else `doc_tokens`; an index given neither draws random
        unit vectors, and its bound is looser (on the original's fixture
        model and corpus, int8 rescored 22% of the pairs that way against
        6% with the documents' tokens).
    num_threads : int, optional
        Threads for the one-time checks of the arrays and for building the
        compact copy.

    Notes
    -----
    Every array is checked once, here (dtype, shape, C order, finiteness,
    counts). The index keeps references to W and `doc_tokens` (unless it
    centres them) and never writes into them: adding or removing documents
    works on copies of its own. Do not modify them afterwards: pass copies if
    the originals will change.
    """

    def __init__(
        self,
        model: Model,
        W: np.ndarray,
        doc_tokens: np.ndarray | None = None,
        doc_counts: object = None,
        *,
        doc_ids: object = None,
        sample: np.ndarray | None = None,
        doc_tokens_centered: bool = False,
        precision: str = "float32",
        num_threads: int | None = None,
    ) -> None:
        precision = compact.check_precision(precision)
        if not isinstance(model, Model):
            raise TypeError(f"model must be a lemur.Model, got {type(model).__name__}")
        threads = resolve_num_threads(num_threads)
        self._model = model
        W = check_vectors(W, name="W", dim=model.feature_dim, dim_name="the feature dimension",
                          num_threads=threads)
        ids = np.arange(W.shape[0], dtype=np.int64) if doc_ids is None else self._check_new_ids(
            doc_ids, W.shape[0], existing=np.empty(0, dtype=np.int64))
        self._store = _Store(W, ids, W.shape[0], ExhaustiveScan(W))
        if (doc_tokens is None) != (doc_counts is None):
            raise ValueError("pass doc_tokens and doc_counts together, or neither")
        if doc_tokens is not None:
            documents = Documents.check(doc_tokens, doc_counts, dim=model.input_dim,
                                        allow_empty=True, num_threads=threads)
            if documents.num_docs != W.shape[0]:
                raise ValueError(
                    f"doc_counts describes {documents.num_docs} documents, but W has {W.shape[0]} rows"
                )
            tokens = documents.tokens if doc_tokens_centered else model.centred(documents.tokens, threads)
            self._store = replace(self._store, tokens=tokens, offsets=documents.offsets)
        self._sample = None
        if sample is not None:
            self._sample = fitting.OLSSample(check_vectors(
                sample, name="sample", dim=model.input_dim, num_threads=threads))
        self._id_lookup: tuple[np.ndarray, np.ndarray] | None = None
        if precision != "float32":
            self._store = replace(self._store, scan=self._scan_at(precision, None, threads))

    #: What :func:`lemur.train` recorded while training this index's model
    #: (losses and seconds per epoch, the epoch kept, ...); None otherwise.
    #: Not saved with the index.
    training_log: dict | None = None

    #: A mapped index reads W's rows (those it rescores) and the candidates'
    #: tokens through the file's mappings; the kernel maps a window around
    #: every page touched (64 KiB, or a whole large folio of the page cache).
    #: Once the process's resident file pages have grown by this many bytes
    #: since they were last let go (on Linux, where the kernel counts them;
    #: elsewhere once this many may have been mapped, a 64 KiB window a
    #: read), they are let go (madvise MADV_DONTNEED: they stay in the page
    #: cache, shared with other processes, out of this one's resident memory),
    #: so that what stays resident is the compact copy the first stage scans
    #: (with an embedded ANN: the graph and the rows it rescores). A search
    #: can map up to about 40 MiB (100k documents, k' = 200, right after a
    #: letting go); at 48 MiB an int8 index of 100k documents (a compact copy
    #: of 203 MiB) keeps its RSS under 0.35x of W's 781 MiB, while at 64 MiB
    #: it reached 0.36x. A larger value lets go less often (each letting go
    #: costs the next searches their faults again: about 2 ms there).
    MAPPED_READS_BYTES = 48 * 2**20

    #: Removed documents stay in W, the token store and the first stages as
    #: tombstones (every result skips them) until they pass this fraction of
    #: the rows; then, and when the index is saved or its arrays are read,
    #: the live rows are compacted into new arrays (one copy).
    REMOVED_FRACTION = 0.2

    def _read_from_mappings(self, store: _Store, touched: int) -> None:
        """After `touched` bytes were read through the store's mappings: let
        them all go once what they hold resident passes MAPPED_READS_BYTES."""
        if not store.mappings:
            return
        resident = _file_pages_resident()
        if resident is None:  # no count of the kernel's: an estimate of what was mapped
            self._mapped_reads = grown = getattr(self, "_mapped_reads", 0) + touched
        else:  # before the first letting go: all of them (the compact copy's too)
            grown = resident - getattr(self, "_resident_after_letting_go", 0)
        if grown > self.MAPPED_READS_BYTES:
            for mapping in store.mappings:
                if hasattr(mapping, "madvise"):  # not on Windows
                    mapping.madvise(mmap.MADV_DONTNEED)
            self._mapped_reads = 0
            self._resident_after_letting_go = _file_pages_resident()

    @staticmethod
    def _first_stage_reads(store: _Store, report: dict) -> int:
        """Bytes of W a first stage may have mapped: all of it for a float32
        scan, a window per pair rescored for a compact one; none that count
        for the embedded ANN, whose rescoring reads many rows every search:
        they are its working set, which letting go of would only read again."""
        if store.ann is not None:
            return 0
        if "rescored" not in report:
            return store.W.nbytes
        return report["rescored"] * _MAPPED_WINDOW

    @classmethod
    def _from_mapped(cls, model: Model, W: np.ndarray, doc_tokens: np.ndarray | None, doc_counts: object,
                     *, doc_ids: object, sample: np.ndarray | None, precision: str,
                     compact_rows: compact.CompactRows | None, mappings: tuple,
                     num_threads: int | None) -> Index:
        """An index over arrays mapped from a file whose headers the format
        checked: W and the token store are taken as they are (their values
        are not read); counts, ids and the sample are checked as usual.
        `mappings`: the file mappings of W and the token store."""
        threads = resolve_num_threads(num_threads)
        index = cls(model, np.empty((0, W.shape[1]), np.float32), sample=sample, num_threads=threads)
        ids = np.arange(W.shape[0], dtype=np.int64) if doc_ids is None else cls._check_new_ids(
            doc_ids, W.shape[0], existing=np.empty(0, dtype=np.int64))
        store = _Store(W, ids, W.shape[0], ExhaustiveScan(W), mappings=mappings)
        if doc_tokens is not None:
            offsets = counts_to_offsets(doc_counts, name="doc_counts", total=doc_tokens.shape[0],
                                        total_name="doc_tokens", allow_empty=True)
            if offsets.size - 1 != W.shape[0] or np.any(offsets[1:] == offsets[:-1]):
                raise ValueError("doc_counts must hold one count of at least 1 per row of W")
            offsets.flags.writeable = False
            store = replace(store, tokens=doc_tokens, offsets=offsets)
        index._store = store
        if compact_rows is not None:
            return index._with_compact_rows(compact_rows)
        return index.with_precision(precision, num_threads=threads)

    def _with_compact_rows(self, rows: compact.CompactRows) -> Index:
        """This index with the first stage over a compact copy of its W made
        earlier (a file's)."""
        self._store = replace(self._store, scan=ExhaustiveScan(self._store.rows_of_W(), rows))
        return self

    def _with_ann_arrays(self, arrays: dict[str, np.ndarray], mapped: bool) -> Index:
        """This index with the embedded ANN saved as `arrays` (a file's;
        see :meth:`AnnStage.arrays`), the graph viewed in place if `mapped`."""
        ann = AnnStage.open(self._store.rows_of_W(), arrays["ann_graph"], arrays["ann_basis"],
                            arrays["ann_keys"], arrays["ann_settings"], arrays["ann_radius"], mapped=mapped)
        self._store = replace(self._store, ann=ann)
        return self

    def _scan_at(self, precision: str, basis: np.ndarray | None, num_threads: int) -> ExhaustiveScan:
        """The first stage over this index's W at `precision` (with the exact
        directions `basis`, or new ones)."""
        W = self._store.rows_of_W()
        if precision == "float32":
            return ExhaustiveScan(W)
        if W.shape[1] > compact.MAX_WIDTH:
            raise ValueError(f"precision={precision!r} takes feature dimensions up to {compact.MAX_WIDTH}, "
                             f"the model has {W.shape[1]}")
        if basis is None:
            basis = compact.subspace(self._typical_features(num_threads))
        return ExhaustiveScan.build(W, precision, basis, num_threads)

    def _typical_features(self, num_threads: int, num_queries: int = 1024, query_tokens: int = 32,
                          seed: int = 0) -> np.ndarray:
        """Features of pseudo-queries: groups of tokens drawn from the OLS
        sample (the learn set: query-side tokens), else the documents' own,
        else random unit vectors; what the compact scan's exact directions
        follow. (Unit vectors because token embeddings are, as is the model's
        space where it centres them, and the scale sets the balance of a
        layer's weights and bias: on the original's fixture model and corpus,
        an int8 index whose directions came from standard normal tokens, of
        norm about sqrt(d), rescored 85% of the pairs, from unit ones 22%, from
        the documents' tokens 6%.)"""
        random = np.random.default_rng(seed)
        tokens = self.sample if self._sample is not None else self.doc_tokens
        if tokens is None or tokens.shape[0] == 0:
            tokens = random.standard_normal((num_queries * query_tokens, self._model.input_dim),
                                            dtype=np.float32)
            tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
        chosen = random.integers(0, tokens.shape[0], num_queries * query_tokens)
        drawn = np.ascontiguousarray(tokens[chosen], dtype=np.float32)
        offsets = np.arange(0, drawn.shape[0] + 1, query_tokens, dtype=np.int64)
        return self._model._pooled(drawn, offsets, self._model.query_scale, num_threads)

    @staticmethod
    def _check_new_ids(ids: object, count: int, existing: np.ndarray, name: str = "doc_ids") -> np.ndarray:
        ids = check_integer_array(ids, name=name)
        if ids.shape != (count,):
            raise ValueError(f"{name} has {ids.size} ids, but there are {count} documents")
        if ids.size and ids.min() < 0:
            raise ValueError(f"{name} must be non-negative (-1 marks padding in results)")
        # ids in increasing order (as lemur saves them) need no sort to be seen unique
        ordered = ids if ids.size < 2 or bool(np.all(ids[1:] > ids[:-1])) else np.sort(ids)
        if ordered.size > 1 and not np.all(ordered[1:] != ordered[:-1]):
            raise ValueError(f"{name} holds the same id more than once")
        if existing.size:
            clash = np.intersect1d(ordered, existing, assume_unique=True)
            if clash.size:
                raise ValueError(f"{name}: the index already has a document with id {int(clash[0])}")
        return ids.copy()

    # -- description -------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model

    @property
    def W(self) -> np.ndarray:
        """The document matrix, ``(num_docs, feature_dim)`` float32, row i for ``doc_ids[i]``."""
        return self._compacted().rows_of_W()

    @property
    def num_docs(self) -> int:
        return self._store.num_live

    def _compacted(self) -> _Store:
        """The store without tombstones (compacted now if it has some)."""
        store = self._store
        if store.num_removed:
            store = store.compacted()
            self._store, self._id_lookup = store, None
        return store

    @property
    def precision(self) -> str:
        """How the first stage scans W: "float32", "bfloat16" or "int8"."""
        return self._store.scan.precision

    @property
    def compact(self) -> compact.CompactRows | None:
        """The compact copy of W the first stage scans (None at float32)."""
        return self._compacted().scan.rows

    @property
    def ann(self) -> AnnStage | None:
        """The embedded ANN first stage (:meth:`build_ann`), or None."""
        return self._store.ann

    @property
    def first_stage(self) -> FirstStage:
        """What finds the candidates: the embedded ANN if one is built, else
        the exhaustive scan at :attr:`precision` (see :mod:`lemur.first_stage`)."""
        return self._store.first_stage

    def build_ann(
        self,
        *,
        dims: int = AnnSettings.dims,
        connectivity: int = AnnSettings.connectivity,
        expansion_add: int = AnnSettings.expansion_add,
        candidates_factor: int = AnnSettings.candidates_factor,
        min_candidates: int = AnnSettings.min_candidates,
        progress: bool | None = None,
        num_threads: int | None = None,
    ) -> None:
        """Build an HNSW graph (usearch) over W's rows and use it as the
        first stage: :meth:`search` and :meth:`top_k` then take the graph's
        best rows for each query, rescored exactly (see
        :mod:`lemur.first_stage.ann`). Needs ``pip install
        'lemur-retrieval[ann]'``.

        The graph is saved with the index (and mapped when it is opened with
        ``mmap=True``), follows :meth:`add_documents` and
        :meth:`remove_documents`, and :meth:`drop_ann` goes back to the
        exhaustive scan. A document the graph misses costs recall only: the
        rows it returns are scored exactly and the rerank stays exact.

        Parameters
        ----------
        dims : int, default 128
            Directions W's rows are projected on for the graph (the leading
            directions of the model's query features; at most the feature
            dimension).
        connectivity : int, default 16
            HNSW's M (neighbours per node).
        expansion_add : int, default 128
            HNSW's ef_construction.
        candidates_factor : int, default 8
            Rows taken from the graph for each row asked (k of
            :meth:`top_k`, `candidates` of :meth:`search`), rescored in
            float32: more is better recall and slower.
        min_candidates : int, default 100
            At least this many rows are taken from the graph.
        progress : bool, optional
            A progress line on stderr; default: when stderr is a terminal.
        num_threads : int, optional
        """
        threads = resolve_num_threads(num_threads)
        store = self._compacted()
        settings = AnnSettings(dims, connectivity, expansion_add, candidates_factor,
                               min_candidates).checked(self._model.feature_dim)
        ann = AnnStage.build(store.rows_of_W(), self._graph_basis(settings.dims, threads), settings, threads,
                             progress=progress)
        self._store = replace(self._store, ann=ann) if self._store is store else replace(store, ann=ann)

    def tune_ann(self, *, candidates_factor: int | None = None, min_candidates: int | None = None) -> None:
        """Search the ANN graph with other settings (see :meth:`build_ann`):
        more candidates, better recall and slower; the graph stays as it is."""
        ann = self._store.ann
        if ann is None:
            raise ValueError("the index has no ANN graph: build one with index.build_ann()")
        self._store = replace(self._store, ann=ann.tuned(candidates_factor, min_candidates))

    def _graph_basis(self, dims: int, num_threads: int) -> np.ndarray:
        """The directions an ANN graph over W's rows is built on: those of
        this index's graph if it has one of `dims` directions, else the
        leading `dims` directions of the model's features of pseudo-queries."""
        ann = self._store.ann
        if ann is not None and ann.basis.shape[0] == dims:
            return ann.basis
        return compact.subspace(self._typical_features(num_threads, num_queries=4096), dims)

    def drop_ann(self) -> None:
        """Go back to the exhaustive scan (and forget the graph)."""
        self._store = replace(self._store, ann=None)

    def with_documents(self, doc_tokens: np.ndarray, doc_counts: object, *, doc_tokens_centered: bool = False,
                       num_threads: int | None = None) -> Index:
        """A new index over the same model, W (and its compact copy), ids and
        sample, with this token store for the exact rerank (the documents in
        W's row order; float32 or float16, see :class:`Index`)."""
        threads = resolve_num_threads(num_threads)
        documents = Documents.check(doc_tokens, doc_counts, dim=self._model.input_dim, allow_empty=True,
                                    num_threads=threads)
        if documents.num_docs != self.num_docs:
            raise ValueError(f"doc_counts describes {documents.num_docs} documents, but the index has "
                             f"{self.num_docs}")
        tokens = documents.tokens if doc_tokens_centered else self._model.centred(documents.tokens, threads)
        store = self._compacted()
        other = object.__new__(Index)
        other.__dict__.update(self.__dict__)
        other._store = replace(store, tokens=tokens, offsets=documents.offsets, mappings=store.mappings[:1])
        return other

    def with_precision(self, precision: str, *, num_threads: int | None = None) -> Index:
        """A new index over the same model, documents and sample (shared,
        not copied) whose first stage runs at `precision`; results stay
        bitwise the same."""
        precision = compact.check_precision(precision)
        threads = resolve_num_threads(num_threads)
        store = self._compacted()
        other = object.__new__(Index)
        other.__dict__.update(self.__dict__)
        current = store.scan.rows
        basis = current.basis if current is not None else None
        other._store = replace(store, scan=other._scan_at(precision, basis, threads))
        return other

    @property
    def doc_ids(self) -> np.ndarray:
        """The documents' ids, in the order of W's rows (a read-only view)."""
        store = self._compacted()
        ids = store.ids[: store.num_docs].view()
        ids.flags.writeable = False
        return ids

    @property
    def has_documents(self) -> bool:
        """Whether the index holds the documents' tokens (needed to rerank)."""
        return self._store.tokens is not None

    @property
    def doc_tokens(self) -> np.ndarray | None:
        documents = self._compacted().documents()
        return None if documents is None else documents.tokens

    @property
    def doc_counts(self) -> np.ndarray | None:
        store = self._compacted()
        return None if store.offsets is None else np.diff(store.offsets)

    @property
    def sample(self) -> np.ndarray | None:
        """The OLS sample S, ``(sample_size, input_dim)``, or None."""
        return None if self._sample is None else self._sample.rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the model, W, its compact copy, the ANN graph, the
        token store and the sample."""
        store = self._store
        documents = store.documents()
        tokens = None if documents is None else documents.tokens
        return (self._model.nbytes + store.rows_of_W().nbytes + store.scan.nbytes
                + (0 if store.ann is None else store.ann.nbytes)
                + (0 if tokens is None else tokens.nbytes)
                + (0 if self._sample is None else self._sample.rows.nbytes))

    def __repr__(self) -> str:
        documents = self._store.documents()
        tokens = None if documents is None else documents.tokens
        parts = [repr(self._model), f"num_docs={self.num_docs}"]
        if self.precision != "float32":
            parts.append(f"precision={self.precision!r}")
        if self._store.ann is not None:
            parts.append(f"ann=HNSW({self._store.ann.settings.dims} dims)")
        if tokens is not None:
            parts.append(f"doc_tokens={tokens.shape[0]}x{tokens.shape[1]}")
        if self._sample is not None:
            parts.append(f"sample={self._sample.size}")
        return f"Index({', '.join(parts)})"

    # -- ids -------------------------------------------------------------------

    def _rows_of(self, ids: np.ndarray, name: str) -> np.ndarray:
        """Rows of W for document ids (-1 stays -1); an unknown id is an error."""
        if self._id_lookup is None:
            store = self._store
            all_ids = store.ids[: store.num_docs]
            live = np.arange(store.num_docs) if store.removed is None else np.flatnonzero(~store.removed)
            order = live[np.argsort(all_ids[live], kind="stable")]
            self._id_lookup = (order, all_ids[order])
        order, sorted_ids = self._id_lookup
        position = np.searchsorted(sorted_ids, ids)
        found = position < sorted_ids.size
        found[found] = sorted_ids[position[found]] == ids[found]
        missing = np.argwhere(~found & (ids != -1))
        if missing.size:
            where = tuple(int(i) for i in missing[0])
            raise ValueError(
                f"{name}[{', '.join(map(str, where))}] = {ids[where]} is not a document id of this "
                "index (-1 marks padding)"
            )
        rows = np.full(ids.shape, -1, dtype=np.int64)
        rows[found] = order[position[found]]
        return rows

    @staticmethod
    def _ids_of(store: _Store, rows: np.ndarray) -> np.ndarray:
        """Document ids of rows of the store's W (-1 stays -1)."""
        ids = store.ids[: store.num_docs]
        return np.where(rows < 0, -1, ids[np.maximum(rows, 0)]) if ids.size else rows

    # -- the pipeline, stage by stage ---------------------------------------

    def features(
        self, query_tokens: np.ndarray, query_counts: object = None, *, num_threads: int | None = None
    ) -> np.ndarray:
        """Query features; see :meth:`Model.features`."""
        return self._model.features(query_tokens, query_counts, num_threads=num_threads)

    def scores(self, features: np.ndarray, *, num_threads: int | None = None) -> np.ndarray:
        """Approximate scores with every document, ``features @ W.T``:
        (num_queries, num_docs), columns in the order of :attr:`doc_ids`."""
        threads = resolve_num_threads(num_threads)
        return scores_unchecked(self._check_features(features, threads), self.W, threads)

    def top_k(
        self, features: np.ndarray, k: int, *, num_threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` documents with the largest approximate score for each query.

        See :func:`lemur.top_k`: int64 document ids and float32 scores, shape
        ``(num_queries, min(k, num_docs))``, best first, ties by smaller row;
        memory stays bounded whatever the number of queries and documents.
        With the embedded ANN (:meth:`build_ann`), the best of the rows its
        graph finds, scored exactly; -1/-inf pad a query for which it finds
        fewer than k.
        """
        threads = resolve_num_threads(num_threads)
        store = self._store
        k = check_k(k, at_most=store.num_live)
        self._require_some_documents()
        report: dict = {}
        rows, scores = self._best(store, self._check_features(features, threads), k, threads, report, sets=False)
        self._read_from_mappings(store, self._first_stage_reads(store, report))
        return self._ids_of(store, rows), scores

    @staticmethod
    def _best(store: _Store, features: np.ndarray, k: int, num_threads: int, report: dict, sets: bool):
        """The first stage's k best rows: (rows, scores), or with `sets` the
        rows only, each query's increasing; tombstones skipped."""
        stage = store.first_stage
        if store.num_removed:
            rows, scores = live_top_k(stage, store.removed, store.num_live, features, k, num_threads, report)
            return np.sort(rows, axis=1) if sets else (rows, scores)
        if sets:
            return stage.best_rows(features, k, num_threads, report)
        return stage.top_k(features, k, num_threads, report)

    def maxsim_scores(
        self,
        query_tokens: np.ndarray,
        query_counts: object,
        candidates: object,
        *,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Exact MaxSim of each query with each candidate document id (-1:
        padding, -inf). See :func:`lemur.maxsim_scores`."""
        documents = self._require_documents("maxsim_scores")
        threads = resolve_num_threads(num_threads)
        tokens, offsets = self._check_queries(query_tokens, query_counts, threads)
        rows = self._candidate_rows(candidates, offsets.size - 1)
        return maxsim_unchecked(self._model.centred(tokens, threads), offsets, documents, rows, threads)

    def rerank(
        self,
        query_tokens: np.ndarray,
        query_counts: object,
        candidates: object,
        k: int = 10,
        *,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best candidates (document ids) of each query by exact MaxSim.

        See :func:`lemur.rerank`: int64 ids and float32 scores, ``(num_queries,
        k)``, padded with -1/-inf (k clamped to the larger of the number of
        documents and of candidates per query); a query without tokens keeps
        its first `k` candidates.
        """
        store = self._store
        documents = self._require_documents("rerank")
        threads = resolve_num_threads(num_threads)
        tokens, offsets = self._check_queries(query_tokens, query_counts, threads)
        rows = self._candidate_rows(candidates, offsets.size - 1)
        k = check_k(k, at_most=max(self.num_docs, rows.shape[1]))
        found, scores = rerank_unchecked(self._model.centred(tokens, threads), offsets, documents,
                                         rows, k, threads)
        self._read_from_mappings(store, rows.size * _MAPPED_WINDOW)
        return self._ids_of(store, found), scores

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
            stage's top `k` (approximate scores) is returned. Both count as
            the number of documents when they exceed it.
        num_threads : int, optional

        Returns
        -------
        ids : ndarray of int64, shape (num_queries, min(k, num_docs))
        scores : ndarray of float32, same shape
            Best first.
        """
        threads = resolve_num_threads(num_threads)
        store = self._store
        self._require_some_documents()
        k = check_positive_int(k, name="k")
        candidates = check_positive_int(candidates, name="candidates")
        if candidates < k:
            raise ValueError(f"candidates ({candidates}) must be >= k ({k})")
        k, candidates = min(k, store.num_live), min(candidates, store.num_live)
        tokens, offsets = self._check_queries(query_tokens, query_counts, threads)
        tokens = self._model.centred(tokens, threads)
        features = self._model._pooled(tokens, offsets, self._model.query_scale, threads)
        documents = store.documents()
        report: dict = {}
        if documents is None:
            rows, scores = self._best(store, features, k, threads, report, sets=False)
        else:
            # the rerank needs only the set of candidates, unless a query
            # without tokens keeps its first candidates, in order
            ordered = not np.all(offsets[1:] > offsets[:-1])
            found = self._best(store, features, candidates, threads, report, sets=not ordered)
            found = found[0] if ordered else found
            rows, scores = rerank_unchecked(tokens, offsets, documents, found, k, threads)
            report["tokens"] = found.size * _MAPPED_WINDOW
        self._read_from_mappings(store, self._first_stage_reads(store, report) + report.get("tokens", 0))
        return self._ids_of(store, rows), scores

    # -- adding and removing documents ---------------------------------------

    def attach_sample(
        self,
        learn_tokens: np.ndarray,
        *,
        size: int | None = fitting.DEFAULT_SAMPLE_SIZE,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        """Give the index the OLS sample S that documents are fitted against.

        Parameters
        ----------
        learn_tokens : ndarray of float32, shape (num_tokens, input_dim)
            Token vectors to draw S from: the learn set W was fitted with when
            possible (the original draws from the query-side tokens, or the
            corpus when it has none); raw, as the encoder gives them (the
            drawn rows are centred for a model with a centre).
        size : int or None, default 16384
            Rows to draw without replacement (all, in a random order, when there
            are fewer); None uses `learn_tokens` as S, in its order.
        seed : int or numpy.random.Generator, optional

        Notes
        -----
        Rows of W fitted against different samples differ slightly; for an index
        from the original LEMUR, whose sample was never kept, new documents are
        fitted consistently with each other, not with the old rows.
        """
        learn_tokens = check_vectors(learn_tokens, name="learn_tokens", dim=self._model.input_dim)
        self._sample = fitting.OLSSample.draw(learn_tokens, size=size, seed=seed, model=self._model)

    def add_documents(
        self,
        tokens: np.ndarray,
        counts: object,
        *,
        ids: object = None,
        progress: bool | None = None,
        num_threads: int | None = None,
    ) -> np.ndarray:
        """Fit W's rows for new documents and add them (and their tokens, if the
        index keeps a token store).

        The targets ``max_{d in D} <S_s, d>`` are computed for each sample row
        and document, standardised with the model's output_mean/output_std, and
        projected with pinv(psi(S)) (computed on first use and kept). Documents
        stream through in blocks, so memory stays bounded; nothing is added
        unless all of them are fitted (an interrupted call leaves the index as
        it was).

        Parameters
        ----------
        tokens : ndarray of float32 or float16, shape (num_tokens, input_dim)
            Converted to the token store's dtype (the targets are computed
            over the values stored).
        counts : array-like of int, shape (num_new_docs,)
            Tokens per document, each at least 1.
        ids : array-like of int, optional
            Ids for the new documents (unique, not in the index); default: the
            next ids after the largest one in the index.
        progress : bool, optional
            A progress line on stderr; default: when stderr is a terminal.
        num_threads : int, optional

        Returns
        -------
        ndarray of int64
            The new documents' ids.
        """
        if self._sample is None:
            raise ValueError(
                "this index has no OLS sample to fit new documents against (the original's "
                "index directories and LEMUR-NumPy exports do not keep it): attach one with "
                "index.attach_sample(learn_tokens, size=16384, seed=...), drawn from the learn "
                "set (query-side token vectors, or the corpus' own)"
            )
        threads = resolve_num_threads(num_threads)
        documents = Documents.check(tokens, counts, name="tokens", counts_name="counts",
                                    dim=self._model.input_dim, allow_empty=True,
                                    num_threads=threads)
        existing = self._live_ids(self._store)
        if ids is None:
            start = int(existing.max()) + 1 if existing.size else 0
            new_ids = np.arange(start, start + documents.num_docs, dtype=np.int64)
        else:
            new_ids = self._check_new_ids(ids, documents.num_docs, existing, name="ids")
        tokens = self._model.centred(documents.tokens, threads)
        if self.has_documents and tokens.dtype != self._store.tokens.dtype:
            tokens = tokens.astype(self._store.tokens.dtype)  # fitted on the values stored
        W = fitting.fit_rows(self._model, self._sample, tokens, documents.offsets,
                             num_threads=threads, progress=progress)
        self._store = self._store.appended(
            W, new_ids, tokens if self.has_documents else None, documents.counts, threads)
        self._id_lookup = None
        return new_ids

    def remove_documents(self, ids: object) -> None:
        """Remove the documents with these ids.

        Their rows become tombstones: no result holds them from now on, and
        nothing is copied; once they pass :attr:`REMOVED_FRACTION` of the
        rows (or when the index is saved, or its arrays are read) the live
        rows of W, the token store and the first stages are compacted.
        Raises ValueError, and removes nothing, if an id is not in the index.
        """
        ids = check_integer_array(ids, name="ids")
        if np.any(ids == -1):
            raise ValueError("ids: -1 is not a document id")
        store = self._store.with_removed(self._rows_of(ids, "ids"))
        if store.num_removed > self.REMOVED_FRACTION * store.num_docs:
            store = store.compacted()
        self._store, self._id_lookup = store, None

    @staticmethod
    def _live_ids(store: _Store) -> np.ndarray:
        ids = store.ids[: store.num_docs]
        return ids if store.removed is None else ids[~store.removed]

    # -- checks ----------------------------------------------------------------

    def _require_documents(self, what: str) -> Documents:
        documents = self._store.documents()
        if documents is None:
            raise ValueError(
                f"{what} needs the documents' token vectors: build the index with "
                "doc_tokens and doc_counts"
            )
        self._require_some_documents()
        return documents

    def _require_some_documents(self) -> None:
        if self.num_docs == 0:
            raise ValueError("the index has no documents")

    def _candidate_rows(self, candidates: object, num_queries: int) -> np.ndarray:
        ids = check_candidate_ids(candidates, num_queries=num_queries)
        return np.ascontiguousarray(self._rows_of(ids, "candidates"))

    def _check_features(self, features: np.ndarray, num_threads: int) -> np.ndarray:
        return check_features(
            features,
            dim=self._model.feature_dim,
            dim_name="the model's feature dimension",
            num_threads=num_threads,
        )

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

    def save(self, path: str | os.PathLike[str], *, format: str = "lemur") -> None:
        """Write the index to `path`: see :func:`lemur.save` (lemur's own
        format keeps the model, W, ids, the token store and the sample)."""
        from lemur import formats

        formats.save(self, path, format=format)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        activation: str | None = None,
        mmap: bool = False,
        num_threads: int | None = None,
    ) -> Index:
        """The index in any file :func:`lemur.load` reads that holds one (W,
        or a sample to fit documents against); a bare model is an error.

        The arrays are read once, into memory of their own (no second copy),
        or with `mmap` mapped from the file (see :func:`lemur.load`).
        `activation` is for exports, which do not record it (default "gelu").
        """
        from lemur import formats

        loaded = formats.load(path, activation=activation, mmap=mmap, num_threads=num_threads)
        if not isinstance(loaded, Index):
            raise ValueError(f"{os.fspath(path)}: holds a model but no W; it is not an index")
        return loaded


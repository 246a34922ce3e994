"""The embedded ANN first stage: an HNSW graph over W's rows, its best rows
rescored exactly.

The graph (usearch, float16 vectors) is built over W's rows projected on
`dims` orthonormal directions V, close to the leading directions of the
model's query features (the same directions the compact scan uses, more of
them): a query's features f are projected the same way, c = V f, the graph
returns its ``candidates_factor * k`` best rows for c, and those are scored
exactly, <f, w> in float32 by the rule of ``lemur/_tiles.h``, keeping the k
best. What the graph finds is therefore ranked and scored exactly as the
exhaustive scan would; what it misses costs recall only, and the rerank
after it stays exact.

Why projected rows: LEMUR's features concentrate on few directions, so
<c, V w> keeps most of <f, w>'s ranking (at 1M fitted rows, the exact top
1,000 by <c, V w> with 128 directions holds 92% of the true top 200, the top
3,000 98%), and a graph over 128 float16 values a row is 32x smaller and
many times faster to walk than one over 2048 float32 values.

Maximum inner product by nearest neighbours: each projected row p gets one
more coordinate, sqrt(R^2 - |p|^2) (R: 1.5 x the largest norm when the
graph is built; a row added later with a larger norm gets 0 there, and may
be missed), each query a 0, so the nearest rows in L2 are those of largest
<c, p>. HNSW walks these much better than inner products themselves, whose
large-norm rows become hubs: at 1M fitted rows, 1,000 rows from the graph
recall 0.91 of the true top 200 with the reduction and 0.71 with the inner
product, and more rows from the inner-product graph hardly help (3,000:
0.98 against 0.76): ``bench/ann_libraries.py --docs 1000000``.

Keys: the graph's keys are slots that never change; `row_of_key` maps them
to W's rows (-1: removed, or a slot past this stage), so compacting W
renumbers rows without touching the graph. Rows added after a search took
this stage are in the graph but not in its map, and are skipped.

Threads: searches of the graph run concurrently (usearch's own threads, at
most `num_threads` per call); adding to it may grow its storage, so additions
and removals hold a writer lock that searches hold as readers. A graph
mapped from a file is read-only: the first addition or removal copies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from lemur._dispatch import kernels
from lemur._threads import ReadWriteLock
from lemur.first_stage import compact
from lemur.fitting import Progress
from lemur.retrieval import scores_unchecked

#: The reduction's radius, as a multiple of the largest projected row norm
#: when the graph is built (room for rows added later).
RADIUS_HEADROOM = 1.5
#: Asked for at least 1/EXACT_FRACTION of the graph's rows, the stage scores
#: every projected row instead of walking the graph.
EXACT_FRACTION = 4
#: Keys run past the graph's slots only where additions were interrupted; a
#: file whose keys reach past this many times the slots is refused (the map
#: from keys to rows has one entry a key).
MAX_UNUSED_SLOTS_FACTOR = 2
#: Rows projected and added to the graph at a time (the progress line's step).
ADD_BLOCK_ROWS = 65536


def _usearch():
    try:
        from usearch.index import Index as Graph
    except ImportError:
        raise ImportError("the embedded ANN needs usearch: pip install 'lemur-retrieval[ann]'") from None
    return Graph


@dataclass(frozen=True)
class AnnSettings:
    """How the graph is built and searched.

    dims : int
        Directions the rows are projected on (at most the feature dimension).
    connectivity : int
        HNSW's M: neighbours per node (more: better recall, more memory).
    expansion_add : int
        HNSW's ef_construction: the candidate list while building.
    candidates_factor : int
        Rows taken from the graph per row asked, and rescored exactly: the
        knob between recall and time (``bench/scale.py``).
    min_candidates : int
        At least this many rows are taken from the graph per query.
    """

    dims: int = 128
    connectivity: int = 16
    expansion_add: int = 128
    candidates_factor: int = 8
    min_candidates: int = 100

    def checked(self, h: int) -> AnnSettings:
        for name in ("dims", "connectivity", "expansion_add", "candidates_factor", "min_candidates"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.connectivity < 2:
            raise ValueError(f"connectivity must be >= 2, got {self.connectivity}")
        return AnnSettings(min(int(self.dims), h), int(self.connectivity), int(self.expansion_add),
                           int(self.candidates_factor), int(self.min_candidates))

    def as_array(self) -> np.ndarray:
        return np.array([self.dims, self.connectivity, self.expansion_add, self.candidates_factor,
                         self.min_candidates], np.int64)


@dataclass
class _Graph:
    """The usearch graph shared by the stages made from one another, the
    next free slot, and the lock of its readers and writer. A graph viewed
    in a file's mapping keeps that view (`mapped`) alive: usearch does not."""

    graph: object
    next_key: int
    radius: float = 0.0  # the reduction's R (0: set by the first rows added)
    mapped: np.ndarray | None = None
    lock: ReadWriteLock = field(default_factory=ReadWriteLock)

    def writable(self) -> object:
        """The graph, copied into memory first if it is viewed in a file."""
        if self.mapped is not None:
            self.graph, self.mapped = self.graph.copy(), None
        return self.graph


class AnnStage:
    """An HNSW graph over W's projected rows, the best rows rescored exactly.

    Made by :meth:`build` or :meth:`open`; see the module's notes.
    """

    def __init__(self, W: np.ndarray, shared: _Graph, basis: np.ndarray, row_of_key: np.ndarray,
                 settings: AnnSettings) -> None:
        self.W, self._shared, self.basis, self.row_of_key, self.settings = W, shared, basis, row_of_key, settings

    @classmethod
    def build(cls, W: np.ndarray, basis: np.ndarray, settings: AnnSettings, num_threads: int,
              progress: bool | None = None) -> AnnStage:
        """The graph over W's rows, projected on `basis` (dims, h)."""
        Graph = _usearch()
        graph = Graph(ndim=basis.shape[0] + 1, metric="l2sq", dtype="f16", connectivity=settings.connectivity,
                      expansion_add=settings.expansion_add)
        stage = cls(W[:0], _Graph(graph, 0), basis, np.empty(0, np.int64), settings)
        return stage.appended(W, W, num_threads, progress=progress)

    @classmethod
    def open(cls, W: np.ndarray, graph_bytes: np.ndarray, basis: np.ndarray, keys: np.ndarray,
             settings: np.ndarray, radius: np.ndarray, *, mapped: bool) -> AnnStage:
        """The stage saved as these arrays (see :meth:`arrays`): the graph's
        serialised bytes (viewed in place when `mapped`), the basis, each
        row's key, the settings and the reduction's radius. Their headers are
        checked against each other and W; the graph's own structure is
        usearch's to read (it checks the lengths of what it reads)."""
        Graph = _usearch()
        values = [int(value) for value in settings] if settings.shape == (5,) else []
        if settings.dtype != np.int64 or len(values) != 5 or min(values) < 1:
            raise ValueError("ann_settings must be 5 positive int64 values")
        settings = AnnSettings(*values).checked(W.shape[1])
        basis = compact.check_basis(basis, W.shape[1], name="ann_basis", most=W.shape[1])
        if basis.shape[0] != settings.dims:
            raise ValueError(f"ann_basis has {basis.shape[0]} directions, ann_settings says {settings.dims}")
        if keys.dtype != np.int64 or keys.shape != (W.shape[0],):
            raise ValueError(f"ann_keys must be int64 of shape ({W.shape[0]},), got {keys.dtype} {keys.shape}")
        if graph_bytes.dtype != np.uint8 or graph_bytes.ndim != 1:
            raise ValueError("ann_graph must be a 1-d array of bytes (uint8)")
        try:
            header = Graph.metadata(graph_bytes)
        except Exception as exc:  # usearch raises its own kinds
            raise ValueError(f"ann_graph is not a usearch graph: {exc}") from None
        if (header is None or int(header["dimensions"]) != settings.dims + 1
                or "L2SQ" not in str(header["kind_metric"]).upper()):
            raise ValueError(f"ann_graph is not an L2 graph of {settings.dims} + 1 dimensions")
        radius = float(radius.reshape(-1)[0]) if radius.dtype == np.float64 and radius.size == 1 else -1.0
        if not (np.isfinite(radius) and radius >= 0):
            raise ValueError("ann_radius must be one finite non-negative float64")
        next_key = int(keys.max(initial=-1)) + 1
        if keys.size and (keys.min() < 0 or np.unique(keys).size != keys.size):
            raise ValueError("ann_keys must be distinct non-negative keys")
        if int(header["count_present"]) < W.shape[0]:
            raise ValueError(f"ann_graph holds {header['count_present']} rows, W has {W.shape[0]}")
        try:
            graph = Graph.restore(graph_bytes, view=mapped)
        except Exception as exc:  # usearch checks the lengths of what it reads
            raise ValueError(f"ann_graph could not be read: {exc}") from None
        if graph is None or graph.ndim != settings.dims + 1:
            raise ValueError("ann_graph could not be read")
        slots = int(header["count_present"]) + int(header["count_deleted"])
        if next_key > MAX_UNUSED_SLOTS_FACTOR * slots + ADD_BLOCK_ROWS:  # the map is next_key entries
            raise ValueError(f"ann_keys go up to {next_key - 1}, far past the graph's {slots} slots")
        next_key = max(next_key, slots)
        row_of_key = np.full(next_key, -1, np.int64)
        row_of_key[keys] = np.arange(W.shape[0])
        return cls(W, _Graph(graph, next_key, radius, graph_bytes if mapped else None), basis, row_of_key, settings)

    def arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`open` takes back: ann_graph, ann_basis, ann_keys,
        ann_settings, ann_radius."""
        with self._shared.lock.reading():
            graph_bytes = np.frombuffer(self._shared.graph.save(), np.uint8)
        return {"ann_graph": graph_bytes, "ann_basis": self.basis, "ann_keys": self.keys_of_rows(),
                "ann_settings": self.settings.as_array(), "ann_radius": np.array(self.radius)}

    def keys_of_rows(self) -> np.ndarray:
        """The graph key of each of W's rows."""
        keys = np.empty(self.W.shape[0], np.int64)
        present = self.row_of_key >= 0
        keys[self.row_of_key[present]] = np.flatnonzero(present)
        return keys

    @property
    def description(self) -> str:
        s = self.settings
        return (f"HNSW (usearch, float16, inner products as L2 distances) over {self.W.shape[0]:,} rows "
                f"projected on {s.dims} directions, M={s.connectivity}, ef_construction={s.expansion_add}; "
                f"{s.candidates_factor} x k rows rescored in float32")

    @property
    def radius(self) -> float:
        """The reduction's radius R (0 until the graph holds rows)."""
        return self._shared.radius

    @property
    def nbytes(self) -> int:
        """The graph's bytes (in memory, or mapped from the file), the basis and the map."""
        shared = self._shared
        graph = shared.mapped.nbytes if shared.mapped is not None else int(shared.graph.memory_usage)
        return graph + self.basis.nbytes + self.row_of_key.nbytes

    # -- searching -------------------------------------------------------------

    def _graph_rows(self, features: np.ndarray, k: int, num_threads: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, queries): the pairs of each query and the rows the graph
        returns for it (rows of this stage only)."""
        size = len(self._shared.graph)
        count = min(size, max(self.settings.min_candidates, self.settings.candidates_factor * k))
        projected = graph_queries(features, self.basis, num_threads)
        with self._shared.lock.reading():
            # asked for a quarter of the rows or more, a walk of the graph
            # costs as much as scoring every projected row, and may miss some
            matches = self._shared.graph.search(projected, count, threads=num_threads,
                                                exact=count >= size // EXACT_FRACTION)
        if features.shape[0] == 1:
            keys, counts = matches.keys.reshape(1, -1), np.array([matches.keys.size])
        else:
            keys, counts = matches.keys, matches.counts
        keys = keys.astype(np.int64)
        valid = (np.arange(keys.shape[1]) < counts[:, None]) & (keys < self.row_of_key.size)
        rows = np.where(valid, self.row_of_key[np.where(valid, keys, 0)], -1)
        queries, columns = np.nonzero(rows >= 0)
        return rows[queries, columns], queries.astype(np.int32)

    def top_k(self, features: np.ndarray, k: int, num_threads: int,
              report: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best of the rows the graph finds for each query, by their
        exact float32 scores (ties: smaller row); -1/-inf where it finds
        fewer than k."""
        rows, queries = self._graph_rows(features, k, num_threads)
        found = np.full((features.shape[0], k), -1, np.int64)
        scores = np.full((features.shape[0], k), -np.inf, np.float32)
        rescored = kernels.certified_result(features, self.W, rows, queries, np.zeros(rows.size, np.float32),
                                            None, found, scores, num_threads)
        if report is not None:
            report["rescored"] = report.get("rescored", 0) + rescored
        return found, scores

    def best_rows(self, features: np.ndarray, k: int, num_threads: int,
                  report: dict | None = None) -> np.ndarray:
        """The rows of :meth:`top_k`, increasing (-1 padding first)."""
        return np.sort(self.top_k(features, k, num_threads, report)[0], axis=1)

    def tuned(self, candidates_factor: int | None = None, min_candidates: int | None = None) -> AnnStage:
        """The same graph searched with other settings (see :class:`AnnSettings`)."""
        settings = replace(self.settings, **{name: value for name, value in (
            ("candidates_factor", candidates_factor), ("min_candidates", min_candidates)) if value is not None})
        return AnnStage(self.W, self._shared, self.basis, self.row_of_key, settings.checked(self.W.shape[1]))

    # -- changes -------------------------------------------------------------

    def appended(self, W: np.ndarray, new_rows: np.ndarray, num_threads: int,
                 progress: bool | None = None) -> AnnStage:
        """The stage over W, whose last rows are `new_rows`: they join the
        graph (under new slots) and the map."""
        shared = self._shared
        with shared.lock.writing():
            start = shared.next_key
            shared.next_key += new_rows.shape[0]
            graph = shared.writable()
            total = new_rows.shape[0]
            if not shared.radius and total:
                shared.radius = graph_radius(new_rows, self.basis, num_threads)
            report = Progress(total, "adding to the ANN graph", progress)
            for begin in range(0, total, ADD_BLOCK_ROWS):
                part = np.ascontiguousarray(new_rows[begin : begin + ADD_BLOCK_ROWS])
                keys = np.arange(start + begin, start + begin + part.shape[0], dtype=np.uint64)
                graph.add(keys, graph_rows(part, self.basis, shared.radius, num_threads), threads=num_threads)
                report.update(part.shape[0])
            report.close()
        row_of_key = np.full(start + total, -1, np.int64)
        row_of_key[: self.row_of_key.size] = self.row_of_key
        row_of_key[start:] = np.arange(W.shape[0] - total, W.shape[0])
        return AnnStage(W, shared, self.basis, row_of_key, self.settings)

    def subset(self, W: np.ndarray, keep: np.ndarray) -> AnnStage:
        """The stage over W = this W's rows where `keep` is True: the others
        leave the graph, the kept ones are renumbered."""
        keys = self.keys_of_rows()
        with self._shared.lock.writing():
            self._shared.writable().remove(keys[~keep].astype(np.uint64))
        renumbered = np.cumsum(keep) - 1
        present = self.row_of_key >= 0
        row_of_key = np.full(self.row_of_key.size, -1, np.int64)
        kept = present.copy()
        kept[present] = keep[self.row_of_key[present]]
        row_of_key[kept] = renumbered[self.row_of_key[kept]]
        return AnnStage(W, self._shared, self.basis, row_of_key, self.settings)


def graph_rows(rows: np.ndarray, basis: np.ndarray, radius: float, num_threads: int) -> np.ndarray:
    """W's rows (n, h) as the graph holds them: projected on `basis` (m, h),
    with the reduction's coordinate sqrt(R^2 - |p|^2) (0 past R): (n, m + 1)."""
    projected = scores_unchecked(np.ascontiguousarray(rows), basis, num_threads)
    norms = np.einsum("ij,ij->i", projected, projected, dtype=np.float64)
    extra = np.sqrt(np.maximum(radius * radius - norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([projected, extra[:, None]], axis=1))


def graph_queries(features: np.ndarray, basis: np.ndarray, num_threads: int) -> np.ndarray:
    """Query features (n, h) as the graph is searched with: projected, and a 0."""
    projected = scores_unchecked(features, basis, num_threads)
    return np.ascontiguousarray(np.concatenate([projected, np.zeros((projected.shape[0], 1), np.float32)], axis=1))


def graph_radius(rows: np.ndarray, basis: np.ndarray, num_threads: int) -> float:
    """The reduction's radius for these rows: RADIUS_HEADROOM x the largest
    norm of their projections (computed block by block)."""
    largest = 0.0
    for begin in range(0, rows.shape[0], ADD_BLOCK_ROWS):
        projected = scores_unchecked(np.ascontiguousarray(rows[begin : begin + ADD_BLOCK_ROWS]), basis, num_threads)
        largest = max(largest, float(np.sqrt(np.einsum("ij,ij->i", projected, projected, dtype=np.float64).max())))
    return RADIUS_HEADROOM * largest

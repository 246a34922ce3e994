"""A whole lemur index in PostgreSQL + pgvector.

Any client that can reach the database can search the index and add or
remove documents; lemur computes the features, fits new documents' rows of W
and runs the exact MaxSim rerank locally, and the database keeps the
documents and finds the candidates with pgvector's HNSW index. Needs
``pip install 'lemur-retrieval[postgres]'`` (psycopg 3 and pgvector's
adapter) and a server with the ``vector`` extension (0.7 or later, for
``halfvec``)::

    lemur.postgres.export(index, "postgresql://...", table="articles")
    remote = lemur.postgres.open("postgresql://...", table="articles")
    ids, scores = remote.search(query_tokens, query_counts, k=10, candidates=200)

Tables, for ``table="articles"`` (a plain or schema-qualified name):

``articles``: one row per document: ``id bigint PRIMARY KEY``, ``w
halfvec(h)`` (W's row, rounded to float16), ``graph halfvec(m + 1)`` (W's
row as the embedded ANN's graph holds it: projected on the model's m
leading feature directions, plus the coordinate that reduces inner
products to L2 distances; see :mod:`lemur.first_stage.ann`) under an HNSW
index on ``halfvec_l2_ops``, and ``tokens bytea``: the document's token
vectors in the model's space, float16, little-endian, one after the other
(count x d x 2 bytes).

Why the HNSW index is on ``graph`` and not on ``w`` with
``halfvec_ip_ops``: on W's full rows, HNSW finds few of the best rows (at
100k documents, h = 2048, pgvector's index on ``w <#>`` gave recall@10 after
the rerank of 0.30 at ef_search 400 and 0.43 at 1000, at 67 and 144 ms a
query: ``bench/scale.py``), while the projected, reduced rows are what HNSW
walks well. pgvector takes the graph's ``candidates_factor x k`` nearest
rows, orders them by ``w <#>`` the features (the exact inner product of the
float16 row) and keeps k, in one statement.

``articles_lemur``: the metadata, ``(key text PRIMARY KEY, value bytea,
number bigint)``: ``format`` (number: this module's version), ``model``
(value: the model and the OLS sample as a lemur ``.npz``, read back with
lemur's own strict reader), ``graph`` (value: the directions and the
reduction's radius, an ``.npz`` read without pickles and checked),
``generation`` (number: bumped by every change, so clients can tell that
the documents changed).

``articles_id_seq``: the default ids of added documents.

The candidates' scores are pgvector's inner products of the float16 rows
of W with the float16-rounded features; the rerank is exact MaxSim over the
stored float16 tokens (widened in registers, as for a local float16 token
store). SQL is never built from user data: values are bound parameters and
the table's name is checked and quoted as an identifier.
"""

from __future__ import annotations

import builtins
import io
import os
import re
import sys
import tempfile
import threading
import zipfile

import numpy as np

from lemur import fitting
from lemur._threads import resolve_num_threads
from lemur._validation import check_integer_array, check_positive_int
from lemur.first_stage import compact
from lemur.first_stage.ann import AnnSettings, graph_queries, graph_radius, graph_rows
from lemur.index import Index
from lemur.model import Model
from lemur.retrieval import (
    Documents,
    check_features,
    check_queries,
    rerank_unchecked,
)

FORMAT_NAME = "lemur-postgres"
FORMAT_VERSION = 1
#: pgvector indexes halfvec columns of up to this many dimensions (the graph's m + 1).
MAX_DIMS = 4000
#: pgvector's largest hnsw.ef_search; more candidates come from its iterative scan.
MAX_EF_SEARCH = 1000
DEFAULT_TABLE = "lemur_documents"
#: Counts of results up to this are taken as asked, larger ones are clamped
#: to the number of documents (which costs a count).
CHEAP_COUNT = 4096
#: The most bytes of a table row PostgreSQL keeps in its 8 kB page.
ROW_BYTES = 8000
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: PostgreSQL's identifier limit, less the longest suffix added ("_id_seq").
_MAX_NAME = 63 - len("_id_seq")


def _driver():
    """psycopg, its sql module, and pgvector's adapter (an ImportError that
    names the extra when they are missing)."""
    try:
        import psycopg
        from pgvector import HalfVector
        from pgvector.psycopg import register_vector
        from psycopg import sql
    except ImportError:
        raise ImportError("lemur.postgres needs psycopg 3 and pgvector: pip install 'lemur-retrieval[postgres]'") from None
    return psycopg, sql, HalfVector, register_vector


class _Names:
    """The checked, quoted identifiers of a table's objects."""

    def __init__(self, table: object) -> None:
        _, sql, _, _ = _driver()
        if not isinstance(table, str):
            raise TypeError(f"table must be a str, got {type(table).__name__}")
        parts = table.split(".")
        if len(parts) > 2 or not all(_NAME.match(part) and len(part) <= _MAX_NAME for part in parts):
            raise ValueError(f"table must be a name (letters, digits, _; not starting with a digit; at most "
                             f"{_MAX_NAME} characters) or schema.name, got {table!r}")
        *schema, name = parts
        self.table = table

        def qualified(suffix: str = ""):
            return sql.Identifier(*schema, name + suffix)

        self.documents = qualified()
        self.metadata = qualified("_lemur")
        self.sequence = qualified("_id_seq")
        self.hnsw = sql.Identifier(name + "_w_hnsw")
        # nextval() and setval() take the sequence's name as text: quoted, so
        # that it keeps its case (the parts are checked: no quotes inside)
        self.sequence_name = ".".join(f'"{part}"' for part in [*schema, name + "_id_seq"])


def _connect(dsn: object, create_extension: bool = False):
    """A connection to `dsn` (a libpq connection string or URI) with
    pgvector's types registered (and the extension created first, with
    `create_extension`); a psycopg connection is used as it is."""
    psycopg, _, _, register_vector = _driver()
    if isinstance(dsn, psycopg.Connection):
        connection = dsn
    elif isinstance(dsn, str):
        connection = psycopg.connect(dsn)
    else:
        raise TypeError(f"dsn must be a connection string or a psycopg.Connection, got {type(dsn).__name__}")
    try:
        if create_extension:
            with connection.transaction():
                connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
        try:
            register_vector(connection)
        except psycopg.ProgrammingError:
            raise ValueError("the database has no 'vector' extension: CREATE EXTENSION vector (pgvector >= 0.7), "
                             "or let lemur.postgres.export create it") from None
        connection.commit()
    except BaseException:
        if connection is not dsn:  # ours: closed again
            connection.close()
        raise
    return connection


def _model_bytes(model: Model, sample: np.ndarray | None) -> bytes:
    """The model and the OLS sample as a lemur .npz (no documents)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.npz")
        Index(model, np.empty((0, model.feature_dim), np.float32), sample=sample).save(path)
        with builtins.open(path, "rb") as file:
            return file.read()


def _model_of(data: bytes) -> tuple[Model, np.ndarray | None]:
    from lemur import formats

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.npz")
        with builtins.open(path, "wb") as file:
            file.write(data)
        loaded = formats.load(path)
    if isinstance(loaded, Index):
        return loaded.model, loaded.sample
    return loaded, None


def _graph_bytes(basis: np.ndarray, radius: float, candidates_factor: int) -> bytes:
    """The graph's directions, the reduction's radius and the candidates
    factor, as an .npz."""
    buffer = io.BytesIO()
    np.savez(buffer, basis=basis, radius=np.array(radius, np.float64),
             candidates_factor=np.array(candidates_factor, np.int64))
    return buffer.getvalue()


def _graph_of(data: bytes, feature_dim: int) -> tuple[np.ndarray, float, int]:
    """What _graph_bytes wrote, read without pickles and checked."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            basis, radius, factor = arrays["basis"], arrays["radius"], arrays["candidates_factor"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"the graph's metadata cannot be read: {exc}") from None
    basis = compact.check_basis(basis, feature_dim, name="the graph's directions", most=MAX_DIMS - 1)
    if radius.shape != () or radius.dtype != np.float64 or not (np.isfinite(radius) and radius >= 0):
        raise ValueError("the graph's radius must be one finite non-negative float64")
    if factor.shape != () or factor.dtype != np.int64 or factor < 1:
        raise ValueError("the graph's candidates_factor must be a positive int64")
    return basis, float(radius), int(factor)


class PgvectorStage:
    """pgvector's HNSW index over the table's graph rows, the nearest rows
    ordered by their exact inner products: the first stage of a
    :class:`PostgresIndex` (see :mod:`lemur.first_stage`; its keys are
    document ids). A batch of queries is one statement (a lateral join over
    the arrays of their graph vectors and features): one round trip,
    whatever its size.

    Parameters
    ----------
    connection : psycopg.Connection
    names : the table's identifiers
    basis : ndarray of float32, (m, h)
        The graph's directions.
    candidates_factor : int
        Rows taken from the graph per row asked.
    ef_search : int, optional
        pgvector's ``hnsw.ef_search`` (its candidate list; at most 1000);
        default: the rows taken from the graph, within pgvector's range.
        Past ef_search, pgvector's iterative scan goes on, in order
        (``hnsw.iterative_scan = strict_order``).
    """

    def __init__(self, connection: object, names: _Names, basis: np.ndarray, candidates_factor: int,
                 ef_search: int | None = None) -> None:
        self._connection, self._names, self.basis = connection, names, basis
        self.candidates_factor, self.ef_search = candidates_factor, ef_search

    @property
    def description(self) -> str:
        return (f"pgvector HNSW (halfvec_l2_ops) over {self._names.table}'s rows projected on "
                f"{self.basis.shape[0]} directions; {self.candidates_factor} x k rows ordered by w <#> f")

    @property
    def nbytes(self) -> int:
        return 0

    def top_k(self, features: np.ndarray, k: int, num_threads: int = 1,
              report: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """For each query, the ids of the k rows pgvector finds and their
        inner products (float16 row and features), best first; -1/-inf
        padding where it finds fewer."""
        _, sql, HalfVector, _ = _driver()
        count = max(k, self.candidates_factor * k)
        ef_search = self.ef_search or min(MAX_EF_SEARCH, max(40, count))
        query = sql.SQL(
            "SELECT q.n, c.id, c.score FROM unnest(%s::halfvec[], %s::halfvec[]) WITH ORDINALITY AS q(g, f, n) "
            "CROSS JOIN LATERAL (SELECT id, -(w <#> q.f) AS score FROM "
            "(SELECT id, w FROM {} ORDER BY graph <-> q.g LIMIT %s) AS near ORDER BY w <#> q.f LIMIT %s) AS c "
            "ORDER BY q.n, c.score DESC, c.id"
        ).format(self._names.documents)
        near = graph_queries(features, self.basis, num_threads)
        with self._connection.transaction(), self._connection.cursor() as cursor:
            cursor.execute("SELECT set_config('hnsw.ef_search', %s, true), "
                           "set_config('hnsw.iterative_scan', 'strict_order', true)", (str(ef_search),))
            cursor.execute(query, ([HalfVector(row) for row in near], [HalfVector(row) for row in features],
                                   count, k))
            found = cursor.fetchall()
        ids = np.full((features.shape[0], k), -1, np.int64)
        scores = np.full((features.shape[0], k), -np.inf, np.float32)
        if found:
            numbers, doc_ids, doc_scores = (np.array(column) for column in zip(*found))
            query_rows = numbers.astype(np.int64) - 1
            # the rows arrive by query, best first
            starts = np.searchsorted(query_rows, np.arange(features.shape[0]))
            positions = np.arange(query_rows.size) - starts[query_rows]
            ids[query_rows, positions] = doc_ids
            scores[query_rows, positions] = doc_scores
        return ids, scores

    def best_rows(self, features: np.ndarray, k: int, num_threads: int = 1, report: dict | None = None) -> np.ndarray:
        return np.sort(self.top_k(features, k, num_threads, report)[0], axis=1)


class PostgresIndex:
    """A lemur index kept in PostgreSQL: :meth:`search`, :meth:`top_k`,
    :meth:`add_documents` and :meth:`remove_documents` as on
    :class:`lemur.Index`. Made by :func:`open`.

    One connection; calls from several Python threads take turns on it
    (open one PostgresIndex per thread to run them at once). Use it as a
    context manager, or :meth:`close` it.

    Attributes
    ----------
    model : Model
    first_stage : PgvectorStage
        Its `ef_search` and `candidates_factor` may be set.
    """

    def __init__(self, connection: object, names: _Names, model: Model, sample: np.ndarray | None,
                 first_stage: PgvectorStage, radius: float) -> None:
        self._connection, self._names, self._model, self._sample = connection, names, model, sample
        self.first_stage, self._radius = first_stage, radius
        self._lock = threading.RLock()
        if sample is not None:
            self._ols = fitting.OLSSample(sample)

    # -- description -------------------------------------------------------

    @property
    def model(self) -> Model:
        return self._model

    @property
    def sample(self) -> np.ndarray | None:
        """The OLS sample new documents are fitted against (stored with the model)."""
        return self._sample

    @property
    def table(self) -> str:
        return self._names.table

    @property
    def num_docs(self) -> int:
        _, sql, _, _ = _driver()
        with self._lock:
            count = self._connection.execute(sql.SQL("SELECT count(*) FROM {}").format(self._names.documents))
            value = count.fetchone()[0]
            self._connection.commit()
        return int(value)

    @property
    def generation(self) -> int:
        """A number that every change of the documents (by any client) increases."""
        _, sql, _, _ = _driver()
        with self._lock:
            row = self._connection.execute(sql.SQL("SELECT number FROM {} WHERE key = 'generation'").format(
                self._names.metadata)).fetchone()
            self._connection.commit()
        return int(row[0])

    def __repr__(self) -> str:
        return f"PostgresIndex({self._model!r}, table={self.table!r})"

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> PostgresIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- searching -------------------------------------------------------------

    def features(self, query_tokens: np.ndarray, query_counts: object = None, *,
                 num_threads: int | None = None) -> np.ndarray:
        return self._model.features(query_tokens, query_counts, num_threads=num_threads)

    def top_k(self, features: np.ndarray, k: int, *, num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` documents pgvector finds for each query's features: ids
        (int64) and pgvector's inner products (float32), best first, padded
        with -1/-inf where it finds fewer."""
        threads = resolve_num_threads(num_threads)
        features = check_features(features, dim=self._model.feature_dim,
                                  dim_name="the model's feature dimension", num_threads=threads)
        k = self._at_most_documents(check_positive_int(k, name="k"))
        with self._lock:
            return self.first_stage.top_k(features, k, threads)

    def search(self, query_tokens: np.ndarray, query_counts: object, k: int = 10, candidates: int = 100, *,
               num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The whole pipeline, as :meth:`lemur.Index.search`: features here,
        the `candidates` best by pgvector (one statement for the batch),
        their tokens (one statement), the exact MaxSim rerank here.

        Returns ids (int64) and scores (float32), ``(num_queries, k)``, best
        first, padded with -1/-inf when fewer documents are found.
        """
        threads = resolve_num_threads(num_threads)
        k = check_positive_int(k, name="k")
        candidates = check_positive_int(candidates, name="candidates")
        if candidates < k:
            raise ValueError(f"candidates ({candidates}) must be >= k ({k})")
        candidates = self._at_most_documents(candidates)
        k = min(k, candidates)
        tokens, offsets = check_queries(query_tokens, query_counts, dim=self._model.input_dim,
                                        dim_name="the model's input dimension", num_threads=threads)
        tokens = self._model.centred(tokens, threads)
        features = self._model._pooled(tokens, offsets, self._model.query_scale, threads)
        with self._lock:
            found, _ = self.first_stage.top_k(features, candidates, threads)
            documents, rows, ids = self._documents_of(found)
        if documents is None:
            return np.full((found.shape[0], k), -1, np.int64), np.full((found.shape[0], k), -np.inf, np.float32)
        best, scores = rerank_unchecked(tokens, offsets, documents, rows, min(k, candidates), threads)
        return np.where(best >= 0, ids[np.maximum(best, 0)], -1), scores

    def _at_most_documents(self, count: int) -> int:
        """`count`, or the number of documents when it is larger (counted only
        for counts past a few thousand, so that the usual searches send no
        extra statement)."""
        return count if count <= CHEAP_COUNT else min(count, max(1, self.num_docs))

    def _documents_of(self, found: np.ndarray) -> tuple[Documents | None, np.ndarray, np.ndarray]:
        """The token store of the distinct ids in `found` (one statement),
        `found` as rows of it (-1: padding, or a document removed meanwhile)
        and the ids of its rows."""
        _, sql, _, _ = _driver()
        wanted = np.unique(found[found >= 0])
        fetched = []
        if wanted.size:
            fetched = self._connection.execute(
                sql.SQL("SELECT id, tokens FROM {} WHERE id = ANY(%s) AND tokens IS NOT NULL ORDER BY id").format(
                    self._names.documents), (wanted.tolist(),)).fetchall()
            self._connection.commit()
        if not fetched:
            return None, found, np.empty(0, np.int64)
        ids = np.array([row[0] for row in fetched], np.int64)
        width = 2 * self._model.input_dim
        blobs = [bytes(row[1]) for row in fetched]
        if any(len(blob) == 0 or len(blob) % width for blob in blobs):
            raise ValueError(f"{self.table}: a document's tokens are not a whole number of float16 vectors of "
                             f"dimension {self._model.input_dim}")
        counts = np.array([len(blob) // width for blob in blobs], np.int64)
        tokens = np.frombuffer(b"".join(blobs), dtype="<f2").reshape(-1, self._model.input_dim)
        tokens = np.ascontiguousarray(tokens, dtype=np.float16)
        if not np.isfinite(tokens).all():
            raise ValueError(f"{self.table}: a document's tokens hold NaN or infinite values")
        position = np.searchsorted(ids, found)
        present = (found >= 0) & (position < ids.size)
        present[present] = ids[position[present]] == found[present]
        rows = np.where(present, position, -1).astype(np.int64)
        return Documents(tokens, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)), rows, ids

    # -- changing the documents ---------------------------------------------------

    def add_documents(self, tokens: np.ndarray, counts: object, *, ids: object = None,
                      progress: bool | None = None, num_threads: int | None = None) -> np.ndarray:
        """Fit W's rows for new documents here (against the stored OLS sample,
        as :meth:`lemur.Index.add_documents`) and insert them, rows and
        float16 tokens, in one transaction: all of them or, if anything fails
        (an id already there, a dropped connection), none.

        Returns the new documents' ids (`ids`, or the next ones of the
        table's sequence).
        """
        psycopg, sql, _, _ = _driver()
        if self._sample is None:
            raise ValueError(f"{self.table}: the stored model has no OLS sample to fit new documents against")
        threads = resolve_num_threads(num_threads)
        documents = Documents.check(tokens, counts, name="tokens", counts_name="counts",
                                    dim=self._model.input_dim, allow_empty=True, num_threads=threads)
        stored = self._model.centred(documents.tokens, threads).astype(np.float16)
        if not np.isfinite(stored).all():
            raise ValueError("tokens overflow float16 (the database stores tokens as float16)")
        new_ids = None
        if ids is not None:
            new_ids = Index._check_new_ids(ids, documents.num_docs, existing=np.empty(0, np.int64), name="ids")
        W = fitting.fit_rows(self._model, self._ols, stored, documents.offsets, num_threads=threads,
                             progress=progress)
        with self._lock:
            try:
                with self._connection.transaction(), self._connection.cursor() as cursor:
                    if new_ids is None:
                        cursor.execute("SELECT nextval(%s) FROM generate_series(1, %s)",
                                       (self._names.sequence_name, documents.num_docs))
                        new_ids = np.array([row[0] for row in cursor.fetchall()], np.int64)
                    report = fitting.Progress(new_ids.size, "writing documents", progress)
                    _copy_rows(cursor, self._names, new_ids, W, self.first_stage.basis, self._radius, stored,
                               documents.offsets, report, threads)
                    report.close()
                    if ids is not None and new_ids.size:  # the sequence goes past explicit ids
                        cursor.execute(sql.SQL("SELECT setval(%s, GREATEST(%s, (SELECT last_value FROM {})))").format(
                            self._names.sequence), (self._names.sequence_name, int(new_ids.max())))
                    _bump_generation(cursor, self._names)
            except psycopg.errors.UniqueViolation:
                raise ValueError(f"ids: {self.table} already has a document with one of these ids") from None
        return new_ids

    def remove_documents(self, ids: object) -> None:
        """Delete the documents with these ids, in one transaction; raises
        ValueError, and deletes nothing, if an id is not in the table."""
        _, sql, _, _ = _driver()
        ids = np.unique(check_integer_array(ids, name="ids"))
        with self._lock, self._connection.transaction(), self._connection.cursor() as cursor:
            cursor.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s) RETURNING id").format(self._names.documents),
                           (ids.tolist(),))
            deleted = np.array([row[0] for row in cursor.fetchall()], np.int64)
            if deleted.size != ids.size:
                missing = np.setdiff1d(ids, deleted)  # raised inside the transaction: it rolls back
                raise ValueError(f"ids: {int(missing[0])} is not a document id of {self.table}")
            _bump_generation(cursor, self._names)


def _bump_generation(cursor: object, names: _Names) -> None:
    _, sql, _, _ = _driver()
    cursor.execute(sql.SQL("UPDATE {} SET number = number + 1 WHERE key = 'generation'").format(names.metadata))


def _copy_rows(cursor: object, names: _Names, ids: np.ndarray, W: np.ndarray, basis: np.ndarray, radius: float,
               tokens: np.ndarray | None, offsets: np.ndarray | None, report: fitting.Progress,
               num_threads: int) -> None:
    """COPY (binary) the documents' ids, rows of W and graph rows (as
    halfvec) and float16 token blobs (NULL without tokens) into the table."""
    _, sql, HalfVector, _ = _driver()
    statement = sql.SQL("COPY {} (id, w, graph, tokens) FROM STDIN WITH (FORMAT BINARY)").format(names.documents)
    near = graph_rows(W, basis, radius, num_threads)
    with cursor.copy(statement) as copy:
        copy.set_types(["int8", "halfvec", "halfvec", "bytea"])
        for i in range(ids.size):
            blob = None if tokens is None else tokens[offsets[i] : offsets[i + 1]].astype("<f2").tobytes()
            copy.write_row((int(ids[i]), HalfVector(W[i]), HalfVector(near[i]), blob))
            report.update(1)


def export(index: Index, dsn: object, table: str = DEFAULT_TABLE, *, dims: int = AnnSettings.dims,
           candidates_factor: int = AnnSettings.candidates_factor, connectivity: int = 16,
           ef_construction: int = 64, batch_size: int = 1000, replace: bool = False,
           maintenance_work_mem: str = "1GB", progress: bool | None = None,
           num_threads: int | None = None) -> None:
    """Write a whole index into PostgreSQL: its documents (ids, W's rows and
    their graph rows as halfvec, float16 tokens) in batches, the HNSW index
    over the graph rows, and the model with its OLS sample; all in one
    transaction, so an interrupted export leaves nothing behind.

    Parameters
    ----------
    index : lemur.Index
        Its tokens are stored as float16 (rounded, when they are float32).
    dsn : str or psycopg.Connection
        Where: a libpq connection string or URI. The ``vector`` extension is
        created if it is not there (which needs the right to).
    table : str, default "lemur_documents"
        The table's name (``name`` or ``schema.name``); its metadata table
        and id sequence are named after it.
    dims : int, default 128
        Directions of the graph rows (as :meth:`lemur.Index.build_ann`; an
        index with an ANN graph of as many directions lends its own).
    candidates_factor : int, default 8
        Rows taken from the graph per row asked (clients may change it).
    connectivity, ef_construction : int
        pgvector's HNSW ``m`` and ``ef_construction``.
    batch_size : int, default 1000
        Documents per COPY batch (the progress line's step).
    replace : bool, default False
        Drop a table of that name first; otherwise one is an error.
    maintenance_work_mem : str, default "1GB"
        For the HNSW build (pgvector builds fastest when the graph fits).
    progress : bool, optional
        Progress lines on stderr; default: when stderr is a terminal.
    num_threads : int, optional
        Parallel workers for the HNSW build (``max_parallel_maintenance_workers``
        = num_threads - 1).
    """
    psycopg, sql, _, _ = _driver()
    if not isinstance(index, Index):
        raise TypeError(f"index must be a lemur.Index, got {type(index).__name__}")
    names = _Names(table)
    h = index.model.feature_dim
    settings = AnnSettings(dims=dims, candidates_factor=candidates_factor).checked(h)
    if settings.dims + 1 > MAX_DIMS:
        raise ValueError(f"pgvector's HNSW indexes halfvec of up to {MAX_DIMS} dimensions: dims must be at most "
                         f"{MAX_DIMS - 1}, got {settings.dims}")
    connectivity = check_positive_int(connectivity, name="connectivity")
    ef_construction = check_positive_int(ef_construction, name="ef_construction")
    batch_size = check_positive_int(batch_size, name="batch_size")
    if not isinstance(maintenance_work_mem, str) or not re.fullmatch(r"\d+\s*(kB|MB|GB)", maintenance_work_mem):
        raise ValueError(f"maintenance_work_mem must be like '512MB' or '2GB', got {maintenance_work_mem!r}")
    threads = resolve_num_threads(num_threads)
    connection = _connect(dsn, create_extension=True)
    try:
        W, ids = index.W, index.doc_ids
        basis = index._graph_basis(settings.dims, threads)
        radius = (index.ann.radius if index.ann is not None and index.ann.basis is basis
                  else graph_radius(W, basis, threads))
        tokens = index.doc_tokens
        offsets = None if tokens is None else np.concatenate([[0], np.cumsum(index.doc_counts)])
        with connection.transaction(), connection.cursor() as cursor:
            if replace:
                for drop in ("DROP TABLE IF EXISTS {}", "DROP SEQUENCE IF EXISTS {}"):
                    for target in ((names.documents, names.metadata) if "TABLE" in drop else (names.sequence,)):
                        cursor.execute(sql.SQL(drop).format(target))
            cursor.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, w halfvec({}) NOT NULL, "
                                   "graph halfvec({}) NOT NULL, tokens bytea)")
                           .format(names.documents, sql.Literal(h), sql.Literal(settings.dims + 1)))
            # w is read for every row the graph returns: kept in the row, not
            # TOASTed (compressed and out of line) where a row fits a page;
            # the tokens, read only for the candidates, out of line uncompressed
            storage = "PLAIN" if 2 * (h + settings.dims + 1) + 64 <= ROW_BYTES else "EXTERNAL"
            cursor.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN w SET STORAGE {}, ALTER COLUMN graph SET STORAGE PLAIN, "
                                   "ALTER COLUMN tokens SET STORAGE EXTERNAL").format(names.documents, sql.SQL(storage)))
            cursor.execute(sql.SQL("CREATE TABLE {} (key text PRIMARY KEY, value bytea, number bigint)")
                           .format(names.metadata))
            cursor.execute(sql.SQL("CREATE SEQUENCE {} AS bigint MINVALUE 0 START 0").format(names.sequence))
            report = fitting.Progress(ids.size, f"exporting to {table}", progress)
            for start in range(0, ids.size, batch_size):
                part = slice(start, start + batch_size)
                part_offsets = None if offsets is None else offsets[start : start + batch_size + 1] - offsets[start]
                part_tokens = None if tokens is None else tokens[offsets[start] : offsets[min(ids.size, start + batch_size)]]
                _copy_rows(cursor, names, ids[part], W[part], basis, radius, part_tokens, part_offsets, report,
                           threads)
            report.close()
            if ids.size:
                cursor.execute("SELECT setval(%s, %s)", (names.sequence_name, int(ids.max())))
            cursor.execute("SELECT set_config('maintenance_work_mem', %s, true), "
                           "set_config('max_parallel_maintenance_workers', %s, true)",
                           (maintenance_work_mem, str(threads - 1)))
            if progress or (progress is None and sys.stderr.isatty()):
                print(f"building the HNSW index of {table} ...", file=sys.stderr, flush=True)
            cursor.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (graph halfvec_l2_ops) WITH (m = {}, "
                                   "ef_construction = {})").format(names.hnsw, names.documents,
                                                                 sql.Literal(connectivity), sql.Literal(ef_construction)))
            cursor.execute(sql.SQL("INSERT INTO {} (key, value, number) VALUES ('format', %s, %s), "
                                   "('model', %s, NULL), ('graph', %s, NULL), ('generation', NULL, 0)")
                           .format(names.metadata),
                           (FORMAT_NAME.encode(), FORMAT_VERSION, _model_bytes(index.model, index.sample),
                            _graph_bytes(basis, radius, settings.candidates_factor)))
    except psycopg.errors.DuplicateTable:
        raise ValueError(f"the database already has a table {table!r} (pass replace=True to drop it)") from None
    finally:
        if isinstance(dsn, str):
            connection.close()


def open(dsn: object, table: str = DEFAULT_TABLE, *, ef_search: int | None = None) -> PostgresIndex:
    """Open the index a :func:`export` wrote (or any client changed since).

    Parameters
    ----------
    dsn : str or psycopg.Connection
    table : str, default "lemur_documents"
    ef_search : int, optional
        pgvector's ``hnsw.ef_search`` for the searches (1 to 1000); default:
        the rows taken from the graph.
    """
    psycopg, sql, _, _ = _driver()
    names = _Names(table)
    if ef_search is not None and not 1 <= check_positive_int(ef_search, name="ef_search") <= MAX_EF_SEARCH:
        raise ValueError(f"ef_search must be between 1 and {MAX_EF_SEARCH}, got {ef_search}")
    connection = _connect(dsn)
    try:
        rows = connection.execute(sql.SQL("SELECT key, value, number FROM {}").format(names.metadata)).fetchall()
        connection.commit()
    except psycopg.errors.UndefinedTable:
        connection.close()
        raise ValueError(f"the database has no lemur table {table!r} (write one with lemur.postgres.export)") from None
    metadata = {key: (value, number) for key, value, number in rows}
    try:
        if (metadata.get("format", (None,))[0] != FORMAT_NAME.encode() or "model" not in metadata
                or "graph" not in metadata):
            raise ValueError(f"{table}_lemur is not a lemur metadata table")
        version = metadata["format"][1]
        if version is None or version > FORMAT_VERSION:
            raise ValueError(f"{table} was written in format version {version} by a newer lemur; this lemur "
                             f"reads versions up to {FORMAT_VERSION}")
        model, sample = _model_of(bytes(metadata["model"][0]))
        basis, radius, factor = _graph_of(bytes(metadata["graph"][0]), model.feature_dim)
    except Exception:
        connection.close()
        raise
    return PostgresIndex(connection, names, model, sample, PgvectorStage(connection, names, basis, factor, ef_search),
                         radius)

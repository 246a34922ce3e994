"""The exhaustive first stage at every precision (lemur.first_stage.exhaustive):
ids and scores bitwise those of the float32 scan, for every k, on inputs
that make the certification work hard."""

from __future__ import annotations

import numpy as np
import pytest

from lemur._dispatch import kernels
from lemur.first_stage import compact, exhaustive
from lemur.first_stage.exhaustive import ExhaustiveScan
from lemur.retrieval import top_k_unchecked

PRECISIONS = ("bfloat16", "int8")


def bench_like(num_docs: int, h: int = 256, num_queries: int = 12, seed: int = 0):
    """Rows of W and features that share a large common part, as pooled
    features do."""
    random = np.random.default_rng(seed)
    common = random.standard_normal(h)
    W = (0.05 * random.standard_normal((num_docs, h))).astype(np.float32)
    features = (common + 0.3 * random.standard_normal((num_queries, h))).astype(np.float32)
    basis = compact.subspace((common + 0.3 * random.standard_normal((500, h))).astype(np.float32), m=8)
    return W, features, basis


def assert_same_as_float32(scan: ExhaustiveScan, features: np.ndarray, k: int, num_threads: int = 2) -> None:
    expected_rows, expected_scores = top_k_unchecked(features, scan.W, k, num_threads)
    rows, scores = scan.top_k(features, k, num_threads)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(scores.view(np.uint32), expected_scores.view(np.uint32))
    np.testing.assert_array_equal(scan.best_rows(features, k, num_threads), np.sort(expected_rows, axis=1))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("k", [1, 5, 64, 200])
def test_bitwise_the_float32_scan(precision, k):
    W, features, basis = bench_like(3000)
    scan = ExhaustiveScan.build(W, precision, basis, num_threads=2)
    report = {}
    scan.top_k(features, k, 2, report)
    assert 0 < report["rescored"] < features.shape[0] * W.shape[0]  # the certified path ran
    assert_same_as_float32(scan, features, k)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("h", [256, 250, 17])
def test_a_single_query_rescored_rows_side_by_side(precision, h):
    """One query's rescored rows are scored several at a time (tiles of rows,
    units of 24): bitwise each row's float32 score, for rows with a tail past
    the vector width and counts that leave partial tiles and units."""
    W, features, basis = bench_like(3000, h=h, num_queries=1, seed=h)
    scan = ExhaustiveScan.build(W, precision, basis, num_threads=2)
    rescored = []
    for k in (1, 7, 100, 401, 402, 403):
        report = {}
        scan.top_k(features, k, 2, report)
        rescored.append(report["rescored"])
        assert_same_as_float32(scan, features, k)
    assert max(rescored) > 2 * 24 and any(count % 6 for count in rescored)  # several units, partial tiles


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("num_queries", [1, 7, 8, 40])
@pytest.mark.parametrize("h", [320, 352, 336])
def test_dots_of_every_tile_shape(precision, num_queries, h):
    """Where the CPU has AMX, rows of whole tiles (int8: h a multiple of 64,
    bfloat16: of 32; 352 is one only for bfloat16, 336 for neither) take tiles of 16 queries
    from 8 queries on (40: two full tiles and one of 8), VNNI / VDPBF16PS
    below and for other h: bitwise the float32 scan either way."""
    W, features, basis = bench_like(2000, h=h, num_queries=num_queries, seed=5)
    scan = ExhaustiveScan.build(W, precision, basis, num_threads=2)
    report = {}
    scan.top_k(features, 30, 2, report)
    assert report["rescored"] < features.shape[0] * W.shape[0] / 4  # the bound is tight enough to pay
    for k in (1, 30):
        assert_same_as_float32(scan, features, k)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_exact_ties_go_to_the_smaller_row(precision):
    random = np.random.default_rng(1)
    distinct = random.standard_normal((40, 128)).astype(np.float32)
    W = np.ascontiguousarray(np.repeat(distinct, 25, axis=0)[random.permutation(1000)])
    features = random.standard_normal((6, 128)).astype(np.float32)
    scan = ExhaustiveScan.build(W, precision, compact.subspace(features, m=4), num_threads=2)
    for k in (1, 10, 24, 25, 26, 90, 249):
        assert_same_as_float32(scan, features, k)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_near_ties_within_the_bound(precision):
    """Rows one float32 step apart in one value: their scores differ by far
    less than the bound, so only the exact rescoring can order them."""
    random = np.random.default_rng(2)
    base = random.standard_normal((50, 128)).astype(np.float32)
    W = np.repeat(base, 8, axis=0)
    columns = random.integers(0, 128, W.shape[0])
    steps = random.integers(-3, 4, W.shape[0])
    W[np.arange(W.shape[0]), columns] = [np.float32(v) + np.float32(s) * np.spacing(np.float32(v))
                                         for v, s in zip(W[np.arange(W.shape[0]), columns], steps)]
    W = np.ascontiguousarray(W[random.permutation(W.shape[0])])
    features = random.standard_normal((8, 128)).astype(np.float32)
    scan = ExhaustiveScan.build(W, precision, compact.subspace(features, m=4), num_threads=2)
    for k in (3, 8, 17, 100):
        assert_same_as_float32(scan, features, k)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_rows_of_very_different_norms(precision):
    random = np.random.default_rng(3)
    W = (random.standard_normal((700, 96)) * np.logspace(-8, 8, 700)[random.permutation(700), None]).astype(np.float32)
    W[::50] = 0
    features = (random.standard_normal((5, 96)) * np.array([1e-10, 1, 1e10, 1, 1])[:, None]).astype(np.float32)
    features[3] = 0
    scan = ExhaustiveScan.build(W, precision, compact.subspace(random.standard_normal((100, 96)).astype(np.float32),
                                                                m=4), num_threads=2)
    for k in (1, 7, 100):
        assert_same_as_float32(scan, features, k)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_k_up_to_every_document_and_a_single_document(precision):
    W, features, basis = bench_like(130, h=64)
    scan = ExhaustiveScan.build(W, precision, basis, num_threads=2)
    scan.certified_fraction = 1.0  # certify even where the float32 scan would be chosen
    for k in (100, 128, 129, 130):
        assert_same_as_float32(scan, features, k)
    one = ExhaustiveScan.build(np.ascontiguousarray(W[:1]), precision, basis, num_threads=1)
    one.certified_fraction = 1.0
    assert_same_as_float32(one, features, 1)
    two = ExhaustiveScan.build(np.ascontiguousarray(W[:2]), precision, basis, num_threads=1)
    two.certified_fraction = 1.0
    assert_same_as_float32(two, features, 1)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("order", ["ascending", "descending", "tied"])
def test_the_scans_threshold_is_the_kth_largest_lower_bound(precision, order):
    """Rows in increasing order of score (every row enters the heaps, each
    push replacing the root), decreasing (none after the first k) and in
    runs of equal rows: the scan's L is the k-th largest lower bound of all
    rows, which its kept pairs (every pair whose upper bound reaches L, so
    every pair whose lower bound does) give, whatever the threads."""
    W, features, basis = bench_like(3000, num_queries=1, seed=7)
    if order == "tied":
        W = np.ascontiguousarray(np.repeat(W[:300], 10, axis=0))
    else:
        rank = np.argsort(W @ features[0], kind="stable")
        W = np.ascontiguousarray(W[rank if order == "ascending" else rank[::-1]])
    rows = compact.build(W, precision, basis, num_threads=2)
    codes, params = compact.encode_queries(features, rows, num_threads=1)
    for k in (1, 50, 200):
        for threads in (1, 2, 3):
            lower_k, _, _, kept_queries, kept_lower, _ = kernels.compact_scan(
                rows.codes, rows.params, compact.KINDS[precision], rows.num_docs, rows.h, basis.shape[0],
                codes, params, k, False, exhaustive.SURVIVOR_LIMIT, threads)
            assert np.all(kept_queries == 0)
            assert lower_k[0] == np.sort(kept_lower)[-k]
        scan = ExhaustiveScan(W, rows)
        assert_same_as_float32(scan, features, k)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_float32_scan_outside_the_default_float_environment(precision, upward_rounding):
    """The bound assumes rounding to nearest and gradual underflow: in another
    environment of the calling thread the scan is the float32 one."""
    W, features, basis = bench_like(1000)
    scan = ExhaustiveScan.build(W, precision, basis, num_threads=2)
    with upward_rounding():
        assert not kernels.float_environment()
        report = {}
        scan.top_k(features, 10, 2, report)
    assert "rescored" not in report
    report = {}
    scan.top_k(features, 10, 2, report)
    assert report["rescored"] > 0


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_same_whatever_the_threads_and_the_chunks(precision, monkeypatch):
    W, features, basis = bench_like(2000, num_queries=40)
    scan = ExhaustiveScan.build(W, precision, basis, num_threads=3)
    expected = scan.top_k(features, 50, 1)
    monkeypatch.setattr(exhaustive, "HEAP_BUDGET_BYTES", 2000)  # chunks of a few queries
    for threads in (2, 3, 8):
        rows, scores = scan.top_k(features, 50, threads)
        np.testing.assert_array_equal(rows, expected[0])
        np.testing.assert_array_equal(scores.view(np.uint32), expected[1].view(np.uint32))
    assert_same_as_float32(scan, features, 50, num_threads=3)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_degenerate_rows_fall_back_to_float32_within_the_memory_limit(precision, monkeypatch):
    """Every row equal: every pair survives; past the limit the chunk is scanned in float32."""
    W = np.ascontiguousarray(np.tile(np.linspace(-1, 1, 64, dtype=np.float32), (1500, 1)))
    features = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    scan = ExhaustiveScan.build(W, precision, compact.subspace(features, m=2), num_threads=2)
    monkeypatch.setattr(exhaustive, "SURVIVOR_LIMIT", 500)
    report = {}
    scan.top_k(features, 10, 2, report)
    assert report.get("rescored", 0) == 0  # nothing was certified: the float32 scan ran
    assert_same_as_float32(scan, features, 10)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_scores_that_could_overflow_take_the_float32_scan(precision):
    W, features, basis = bench_like(500, h=64)
    W[7] = 1e30
    scan = ExhaustiveScan.build(W, precision, basis, num_threads=2)
    report = {}
    scan.top_k(features * np.float32(1e10), 5, 2, report)
    assert "rescored" not in report
    assert_same_as_float32(scan, features * np.float32(1e10), 5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_appended_and_subset_scans(precision):
    W, features, basis = bench_like(1200)
    first = ExhaustiveScan.build(np.ascontiguousarray(W[:800]), precision, basis, num_threads=2)
    grown = first.appended(W, np.ascontiguousarray(W[800:]), num_threads=2)
    assert_same_as_float32(grown, features, 30)
    keep = np.random.default_rng(5).random(1200) < 0.5
    kept_W = np.ascontiguousarray(W[keep])
    assert_same_as_float32(grown.subset(kept_W, keep), features, 30)
    assert grown.subset(kept_W, keep).precision == precision
    with pytest.raises(ValueError, match="does not match W"):
        ExhaustiveScan(kept_W, grown.rows)

"""The compact copies of W and their certified bound (lemur.first_stage.compact):
the codes and parameters against a float64 NumPy reference, and the bound
itself, pair by pair, on inputs built to make it tight."""

from __future__ import annotations

import numpy as np
import pytest
import reference

from lemur import _dispatch
from lemur._dispatch import kernels
from lemur.first_stage import compact
from lemur.retrieval import scores_unchecked

PRECISIONS = ("bfloat16", "int8")


def rows_of(codes: np.ndarray) -> np.ndarray:
    """Lanes-packed codes (blocks, steps, BLOCK * 4) one row after the other:
    (blocks * BLOCK, steps * 4) bytes."""
    blocks, steps, _ = codes.shape
    per_row = codes.reshape(blocks, steps, compact.BLOCK, 4).transpose(0, 2, 1, 3)
    return per_row.reshape(blocks * compact.BLOCK, steps * 4)


def unpacked_codes(rows: compact.CompactRows) -> np.ndarray:
    """The lanes-packed codes one row after the other: (num_docs, steps * 4) bytes."""
    return rows_of(rows.codes)[: rows.num_docs]


def decoded(rows: compact.CompactRows) -> np.ndarray:
    """The values the codes stand for, float64 (num_docs, h)."""
    raw = unpacked_codes(rows)
    params = compact.flat_params(rows)
    if rows.precision == "int8":
        codes = raw.astype(np.int64) - 128
        return (codes * params[:, 4:5].astype(np.float64))[:, : rows.h]
    bits = raw.view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64)[:, : rows.h]


def orthonormal(m: int, h: int, seed: int = 0) -> np.ndarray:
    q = np.linalg.qr(np.random.default_rng(seed).standard_normal((h, m)))[0]
    return np.ascontiguousarray(q.T, dtype=np.float32)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("h", [64, 130, 2048])
def test_row_codes_and_parameters_match_a_float64_reference(precision, h):
    random = np.random.default_rng(h)
    W = (random.standard_normal((150, h)) * np.logspace(-3, 3, 150)[:, None]).astype(np.float32)
    W[3] = 0
    basis = orthonormal(8, h)
    rows = compact.build(W, precision, basis, num_threads=2)
    values = decoded(rows)
    if precision == "bfloat16":
        np.testing.assert_array_equal(values, reference.bfloat16(W))
    else:
        scale = np.abs(W).max(axis=1) / np.float32(127)
        assert np.all(np.abs(W - values) <= 0.5 * scale[:, None] * (1 + 1e-6) + 1e-30)
    params = compact.flat_params(rows).astype(np.float64)
    W64 = W.astype(np.float64)
    projections = W64 @ basis.astype(np.float64).T
    np.testing.assert_allclose(params[:, compact.ROW_PARAMS:], projections, rtol=1e-6, atol=1e-30)
    # every stored norm is at or above the float64 norm it bounds
    for column, exact in enumerate([np.linalg.norm(W64, axis=1),
                                    np.linalg.norm(params[:, compact.ROW_PARAMS:], axis=1),
                                    np.linalg.norm(W64 - values, axis=1),
                                    np.linalg.norm(values, axis=1)]):
        assert np.all(params[:, column] >= exact * (1 - 1e-12)), column
        np.testing.assert_allclose(params[:, column], exact, rtol=1e-5, atol=1e-30)
    # the padding lanes of the last block hold code 0
    blocks = rows.codes.shape[0]
    padding = unpacked_codes(compact.CompactRows(precision, blocks * compact.BLOCK, rows.codes, rows.params,
                                                 basis))[150:]
    assert np.all(padding == (128 if precision == "int8" else 0))


@pytest.mark.parametrize("h", [2048, 100, 4])
@pytest.mark.parametrize("limit", [kernels.INT8_QUERY_LIMIT, 64, 128])
def test_every_int8_dot_kernel_gives_the_exact_integer_dots(h, limit):
    """Each int8 dot-product kernel this CPU runs (AMX tiles, VNNI, AVX2's
    VPMADDUBSW, plain vector code) equals the integer product of the codes,
    at the codes' extremes too, for every tail of its tile of queries: with
    query codes up to this CPU's limit, up to 64 (so AVX2's kernel runs on
    every AVX2 CPU, VNNI or not), and down to -128 (every kernel but AVX2's)."""
    rng = np.random.default_rng(h)
    steps, query_bytes = kernels.compact_layout(compact.KINDS["int8"], h)
    codes = rng.integers(0, 256, (2, steps, compact.BLOCK * 4), dtype=np.uint8)
    codes[0, :, : 4 * 8] = 255  # rows 0-7: the largest unsigned code everywhere
    queries = rng.integers(-limit, min(limit, 127) + 1, (21, query_bytes), dtype=np.int8)
    queries[0], queries[1] = -limit, min(limit, 127)  # the most negative and positive sums
    expected = queries.astype(np.int64) @ rows_of(codes).astype(np.int64).T
    dots = kernels.compact_block_dots(codes, compact.KINDS["int8"], h, queries.view(np.uint8))
    assert dots and list(dots)[-1] == "vector code"
    has_avx2 = _dispatch.variant in ("x86_64_v3", "x86_64_v4")
    assert ("AVX2 (VPMADDUBSW)" in dots) == (has_avx2 and limit <= 64)
    for name, got in dots.items():
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_int8_query_codes_stay_within_this_cpus_limit():
    """The query's codes use the whole range the int8 kernel here takes
    exactly, and no more (AVX2 without VNNI: 64, its 16-bit pair sums)."""
    assert kernels.INT8_QUERY_LIMIT == (
        64 if kernels.compact_instructions()["int8"] == "AVX2 (VPMADDUBSW)" else 127)
    W = np.random.default_rng(9).standard_normal((70, 40)).astype(np.float32)
    rows = compact.build(W, "int8", orthonormal(2, 40), num_threads=1)
    codes, _ = compact.encode_queries(W[:5], rows, 1)
    magnitudes = np.abs(codes.view(np.int8).astype(np.int64)).max(axis=1)
    np.testing.assert_array_equal(magnitudes, kernels.INT8_QUERY_LIMIT)


@pytest.mark.parametrize("h", [2048, 100])
def test_every_bfloat16_dot_kernel_is_within_float32_rounding_of_the_exact_dots(h):
    """Each bfloat16 kernel this CPU runs (AMX tiles, VDPBF16PS, or the rows
    widened to meet the query's float32 values) sums the products of the
    values the codes stand for, off by at most a float32 sum's rounding."""
    rng = np.random.default_rng(h)
    steps, query_bytes = kernels.compact_layout(compact.KINDS["bfloat16"], h)
    codes = rng.standard_normal((2, steps, compact.BLOCK * 2)).astype(np.float32)
    codes = (codes.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    values = rng.standard_normal((9, 2 * steps)).astype(np.float32)
    if query_bytes == steps * 8:  # the rows widened: the query's own float32 values
        query_codes, query_values = values, values.astype(np.float64)
    else:  # bfloat16 (truncated here: any bits are valid codes)
        query_codes = (values.view(np.uint32) >> 16).astype(np.uint16)
        query_values = (query_codes.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    row_values = (rows_of(codes).view(np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    expected = query_values @ row_values.T
    magnitude = np.abs(query_values) @ np.abs(row_values).T
    dots = kernels.compact_block_dots(codes, compact.KINDS["bfloat16"], h, query_codes.view(np.uint8))
    for name, got in dots.items():
        # a sum of 2 * steps products, rounded at most once each: gamma_n
        n = 2 * steps
        bound = n * 2.0**-24 / (1 - n * 2.0**-24) * magnitude
        assert np.all(np.abs(got - expected) <= bound), name


def test_block_dots_reject_codes_of_the_wrong_shape():
    steps, query_bytes = kernels.compact_layout(compact.KINDS["int8"], 64)
    queries = np.zeros((1, query_bytes), np.uint8)
    with pytest.raises(ValueError, match="codes must have shape"):
        kernels.compact_block_dots(np.zeros((1, steps + 1, compact.BLOCK * 4), np.uint8),
                                   compact.KINDS["int8"], 64, queries)
    with pytest.raises(ValueError, match="query_codes"):
        kernels.compact_block_dots(np.zeros((1, steps, compact.BLOCK * 4), np.uint8),
                                   compact.KINDS["int8"], 64, queries[:, 1:])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_appended_and_subset_copies_equal_copies_built_at_once(precision):
    random = np.random.default_rng(1)
    W = random.standard_normal((300, 96)).astype(np.float32)
    basis = orthonormal(4, 96)
    whole = compact.build(W, precision, basis, num_threads=2)
    grown = compact.appended(compact.build(W[:70], precision, basis, 1), W[70:], num_threads=2)
    np.testing.assert_array_equal(grown.codes, whole.codes)
    np.testing.assert_array_equal(grown.params, whole.params)
    keep = random.random(300) < 0.6
    kept = compact.subset(whole, keep)
    again = compact.build(np.ascontiguousarray(W[keep]), precision, basis, num_threads=1)
    assert kept.num_docs == int(keep.sum())
    np.testing.assert_array_equal(kept.codes, again.codes)
    np.testing.assert_array_equal(kept.params, again.params)


def bounds_of_every_pair(rows: compact.CompactRows, features: np.ndarray, num_threads: int = 2):
    """The scan with k = num_docs - 1: L, U and the kept pairs' bounds."""
    codes, params = compact.encode_queries(features, rows, num_threads)
    return kernels.compact_scan(rows.codes, rows.params, compact.KINDS[rows.precision], rows.num_docs, rows.h,
                                rows.basis.shape[0], codes, params, rows.num_docs - 1, True, 2**24, num_threads)


def assert_bounds_hold(rows: compact.CompactRows, W: np.ndarray, features: np.ndarray) -> None:
    lower_k, _, kept_rows, kept_queries, lower, upper = bounds_of_every_pair(rows, features)
    exact = scores_unchecked(features, W, 2)
    scored = exact[kept_queries, kept_rows]
    assert np.all(lower <= scored), (lower - scored).max()
    assert np.all(scored <= upper), (scored - upper).max()
    kept = np.zeros(exact.shape, bool)
    kept[kept_queries, kept_rows] = True
    assert np.all(exact[~kept] < np.repeat(lower_k, exact.shape[1]).reshape(exact.shape)[~kept])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_bound_holds_where_cauchy_schwarz_is_tight(precision):
    """Queries whose residual points along a row's own compact error, the
    case where the bound's inequalities are equalities."""
    random = np.random.default_rng(2)
    h = 256
    W = random.standard_normal((200, h)).astype(np.float32)
    W[:20] *= np.float32(1e4)
    W[20:40] *= np.float32(1e-4)
    basis = orthonormal(6, h, seed=3)
    rows = compact.build(W, precision, basis, num_threads=2)
    error = W.astype(np.float64) - decoded(rows)
    aligned = error[[0, 25, 100]] / np.linalg.norm(error[[0, 25, 100]], axis=1, keepdims=True)
    common = random.standard_normal(h)
    features = np.concatenate([
        aligned * 50,                              # f_perp along the rows' errors
        aligned * 50 + 30 * common,                # ... plus a part in no particular subspace
        basis[:3] * 40 + aligned * 1e-3,           # almost all in the exact directions
        random.standard_normal((4, h)) * 1e3,
        np.zeros((1, h)),
    ]).astype(np.float32)
    assert_bounds_hold(rows, W, features)
    # and it is nearly attained: the aligned queries' errors reach most of it
    _, _, kept_rows, kept_queries, lower, upper = bounds_of_every_pair(rows, features[:3])
    exact = scores_unchecked(features[:3], W, 2)[kept_queries, kept_rows].astype(np.float64)
    middle, half = (lower + upper.astype(np.float64)) / 2, (upper - lower.astype(np.float64)) / 2
    aligned_pairs = kept_rows == np.array([0, 25, 100])[kept_queries]
    # Where this CPU's scan rounds the query to bfloat16 too (VDPBF16PS, AMX:
    # 4 code bytes a step), the bound also holds the query's own rounding
    # error ||delta|| ||w^||, of the row's error's size, which no query can
    # align with the row's error at the same time: half of the bound is
    # attainable then. The same holds for int8 query codes of half the range
    # (AVX2's VPMADDUBSW), whose error is twice the row's.
    steps, query_bytes = kernels.compact_layout(compact.KINDS[precision], h)
    coarse_query = (query_bytes == 4 * steps) if precision == "bfloat16" else kernels.INT8_QUERY_LIMIT < 127
    attainable = 0.25 if coarse_query else 0.5
    assert np.all(np.abs(middle - exact)[aligned_pairs] > attainable * half[aligned_pairs])


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_bound_holds_for_rows_of_very_different_norms_and_tiny_values(precision):
    random = np.random.default_rng(4)
    h = 128
    W = (random.standard_normal((300, h)) * np.logspace(-30, 30, 300)[:, None]).astype(np.float32)
    W[5, :] = np.float32(1e-39)  # subnormal
    W[6, ::2] = 0
    basis = orthonormal(4, h, seed=5)
    rows = compact.build(W, precision, basis, num_threads=2)
    features = (random.standard_normal((6, h)) * np.array([1e-6, 1e-3, 1, 1e3, 1e6, 1])[:, None]).astype(np.float32)
    assert_bounds_hold(rows, W, features)


def test_subspace_gives_orthonormal_directions_in_order_of_energy():
    random = np.random.default_rng(6)
    directions = orthonormal(3, 50, seed=7)
    features = (random.standard_normal((400, 3)) * [30, 10, 3]) @ directions + 0.01 * random.standard_normal((400, 50))
    basis = compact.subspace(features.astype(np.float32), m=3)
    np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-6)
    overlap = np.abs(basis @ directions.T)
    np.testing.assert_allclose(np.linalg.norm(overlap, axis=1), 1, atol=1e-3)  # the same span
    assert np.all(np.diag(overlap) > 0.99)  # in the order of energy


def test_a_stored_copy_is_checked_against_what_it_must_hold():
    random = np.random.default_rng(8)
    W = random.standard_normal((70, 32)).astype(np.float32)
    basis = orthonormal(4, 32)
    rows = compact.build(W, "int8", basis, num_threads=1)
    assert compact.CompactRows.check("int8", 70, rows.codes, rows.params, basis).num_docs == 70
    with pytest.raises(ValueError, match="codes must be uint8 of shape"):
        compact.CompactRows.check("int8", 71 + 64, rows.codes, rows.params, basis)
    with pytest.raises(ValueError, match="params must be float32"):
        compact.CompactRows.check("int8", 70, rows.codes, rows.params[:, :-1], basis)
    with pytest.raises(ValueError, match="not orthonormal"):
        compact.CompactRows.check("int8", 70, rows.codes, rows.params, basis * 2)
    bad = rows.params.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        compact.CompactRows.check("int8", 70, rows.codes, bad, basis)
    bad[0, 0, 0] = -1
    with pytest.raises(ValueError, match="non-negative"):
        compact.CompactRows.check("int8", 70, rows.codes, bad, basis)
    with pytest.raises(ValueError, match="no compact copy"):
        compact.CompactRows.check("float32", 70, rows.codes, rows.params, basis)
    with pytest.raises(ValueError, match="precision must be one of"):
        compact.check_precision("float16")

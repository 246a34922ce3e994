"""The compiled kernels directly: element-wise accuracy, checks, GEMM, variants."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import lemur
import reference
from lemur import _dispatch

VARIANTS = _dispatch.runnable_variants()

# Dense grid, large and tiny magnitudes, both signs.
GRID = np.concatenate(
    [
        np.linspace(-30, 30, 600_001),
        np.geomspace(30, 1e30, 2_000),
        -np.geomspace(30, 1e30, 2_000),
        np.geomspace(1e-30, 1e-3, 2_000),
        -np.geomspace(1e-30, 1e-3, 2_000),
        [0.0],
    ]
).astype(np.float32)


@pytest.fixture(params=VARIANTS)
def kernels(request):
    return _dispatch.load_variant(request.param)


@pytest.mark.parametrize("name", list(lemur.ACTIVATIONS))
def test_activation_is_accurate_to_float32_rounding(kernels, name):
    values = GRID.copy()
    kernels.activation_inplace(values, lemur.ACTIVATIONS[name])
    with np.errstate(over="ignore"):
        exact = reference.activation(GRID.astype(np.float64), name)
    assert np.all(np.isfinite(values))
    error = np.abs(values - exact)
    # within about 1.7 ulp of max(1, |x|) everywhere ...
    assert np.max(error / np.maximum(1.0, np.abs(GRID))) < 2e-7
    # ... and relatively accurate near zero, where the values are tiny
    tiny = (np.abs(GRID) < 1e-3) & (np.abs(exact) > 1e-37)
    assert np.max(error[tiny] / np.abs(exact[tiny])) < 2e-7


def test_gelu_is_the_exact_form_not_tanh(kernels):
    # the tanh approximation differs from the erf form by up to ~5e-4 near |x| = 2
    x = np.linspace(-4, 4, 4001, dtype=np.float32)
    exact, approximate = x.copy(), x.copy()
    kernels.activation_inplace(exact, lemur.ACTIVATIONS["gelu"])
    kernels.activation_inplace(approximate, lemur.ACTIVATIONS["gelu-tanh"])
    assert np.max(np.abs(exact - approximate)) > 1e-4
    np.testing.assert_allclose(exact, reference.activation(x, "gelu"), atol=5e-7, rtol=0)


def test_exp_is_accurate(kernels):
    x = np.linspace(-87, 88, 1_000_001, dtype=np.float32)
    values = x.copy()
    kernels.exp_inplace(values)
    exact = np.exp(x.astype(np.float64))
    assert np.max(np.abs(values - exact) / exact) < 3e-7


def test_exp_clamps_outside_its_range(kernels):
    values = np.array([-1e30, -1000, -88, 89, 1000, 1e30], dtype=np.float32)
    kernels.exp_inplace(values)
    assert np.all(np.isfinite(values))
    assert np.all(values[:3] < 2e-38) and np.all(values[3:] > 1e38)


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (1000, 5), (70_000, 3)])
def test_first_nonfinite_row(kernels, shape):
    values = np.zeros(shape, dtype=np.float32)
    assert kernels.first_nonfinite_row(values, 2) == -1
    for row in sorted({shape[0] - 1, shape[0] // 2, 0}, reverse=True):
        values[row, -1] = np.nan if row % 2 else np.inf
        assert kernels.first_nonfinite_row(values, 2) == row


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_first_nonfinite_row_sees_every_position_of_a_row(kernels, bad):
    # 200 values: whole groups of four vectors at every width (4 x 16 floats
    # at most) and a tail past them; one bad value anywhere is found
    values = np.full((2, 200), np.float32(3.4e38))
    for position in range(values.shape[1]):
        values[1, position] = bad
        assert kernels.first_nonfinite_row(values, 1) == 1, position
        values[1, position] = -3.4e38


def test_first_nonfinite_row_of_empty_array(kernels):
    assert kernels.first_nonfinite_row(np.zeros((0, 4), np.float32), 1) == -1


def product_error_bound(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|fl(a b) - a b| <= gamma_(K+1) (|a| |b|) for a chain of K multiply-adds in
    float32 (K + 1 roundings per term where the multiply-add is not fused),
    gamma_n = n u / (1 - n u), u = 2**-24."""
    n = (a.shape[1] + 1) * 2.0**-24
    return n / (1 - n) * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))


# m, K, n: one row, several row blocks (> 256), several chunks of k (> 256),
# panels that do not divide n, and K = 0
PRODUCT_SHAPES = [(1, 7, 5), (33, 129, 40), (300, 600, 70), (7, 0, 9), (64, 128, 256)]


@pytest.mark.parametrize("shape", PRODUCT_SHAPES)
@pytest.mark.parametrize("transposed", [True, False])
def test_products_are_within_the_float32_error_bound(kernels, shape, transposed):
    m, K, n = shape
    random = np.random.default_rng(0)
    a = random.standard_normal((m, K), dtype=np.float32)
    source = random.standard_normal((n, K) if transposed else (K, n), dtype=np.float32)
    b = source.T if transposed else source
    out = np.full((m, n), np.nan, dtype=np.float32)
    kernels.gemm_packed(a, kernels.pack_matrix(source, transposed), out, 2)
    error = np.abs(out - a.astype(np.float64) @ b.astype(np.float64))
    assert np.all(error <= product_error_bound(a, b))


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name in ("baseline", "x86_64_v2")])
def test_products_follow_the_documented_order_exactly(variant):
    kernels = _dispatch.load_variant(variant)
    random = np.random.default_rng(8)
    a = random.standard_normal((13, 600), dtype=np.float32)  # three chunks of k
    b = (random.standard_normal((600, 21)) * np.logspace(-3, 3, 21)).astype(np.float32)
    out = np.empty((13, 21), np.float32)
    kernels.gemm_packed(a, kernels.pack_matrix(b, False), out, 2)
    assert np.array_equal(out, reference.unfused_product(a, b))


def test_product_rows_do_not_depend_on_the_other_rows_or_threads(kernels):
    # the fixed order of _tiles.h: each row alone, any block, any thread count
    random = np.random.default_rng(1)
    a = random.standard_normal((301, 700), dtype=np.float32)
    packed = kernels.pack_matrix(random.standard_normal((700, 90), dtype=np.float32), False)
    expected = np.empty((301, 90), np.float32)
    kernels.gemm_packed(a, packed, expected, 1)
    for threads in (2, 3, 8):
        out = np.empty_like(expected)
        kernels.gemm_packed(a, packed, out, threads)
        assert np.array_equal(out, expected)
    for rows in (slice(0, 1), slice(5, 6), slice(17, 100), slice(300, 301)):
        part = np.empty((rows.stop - rows.start, 90), np.float32)
        kernels.gemm_packed(np.ascontiguousarray(a[rows]), packed, part, 2)
        assert np.array_equal(part, expected[rows])


def test_products_refuse_a_matrix_packed_otherwise(kernels):
    a = np.ones((4, 8), np.float32)
    packed = kernels.pack_matrix(np.ones((8, 3), np.float32), False)
    with pytest.raises(ValueError, match="packed has shape"):  # another K
        kernels.gemm_packed(a, np.ascontiguousarray(packed[:, :4]), np.empty((4, 3), np.float32), 1)
    with pytest.raises(ValueError, match="packed has shape"):  # another variant's panels
        kernels.gemm_packed(a, np.ones((3, 8, packed.shape[2] // 2 or 1), np.float32),
                            np.empty((4, 3), np.float32), 1)


@pytest.mark.parametrize("h", [1, 16, 100, 2048])
def test_scores_are_within_the_float32_error_bound(kernels, h):
    random = np.random.default_rng(2)
    features = random.standard_normal((13, h), dtype=np.float32)
    W = random.standard_normal((50, h), dtype=np.float32)
    out = np.empty((13, 50), np.float32)
    kernels.score_matrix(features, W, out, 2)
    error = np.abs(out - features.astype(np.float64) @ W.T.astype(np.float64))
    assert np.all(error <= product_error_bound(features, W.T))


@pytest.mark.parametrize("variant", [name for name in VARIANTS if name in ("baseline", "x86_64_v2")])
def test_scores_follow_the_documented_order_exactly(variant):
    # the variants without FMA round every product, so NumPy can follow the
    # order of _tiles.h step by step: 4 lanes (SSE), pairwise, then the tail
    kernels = _dispatch.load_variant(variant)
    random = np.random.default_rng(7)
    features = random.standard_normal((40, 67), dtype=np.float32)
    W = (random.standard_normal((9, 67)) * np.logspace(-3, 3, 67)).astype(np.float32)
    out = np.empty((40, 9), np.float32)
    kernels.score_matrix(features, W, out, 2)  # the lane-wise products (32+ queries)
    small = np.empty((3, 9), np.float32)
    kernels.score_matrix(np.ascontiguousarray(features[:3]), W, small, 1)  # the register tiles
    expected = np.array([[reference.unfused_score(f, w, 4) for w in W] for f in features])
    assert np.array_equal(out, expected) and np.array_equal(small, expected[:3])


def test_a_score_depends_only_on_its_query_and_row(kernels):
    # any batch, any position in a tile or block, any thread count, register
    # tiles (small batches, spans) or lane-wise products (32 queries and more):
    # the same float32
    random = np.random.default_rng(3)
    features = random.standard_normal((70, 1043), dtype=np.float32)
    W = random.standard_normal((101, 1043), dtype=np.float32)
    expected = np.empty((70, 101), np.float32)
    kernels.score_matrix(features, W, expected, 1)
    for queries, docs in [(slice(0, 1), slice(0, 101)), (slice(3, 5), slice(7, 8)),
                          (slice(9, 70), slice(50, 101)), (slice(69, 70), slice(100, 101)),
                          (slice(0, 4), slice(0, 101)), (slice(0, 5), slice(3, 90)),
                          (slice(1, 32), slice(0, 101)), (slice(2, 34), slice(1, 100))]:
        part = np.empty((queries.stop - queries.start, docs.stop - docs.start), np.float32)
        kernels.score_matrix(np.ascontiguousarray(features[queries]), np.ascontiguousarray(W[docs]),
                             part, 3)
        assert np.array_equal(part, expected[queries, docs])


def test_openblas_stays_on_the_calling_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    kernels = _dispatch.kernels
    assert kernels.blas_info()["num_threads"] == 1
    rows = np.random.default_rng(4).standard_normal((300, 40)).astype(np.float32)
    expected = np.empty((40, 40))
    kernels.gram_upper_float64(rows, expected, 2)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        gram = np.empty((40, 40))
        kernels.gram_upper_float64(rows, gram, 2)  # puts it back to one thread first
        assert kernels.blas_info()["num_threads"] == 1
    assert np.array_equal(np.triu(gram), np.triu(expected))


def test_dispatch_picks_the_best_runnable_variant_unless_told():
    assert _dispatch.variant == (os.environ.get("LEMUR_KERNELS") or VARIANTS[0])
    assert _dispatch.forced == bool(os.environ.get("LEMUR_KERNELS"))
    assert "baseline" in VARIANTS


def test_unknown_or_unsupported_variants_are_refused():
    with pytest.raises(ImportError, match="unknown kernel variant 'avx9000'"):
        _dispatch.load_variant("avx9000")


@pytest.mark.parametrize("variant", ["avx9000", "x86_64_v9"])
def test_lemur_kernels_asking_for_an_unknown_variant_is_a_clear_error(variant):
    environment = {**os.environ, "LEMUR_KERNELS": variant}
    result = subprocess.run([sys.executable, "-c", "import lemur"], env=environment,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert f"unknown kernel variant {variant!r}" in result.stderr
    assert "LEMUR_KERNELS" in result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_lemur_kernels_forces_a_variant_and_show_config_says_so(variant):
    environment = {**os.environ, "LEMUR_KERNELS": variant}
    result = subprocess.run(
        [sys.executable, "-c", "import lemur; print(lemur.show_config('dicts')['lemur']['kernel variant'])"],
        env=environment, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"{variant} (forced by LEMUR_KERNELS)"


def test_float16_widening_is_exact_for_every_bit_pattern(kernels):
    """The token stores' float16 -> float32 (F16C, arm64 or integer code):
    each of the 63,488 finite values (subnormals included; the others are
    refused before any kernel) as NumPy widens it."""
    bits = np.arange(65536, dtype=np.uint16)
    bits = bits[(bits & 0x7C00) != 0x7C00]
    docs = bits.reshape(-1, 8)  # one-token documents of 8 values
    query = np.eye(8, dtype=np.float32)  # 8 one-token queries picking each value
    offsets = np.arange(docs.shape[0] + 1, dtype=np.int64)
    candidates = np.tile(np.arange(docs.shape[0], dtype=np.int64), (8, 1))
    out = np.empty(candidates.shape, np.float32)
    kernels.maxsim_scores(query, np.arange(9, dtype=np.int64), docs, offsets, candidates, out, 2)
    widened = bits.view(np.float16).astype(np.float32).reshape(-1, 8).T
    np.testing.assert_array_equal(out, widened)  # exact (a sum from +0 makes -0 +0)


def test_bfloat16_rounding_is_to_nearest_even_and_flushes_subnormals(kernels):
    """matmul_bfloat16's rounding (VCVTNE2PS2BF16's rule, also its fallback):
    every exponent, ties both ways, subnormals, infinities; NaN stays NaN."""
    random = np.random.default_rng(0)
    bits = random.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    ties = (random.integers(0, 2**16, 2000).astype(np.uint32) << 16) | 0x8000
    bits = np.concatenate([bits, ties, ties | 0x10000, [0x7F7FFFFF, 0x00800000, 0x007FFFFF, 0x80000001]])
    values = bits.astype(np.uint32).view(np.float32)
    finite = values[np.isfinite(values)]
    np.testing.assert_array_equal(kernels.rounded_bfloat16(finite, 2).astype(np.float64), reference.bfloat16(finite))
    special = kernels.rounded_bfloat16(np.array([np.inf, -np.inf, np.nan], np.float32), 1)
    assert special[0] == np.inf and special[1] == -np.inf and np.isnan(special[2])
    halves = np.array([1.5, -2.0e-3, 65504.0], np.float16)
    np.testing.assert_array_equal(kernels.rounded_bfloat16(halves, 1), reference.bfloat16(halves.astype(np.float32)))


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (5, 7, 3), (33, 65, 100), (200, 300, 70), (129, 17, 600)])
@pytest.mark.parametrize("transpose_a, transpose_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_bfloat16_products_are_the_rounded_operands_products(kernels, m, n, k, transpose_a, transpose_b,
                                                             accumulate):
    """op(a) op(b) from operands rounded to bfloat16: every product of two
    bfloat16 values is exact in float32, so out is off the float64 product
    of the rounded operands only by float32 sums, at most (k + 1) u of the
    sum of magnitudes (u = 2^-24; AMX tiles and the sgemm fallback alike)."""
    random = np.random.default_rng(m * 1000 + n + k)
    a = random.standard_normal((k, m) if transpose_a else (m, k)).astype(np.float32)
    b = (random.standard_normal((n, k) if transpose_b else (k, n)) * 10.0 ** random.integers(-3, 4)).astype(
        np.float32)
    start = random.standard_normal((m, n)).astype(np.float32)
    out = start.copy()
    kernels.matmul_bfloat16(a, transpose_a, b, transpose_b, out, accumulate, 2)
    rounded_a = reference.bfloat16(a.T if transpose_a else a)
    rounded_b = reference.bfloat16(b.T if transpose_b else b)
    expected = rounded_a @ rounded_b + (start if accumulate else 0)
    magnitude = np.abs(rounded_a) @ np.abs(rounded_b) + (np.abs(start) if accumulate else 0)
    assert np.all(np.abs(out - expected) <= (k + 1) * 2.0**-24 * magnitude + 1e-38)


def test_bfloat16_products_on_tiles_do_not_depend_on_the_threads_and_elsewhere_are_matmuls(kernels):
    """On AMX tiles each block of out is computed alone: bitwise the same for
    any number of threads. Without AMX the product is matmul of the rounded
    operands, bitwise (and so depends on the threads as sgemm's row blocks do)."""
    random = np.random.default_rng(1)
    a, b = random.standard_normal((300, 530)).astype(np.float32), random.standard_normal((530, 700)).astype(np.float32)
    outs = []
    for threads in (1, 2, 3):
        out = np.empty((300, 700), np.float32)
        kernels.matmul_bfloat16(a, False, b, False, out, False, threads)
        outs.append(out)
        if not kernels.AMX_BFLOAT16:
            expected = np.empty_like(out)
            kernels.matmul(kernels.rounded_bfloat16(a, 1), False, kernels.rounded_bfloat16(b, 1), False, expected,
                           False, threads)
            np.testing.assert_array_equal(out, expected)
    if kernels.AMX_BFLOAT16:
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(outs[0], outs[2])


def test_bfloat16_products_of_empty_shapes(kernels):
    out = np.full((3, 4), 7.0, np.float32)
    kernels.matmul_bfloat16(np.empty((3, 0), np.float32), False, np.empty((0, 4), np.float32), False, out, True, 2)
    assert (out == 7).all()
    kernels.matmul_bfloat16(np.empty((3, 0), np.float32), False, np.empty((0, 4), np.float32), False, out, False, 2)
    assert (out == 0).all()


def test_amx_is_only_claimed_by_the_avx512_variant(kernels):
    if kernels.__name__.rsplit(".", 1)[-1] != _dispatch.VARIANTS["x86_64_v4"][0]:
        assert kernels.AMX_BFLOAT16 is False

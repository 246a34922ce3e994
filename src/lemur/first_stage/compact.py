r"""Compact copies of W (bfloat16, int8) and the bound that keeps their first
stage exact.

The first stage must return, for every query, the k rows of W with the
largest float32 scores s32(f, w) (the scores of :mod:`lemur._tiles`, ties to
the smaller row), bit for bit. A compact copy of W gives a cheaper
approximate score ŝ; a proven bound E with |ŝ − s32| <= E for every pair
then says which rows might be among the k best (those whose upper bound
ŝ + E reaches the k-th largest lower bound ŝ − E), and only those are scored
again in float32.

The approximation
-----------------
Write u = 2^-24 (float32's unit roundoff) and γ_n = n u / (1 − n u); a sum of
n rounded operations is off by at most γ_n times the sum of its terms'
magnitudes. For each row w (float32, length h) the index keeps a compact row
ŵ:

* bfloat16: ŵ = bf16(w), each value rounded to nearest even (values below
  2^-126 in magnitude to zero);
* int8: ŵ = a q, q = round(w / a) in [−127, 127], a = max|w| / 127;

and m orthonormal directions V (rows v_1..v_m, float32; the leading
principal directions of the model's features) with each row's projections
p_k = fl32(<v_k, w>) (computed in float64, then rounded). For a query's
features f (float32) the scan computes, once per query (in float64),

* c = fl32(V f) and f⊥ = fl32(f − g), g = Σ_k c_k v_k; so f = g + f⊥ + ε
  exactly, with ε = f − g − f⊥ (its norm computed, plus a margin for the
  float64 arithmetic);
* bfloat16: q' = bf16(f⊥); int8: f⊥ ≈ b q_f, q_f = round(f⊥ / b) in
  [−L, L], b = max|f⊥| / L, with L = 127, or L = 64 where the CPU's int8
  kernel is AVX2's VPMADDUBSW (no VNNI), whose sums of two products
  saturate at 16 bits (2 · 255 · 64 < 2^15); in both cases
  δ = f⊥ − (q' or b q_f) exactly.

and for each row ŝ = fl(fl(Σ_k c_k p_k) + X), with X the compact dot product:
for bfloat16 X = Σ_i q'_i ŵ_i (exact products, float32 sums: VDPBF16PS,
AMX-BF16 tiles, or widened multiply-adds, where q' = f⊥ and δ = 0), for
int8 X = fl(fl(a b) D), D = Σ_i q_f,i q_i (exact, int32; with the row's
codes stored shifted by 128 for the unsigned operand of VPDPBUSD and
VPMADDUBSW, and the shift taken back with the query's code sum).

The bound
---------
Exactly, s = <f, w> = <g, w> + <f⊥, w> + <ε, w>, where <g, w> = Σ c_k <v_k, w>
and <f⊥, w> = <f⊥, ŵ> + <f⊥, w − ŵ>, <f⊥, ŵ> = <f⊥ − δ, ŵ> + <δ, ŵ>, and
<f⊥ − δ, ŵ> is X before its rounding (bfloat16: <q', ŵ>; int8: a b D).
Bounding each remaining inner product by Cauchy–Schwarz:

    |ŝ − s| <= ||ε|| ||w||                                   the split of f
             + Σ_k |c_k| |p_k − <v_k, w>| + γ_(m+2) ||c|| ||p||   the projections
             + ||f⊥|| ||w − ŵ||                               the compact row
             + ||δ|| ||ŵ||                                    the compact query
             + γ_(d_X) ||q'|| ||ŵ||                           bfloat16: X's sums
             + 4u (|X| + |Σ c_k p_k|)                         int8: X's products; ŝ's sum

where |p_k − <v_k, w>| <= u (|p_k| + 2^-40 ||w||) + 2^-40 ||w|| (one rounding of
a float64 sum), so the second line is at most 2u ||c|| (||p|| + ||w||) +
γ_(m+2) ||c|| ||p||, and d_X is the depth of X's sums, with s = ⌈h/2⌉
steps of two values: 2 s + 2 with VDPBF16PS (two roundings a step), 4 s + 2
for widened multiply-adds (at most two a value) and for AMX-BF16 (whose
order of additions is the implementation's; the SDM gives it VDPBF16PS's). The float32 score itself is
|s32 − s| <= γ_D Σ|f_i w_i| <= γ_D ||f|| ||w||, where D = h/VF + log2(VF) +
h mod VF + 1 is the most roundings on the way of one product into s32 (its
lane's chain, the pairwise sum of the VF lanes, the tail: _tiles.h's
lemur_score_depth; VF is this build's vector width, and the rescoring uses
the same kernels). So

    |ŝ − s32| <= E = α_w ||w|| + α_p ||p|| + α_r ||w − ŵ|| + α_c ||ŵ|| + 4u (|X| + |Σ c_k p_k|)

with, per query, α_w = γ_D ||f|| + ||ε|| + 2u ||c||, α_p = (2u + γ_(m+2)) ||c||,
α_r = ||f⊥||, α_c = ||δ|| (+ γ_(d_X) ||q'|| for bfloat16), and, per row, the
four norms: all computed in float64 and stored rounded up (multiplied by
1 + 2^-20 before the rounding to float32). The scan computes E in float32 and
widens it to E' = E (1 + 16u) + 8u |ŝ| + 10^-30, which covers the roundings of
computing E, ŝ − E' and ŝ + E' themselves, and results below 2^-126 that
VDPBF16PS and AMX-BF16 flush to zero (one a rounding: at most (4 s + 2) 2^-126
in all). The scan runs only where
max ||f|| max ||w|| < 10^37, so that no score overflows, and where the
calling thread's floating point rounds to nearest with gradual underflow
(the float32 scan otherwise).

Why it is tight enough to pay: the split puts most of f into the m exact
directions (pooled features share a large common part), so f⊥ and with it
the compact errors are several times smaller than f's; on bench/compare.py's
data ||f⊥|| is 0.13 ||f|| with m = 16.

Which rows are rescored (first_stage/exhaustive.py): let L be the k-th
largest lower bound and U the (k+1)-th largest upper bound over all rows. A
row with upper bound below L cannot be among the k best (k rows score at
least L, more than it); for top_k every other row is rescored in float32 and
the k best taken. For a candidate set, which needs only the set of the k
best, a row whose lower bound is above U is certainly in it (only rows with
upper bound above U, at most k of them, it among them, can score as high as
it), and only the rows in between are rescored. Either way the result is
bitwise the float32 path's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lemur._dispatch import kernels
from lemur._scratch import aligned_empty

#: Exact directions per index (the m above).
DIRECTIONS = 16
#: The most directions a stored basis may have (_compact.h).
MAX_DIRECTIONS = 64
#: Rows per block of the scan and of the row parameters (_compact.h).
BLOCK = 64
#: Row parameters before the projections, in _compact.h's order.
ROW_PARAMS = 5
#: Query parameters before the coefficients, in _compact.h's order.
QUERY_PARAMS = 6
#: How far from orthonormal a stored basis may be (the bound assumes rows of
#: norm at most 2; it stays valid for any V, but a far-off one makes it loose).
BASIS_TOLERANCE = 1e-3

#: The widest rows the compact scan takes: the int32 sums of an int8 dot
#: product (codes + 128 times codes, 255 * 127 * h) must not overflow.
MAX_WIDTH = 65536

PRECISIONS = ("float32", "bfloat16", "int8")
#: The scan's kind of each compact precision (_compact.h's lemur_compact_kind).
KINDS = {"int8": 0, "bfloat16": 1}


def check_precision(precision: object) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return str(precision)


def subspace(features: np.ndarray, m: int = DIRECTIONS, seed: int = 0) -> np.ndarray:
    """m orthonormal directions (m, h) float32 close to the leading principal
    (uncentred) directions of `features` (rows of psi): two steps of subspace
    iteration from a seeded random start. Any orthonormal V keeps the scan
    exact; a good one keeps it fast."""
    n, h = features.shape
    m = min(m, h, max(1, n))
    random = np.random.default_rng(seed)
    Z = features.astype(np.float64)
    basis = np.linalg.qr(Z.T @ random.standard_normal((n, min(n, m + 8))))[0]
    for _ in range(2):
        basis = np.linalg.qr(Z.T @ (Z @ basis))[0]
    # the leading m of those, by a small eigen-decomposition
    _, vectors = np.linalg.eigh(basis.T @ (Z.T @ (Z @ basis)))
    top = basis @ vectors[:, ::-1][:, :m]
    return np.ascontiguousarray(np.linalg.qr(top)[0].T, dtype=np.float32)


def check_basis(basis: np.ndarray, h: int, name: str = "basis", most: int = MAX_DIRECTIONS) -> np.ndarray:
    """A stored basis: float32 (m, h), 1 <= m <= `most`, finite,
    orthonormal rows (within BASIS_TOLERANCE)."""
    if basis.dtype != np.float32 or basis.ndim != 2 or basis.shape[1] != h or not 1 <= basis.shape[0] <= most:
        raise ValueError(f"{name} must be float32 of shape (m, {h}) with 1 <= m <= {most}, "
                         f"got {basis.dtype} {basis.shape}")
    wide = basis.astype(np.float64)
    if not np.isfinite(wide).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    off = np.abs(wide @ wide.T - np.eye(basis.shape[0])).max()
    if off > BASIS_TOLERANCE:
        raise ValueError(f"{name}'s rows are not orthonormal (off by {off:.2g})")
    return np.ascontiguousarray(basis)


@dataclass(frozen=True)
class CompactRows:
    """A compact copy of W: the codes, their parameters and the directions.

    codes: uint8 (num_blocks, steps, 4 * BLOCK), lanes-packed (_compact.h):
        a step holds 4 bytes of each of a block's rows (four int8 codes + 128,
        or two bfloat16 values)
    params: float32 (num_blocks, ROW_PARAMS + m, BLOCK)
    basis: float32 (m, h), orthonormal rows
    """

    precision: str
    num_docs: int
    codes: np.ndarray
    params: np.ndarray
    basis: np.ndarray

    @property
    def h(self) -> int:
        return int(self.basis.shape[1])

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.params.nbytes + self.basis.nbytes

    @classmethod
    def check(cls, precision: str, num_docs: int, codes: np.ndarray, params: np.ndarray,
              basis: np.ndarray, *, check_values: bool = True) -> CompactRows:
        """Stored arrays, checked against each other and against W's shape
        (num_docs, h = the basis's width): dtypes, shapes, a valid basis,
        and with `check_values` finite non-negative norms (not for a mapped
        file, whose large arrays are not read at opening: at 100k documents
        the parameters are 8 MB). (The codes are trusted as lemur wrote
        them, as W's values are.)"""
        precision = check_precision(precision)
        if precision == "float32":
            raise ValueError("a float32 index has no compact copy")
        h = basis.shape[1] if basis.ndim == 2 else -1
        basis = check_basis(basis, h, name="the compact copy's basis")
        blocks = -(-num_docs // BLOCK)
        steps, _ = kernels.compact_layout(KINDS[precision], h)
        expected = {"codes": (np.dtype(np.uint8), (blocks, steps, 4 * BLOCK)),
                    "params": (np.dtype(np.float32), (blocks, ROW_PARAMS + basis.shape[0], BLOCK))}
        for name, array in (("codes", codes), ("params", params)):
            dtype, shape = expected[name]
            if array.dtype != dtype or array.shape != shape:
                raise ValueError(f"the compact copy's {name} must be {dtype} of shape {shape}, "
                                 f"got {array.dtype} {array.shape}")
            if not array.flags.c_contiguous:
                raise ValueError(f"the compact copy's {name} must be C-contiguous")
        norms = params[:, : ROW_PARAMS - 1]
        if check_values and not (np.isfinite(params).all() and (norms >= 0).all()):
            raise ValueError("the compact copy's parameters must be finite, with non-negative norms")
        return cls(precision, num_docs, codes, params, basis)


def _empty(precision: str, num_docs: int, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and parameters for num_docs rows, the lanes past them holding code 0."""
    blocks = -(-num_docs // BLOCK)
    steps, _ = kernels.compact_layout(KINDS[precision], basis.shape[1])
    codes = aligned_empty((blocks, steps, 4 * BLOCK), np.uint8)
    if blocks:
        codes[-1] = 128 if precision == "int8" else 0
    return codes, np.zeros((blocks, ROW_PARAMS + basis.shape[0], BLOCK), np.float32)


def build(W: np.ndarray, precision: str, basis: np.ndarray, num_threads: int) -> CompactRows:
    """The compact copy of W (num_docs, h) at `precision` ("bfloat16" or
    "int8") with the directions `basis` (m, h): one streaming pass over W."""
    codes, params = _empty(precision, W.shape[0], basis)
    kernels.compact_encode_rows(W, basis, KINDS[precision], codes, params, 0, num_threads)
    return CompactRows(precision, W.shape[0], codes, params, basis)


def appended(compact: CompactRows, W_new: np.ndarray, num_threads: int) -> CompactRows:
    """The compact copy with the rows W_new added at the end (new arrays;
    this copy's are left as they are)."""
    num_docs = compact.num_docs + W_new.shape[0]
    codes, params = _empty(compact.precision, num_docs, compact.basis)
    kept = compact.codes.shape[0]
    codes[:kept] = compact.codes
    params[:kept] = compact.params
    kernels.compact_encode_rows(W_new, compact.basis, KINDS[compact.precision], codes, params,
                                compact.num_docs, num_threads)
    return CompactRows(compact.precision, num_docs, codes, params, compact.basis)


def subset(compact: CompactRows, keep: np.ndarray) -> CompactRows:
    """The compact copy of the rows where `keep` (bool) is True, in order."""
    blocks, steps, width = compact.codes.shape
    num_docs = int(keep.sum())
    # lanes-packed -> one row after the other -> packed again
    rows = compact.codes.reshape(blocks, steps, BLOCK, 4).transpose(0, 2, 1, 3).reshape(-1, steps, 4)
    codes, _ = _empty(compact.precision, num_docs, compact.basis)
    kept = np.full((codes.shape[0] * BLOCK, steps, 4), 128 if compact.precision == "int8" else 0, np.uint8)
    kept[:num_docs] = rows[: compact.num_docs][keep]
    codes[...] = kept.reshape(-1, BLOCK, steps, 4).transpose(0, 2, 1, 3).reshape(codes.shape)
    return CompactRows(compact.precision, num_docs, codes, blocked_params(flat_params(compact)[keep]),
                       compact.basis)


def flat_params(compact: CompactRows) -> np.ndarray:
    """The row parameters as (num_docs, ROW_PARAMS + m)."""
    params = compact.params
    return params.transpose(0, 2, 1).reshape(-1, params.shape[1])[: compact.num_docs]


def blocked_params(flat: np.ndarray) -> np.ndarray:
    """(num_docs, P) -> the scan's (num_blocks, P, BLOCK) layout, zero-padded."""
    num_docs, width = flat.shape
    blocks = -(-num_docs // BLOCK)
    padded = np.zeros((blocks * BLOCK, width), np.float32)
    padded[:num_docs] = flat
    return np.ascontiguousarray(padded.reshape(blocks, BLOCK, width).transpose(0, 2, 1))


def encode_queries(features: np.ndarray, compact: CompactRows, num_threads: int) -> tuple[np.ndarray, np.ndarray]:
    """The queries' codes (uint8, (num_queries, bytes): int8 codes, bfloat16
    bits or float32 values, as this CPU's scan takes them) and parameters
    ((num_queries, QUERY_PARAMS + m): the bound's factors, then the
    coefficients c)."""
    kind = KINDS[compact.precision]
    _, code_bytes = kernels.compact_layout(kind, compact.h)
    codes = aligned_empty((features.shape[0], code_bytes), np.uint8)
    params = np.empty((features.shape[0], QUERY_PARAMS + compact.basis.shape[0]), np.float32)
    kernels.compact_encode_queries(features, compact.basis, kind, codes, params, num_threads)
    return codes, params

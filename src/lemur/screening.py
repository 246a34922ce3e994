r"""The rerank's screen: which candidates exact MaxSim must score.

A rerank returns each query's k best candidates by exact MaxSim (the float32
value of :func:`lemur.maxsim_scores`), bit for bit. Where the CPU has AMX
tiles, MaxSim of bfloat16-rounded tokens costs a fraction of the float32
one; a proven bound on its distance from the float32 value then says which
candidates cannot be among the k best, and only the others are scored in
float32. The returned ids and scores are those of scoring every candidate.

The bound
---------
Write u = 2^-24, γ_n = n u / (1 − n u), b(x) for x rounded to bfloat16 (to
nearest even, magnitudes below 2^-126 to zero: VCVTNE2PS2BF16's rule), and d
for the tokens' dimension. For a query's tokens q_1..q_n and a document's
tokens d_1..d_m, the float32 MaxSim is S32 = fl(Σ_i M_i) (a float32
sum in order), M_i = max_j fl(<q_i, d_j>), each dot product a chain of d
multiply-adds (2d roundings at most, fused or not), so

    |fl(<q_i, d_j>) − <q_i, d_j>| <= γ_2d ||q_i|| ||d_j|| + 2d 2^-150

(the last term: gradual underflow, at most half a subnormal step a rounding;
the D 2^-126 below covers it).

The screen computes M'_i = max_j X_ij, X_ij the tile product of b(q_i) and
b(d_j): exact products summed in float32, at most D = 4⌈d/2⌉ + 2 roundings
(the SDM's order is VDPBF16PS's: two a pair; the implementation's may
differ), each flushing a result below 2^-126 to zero, so

    |X_ij − <b(q_i), b(d_j)>| <= γ_D ||b(q_i)|| ||b(d_j)|| + D 2^-126.

With <b(q), b(d)> − <q, d> = <b(q) − q, b(d)> + <q, b(d) − d> and Cauchy–Schwarz,
every pair of tokens has |X_ij − fl(<q_i, d_j>)| <= e_i, where N and R are
the document's largest token norm and largest rounding error ||b(d_j) − d_j||
(so ||b(d_j)|| <= N + R):

    e_i = γ_2d ||q_i|| N + β_i (N + R) + ||q_i|| R + D 2^-126,
    β_i = ||b(q_i) − q_i|| + γ_D ||b(q_i)||,

and since |max_j x_j − max_j y_j| <= max_j |x_j − y_j|, |M'_i − M_i| <= e_i.
Summed: |Σ M'_i − Σ M_i| <= E_1 = Σ e_i = a N + b R + c, with per query

    a = γ_2d Σ||q_i|| + Σ β_i,    b = Σ β_i + Σ||q_i||,    c = n D 2^-126.

The float32 sum adds |S32 − Σ M_i| <= γ_n Σ|M_i| <= γ_n (Σ|M'_i| + E_1). So

    |S' − S32| <= E = E_1 + γ_n (Σ|M'_i| + E_1),    S' = Σ_i M'_i,

computed in float64 (S', Σ|M'_i|, the query's norms; widened by 2^-30,
2^-20 and 2^-40 Σ|M'_i| for that arithmetic), N and R from float32 sums of
squares (of exact differences, for R) widened by γ_(2d+2) and the
underflow of d squares. Where Σ||q_i|| N passes 2^100, or a value is not
finite, no bound is given (−∞, +∞): no float32 score can overflow below
that.

Which candidates are scored
---------------------------
Let L be the k-th largest lower bound S' − E of a query's candidates. Its
k candidates with lower bounds of at least L all score at least L in float32
and are all scored (their upper bounds S' + E are above L too), so the k-th
best float32 score is at least L; a candidate with upper bound below L scores
less than it and cannot be among the k best, nor tie with them. So the k best
of the scored candidates, with the rerank's own order (best first, equal
scores by smaller id), are the k best of all. A query without tokens keeps
its candidates (the rerank keeps its first k in order).

On bench/compare.py's data (unit tokens, d = 128, 32 query tokens, 200
candidates, k = 10) 23% of the candidates are scored in float32. E is far
above the errors themselves: Cauchy–Schwarz on rounding errors is loose by
about the square root of d.
"""

from __future__ import annotations

import numpy as np

from lemur._dispatch import kernels

#: The screen runs where a query has more than this many candidates per
#: result wanted (fewer: nearly every candidate would be scored anyway) ...
CANDIDATES_PER_RESULT = 2
#: ... for batches of at least this many queries: below, the documents are
#: mostly each one query's candidate, and both the screen and the float32
#: MaxSim are bound by reading their tokens from memory once, so the screen
#: costs more than it saves (python bench/stages.py, 200 candidates: 1.25x
#: the time of the float32 rerank for 1 query, 0.79x for 4, 0.51x for 100).
SCREEN_MIN_QUERIES = 4


def applies(num_queries: int, num_candidates: int, k: int) -> bool:
    """Whether the rerank of `num_candidates` for each of `num_queries`
    queries down to `k` is screened here."""
    return (bool(kernels.AMX_BFLOAT16) and num_queries >= SCREEN_MIN_QUERIES
            and num_candidates > CANDIDATES_PER_RESULT * k)


def screened_candidates(
    query_tokens: np.ndarray,
    query_offsets: np.ndarray,
    doc_tokens: np.ndarray,
    doc_offsets: np.ndarray,
    candidates: np.ndarray,
    k: int,
    num_threads: int,
    report: dict | None = None,
) -> np.ndarray:
    """The candidates exact MaxSim must score so that the k best are found.

    Parameters
    ----------
    query_tokens, query_offsets : ndarray
        The queries' tokens (total, d) float32 and offsets (num_queries + 1)
        int64, validated.
    doc_tokens, doc_offsets : ndarray
        The documents' tokens as the kernels take them (float32, or float16
        as uint16 bits) and offsets (num_docs + 1), validated.
    candidates : ndarray of int64, shape (num_queries, num_candidates)
        Document ids, or -1; num_candidates > k.
    k : int
        The results wanted per query.
    num_threads : int
    report : dict, optional
        Gets "scored": the number of (query, candidate) pairs kept.

    Returns
    -------
    ndarray of int64, shape (num_queries, width <= num_candidates)
        Each query's kept candidates in their given order, padded with -1:
        the rerank of these gives bitwise the rerank of `candidates`.
    """
    num_queries, num_candidates = candidates.shape
    lower = np.empty(candidates.shape, dtype=np.float64)
    upper = np.empty(candidates.shape, dtype=np.float64)
    kernels.maxsim_bounds_bfloat16(query_tokens, query_offsets, doc_tokens, doc_offsets, candidates,
                                   lower, upper, num_threads)
    threshold = np.partition(lower, num_candidates - k, axis=1)[:, num_candidates - k]
    keep = upper >= threshold[:, None]
    counts = keep.sum(axis=1)
    if report is not None:
        report["scored"] = int(counts.sum())
    kept = np.full((num_queries, int(counts.max(initial=0))), -1, dtype=np.int64)
    rows, positions = np.nonzero(keep)
    kept[rows, (np.cumsum(keep, axis=1) - 1)[rows, positions]] = candidates[rows, positions]
    return kept

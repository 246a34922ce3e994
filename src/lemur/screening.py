r"""The rerank's screen: which candidates exact MaxSim must score.

A rerank returns each query's k best candidates by exact MaxSim (the float32
value of :func:`lemur.maxsim_scores`), bit for bit. Where the CPU multiplies
compact tokens faster than float32 ones, MaxSim of compact tokens costs a
fraction of the float32 one; a proven bound on its distance from the
float32 value then says which candidates cannot be among the k best, and
only the others are scored in float32. The returned ids and scores are
those of scoring every candidate. The compact tokens (``kernels.SCREEN_KERNEL``
says which, :data:`KERNEL` is the one the rerank takes):

- bfloat16 on AMX tiles (Intel), or by VDPBF16PS where it runs at twice
  float32 FMA's rate (AVX512_BF16 on AMD's processors);
- int16 codes by VPDPWSSD (AVX512-VNNI, where the CPU has neither: 32
  multiply-adds an instruction, exact in int32).

The bound
---------
Write u = 2^-24, γ_n = n u / (1 − n u), c(x) for a token x in its compact
form, and d for the tokens' dimension. bfloat16: c(x) = b(x), x rounded to
bfloat16 (to nearest even, magnitudes below 2^-126 to zero:
VCVTNE2PS2BF16's rule). int16: c(x) = s k, the real product of the token's
scale s = max_i |x_i| / L (float32; L = lemur_int16_limit(d), the largest
with d L^2 < 2^31, so that no sum of products of codes leaves int32) and its
integer codes k (x / s rounded, clamped to [−L, L]: what they are does not
matter to the bound, which takes the errors of the codes as they are).

For a query's tokens q_1..q_n and a document's tokens d_1..d_m, the float32
MaxSim is S32 = fl(Σ_i M_i) (a float32 sum in order), M_i = max_j fl(<q_i,
d_j>), each dot product a chain of d multiply-adds (2d roundings at most,
fused or not), so

    |fl(<q_i, d_j>) − <q_i, d_j>| <= γ_2d ||q_i|| ||d_j|| + 2d 2^-150

(the last term: gradual underflow, at most half a subnormal step a
rounding).

The screen computes M'_i = max_j X_ij, X_ij the compact product of c(q_i)
and c(d_j), with at most D roundings relative to <c(q_i), c(d_j)> plus an
absolute term t_i:

- bfloat16 (the tiles or VDPBF16PS): exact products summed in float32, D =
  4⌈d/2⌉ + 2 (VDPBF16PS adds a pair's two products to its lane with at most
  two roundings, in order; the tiles' order is the implementation's, the
  SDM's is VDPBF16PS's), each flushing a result below 2^-126 to zero: t_i =
  D 2^-126;
- int16: X_ij = fl(fl(fl(K_ij) s_j) s_i), K_ij the codes' exact int32 dot
  product (its conversion, then the document token's scale s_j, then the
  query token's s_i: D = 3), each product off by at most 2^-150 where it
  underflows, the first one then scaled by s_i: t_i = 2^-150 (1 + 2 s_i).
  (s_i multiplies the maximum over j: rounding is monotone, so that is the
  maximum of the X_ij.)

So |X_ij − <c(q_i), c(d_j)>| <= γ_D ||c(q_i)|| ||c(d_j)|| + t_i. With
<c(q), c(d)> − <q, d> = <c(q) − q, c(d)> + <q, c(d) − d> and
Cauchy–Schwarz, every pair of tokens has |X_ij − fl(<q_i, d_j>)| <= e_i,
where N and R are the document's largest token norm and largest rounding
error ||c(d_j) − d_j|| (so ||c(d_j)|| <= N + R):

    e_i = γ_2d ||q_i|| N + β_i (N + R) + ||q_i|| R + t_i + 2d 2^-150,
    β_i = ||c(q_i) − q_i|| + γ_D ||c(q_i)||,

and since |max_j x_j − max_j y_j| <= max_j |x_j − y_j|, |M'_i − M_i| <= e_i.
Summed: |Σ M'_i − Σ M_i| <= E_1 = Σ e_i = a N + b R + c, with per query

    a = γ_2d Σ||q_i|| + Σ β_i,    b = Σ β_i + Σ||q_i||,    c = Σ t_i + n 2d 2^-150.

The float32 sum adds |S32 − Σ M_i| <= γ_n Σ|M_i| <= γ_n (Σ|M'_i| + E_1). So

    |S' − S32| <= E = E_1 + γ_n (Σ|M'_i| + E_1),    S' = Σ_i M'_i,

computed in float64 (S', Σ|M'_i|, the query's norms and errors: s k is
exact in float64; widened by 2^-30, 2^-20 and 2^-40 Σ|M'_i| for that
arithmetic), N and R from float32 sums of squares widened by γ_(2d+2) and
the underflow of d squares (bfloat16: of exact differences; int16: of
differences rounded once by an FMA, so R is widened by 2^-22 more and
sqrt(d) 2^-150 is added to it). Where Σ||q_i|| N passes 2^100, or a value
is not finite, no bound is given (−∞, +∞): no float32 score can overflow
below that. Nor where a count of roundings (2d + 4, D, n) passes 2^22 (γ
needs n u < 1), or where a thread's floating point does not round to
nearest with gradual underflow (its MXCSR, or FPCR on arm64, is read: a
library built with -ffast-math may set flush-to-zero for the process).

Which candidates are scored
---------------------------
For each query, the k candidates with the largest lower bounds S' − E are
scored in float32 first; let T be the smallest of their float32 scores. Any
k of a query's candidates (positions: a repeated id counts once each time,
as the rerank counts it) score at least T, so the k-th best float32 score is
at least T. A candidate with upper bound S' + E below T scores less than it:
it cannot be among the k best, nor tie with them, and it is not scored. The
others are scored in float32 (the first k are not scored again), and the k
best of the scored candidates, with the rerank's own order (best first,
equal scores by smaller id), are the k best of all. T is at least the k-th
largest lower bound (the first k score at least their lower bounds), and
usually far above it: the band of candidates within reach of it is about
half as wide. A query without tokens keeps its candidates (their bounds are
(−∞, +∞); the rerank keeps its first k in order); where a first candidate is
−1 or has no bound, T is −∞ and nothing is ruled out.

On bench/compare.py's data (unit tokens, d = 128, 32 query tokens, 200
candidates, k = 10) 12% of the candidates are scored in float32 with
bfloat16 (23% with the k-th largest lower bound for T), 5.75% with int16 (L
= 4095: its error is 2^-13 of a token's largest value, bfloat16's 2^-9 of
each value). E is far above the errors themselves: Cauchy–Schwarz on
rounding errors is loose by about the square root of d.
"""

from __future__ import annotations

import numpy as np

from lemur._dispatch import kernels
from lemur.documents import Documents, maxsim_unchecked

#: The kernel the rerank's screen runs on: the first of
#: ``kernels.SCREEN_KERNELS`` ("" where there is none).
KERNEL = kernels.SCREEN_KERNEL
#: The screen runs where a query has more than this many candidates per
#: result wanted (fewer: nearly every candidate would be scored anyway) ...
CANDIDATES_PER_RESULT = 2
#: ... for batches of at least this many queries, by kernel: below, the
#: documents are mostly each one query's candidate, so the screen's pass that
#: rounds their tokens (and takes their norms) is shared by no other query
#: and costs more than its faster products save (python bench/stages.py, 200
#: candidates, float32 tokens; Zen 4's VDPBF16PS: 1.39x the time of the
#: float32 rerank for 1 query, 0.88x for 2, 0.87x for 4, 0.71x for 100; an
#: Intel Xeon's VPDPWSSD: 1.91x for 1, 1.15x for 4, 0.95x for 8, 0.68x for
#: 100).
MIN_QUERIES = {kernels.TILES_SCREEN: 4, kernels.BFLOAT16_SCREEN: 4, kernels.INT16_SCREEN: 8}
SCREEN_MIN_QUERIES = MIN_QUERIES.get(KERNEL, 0)


def applies(num_queries: int, num_candidates: int, k: int) -> bool:
    """Whether the rerank of `num_candidates` for each of `num_queries`
    queries down to `k` is screened here."""
    return (bool(KERNEL) and num_queries >= SCREEN_MIN_QUERIES
            and num_candidates > CANDIDATES_PER_RESULT * k)


def screened_scores(
    query_tokens: np.ndarray,
    query_offsets: np.ndarray,
    documents: Documents,
    candidates: np.ndarray,
    k: int,
    num_threads: int,
    report: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The float32 MaxSim of the candidates that can be among the k best.

    Parameters
    ----------
    query_tokens, query_offsets : ndarray
        The queries' tokens (total, d) float32 and offsets (num_queries + 1)
        int64, validated.
    documents : Documents
        The candidates' token store, validated (float32 or float16 tokens).
    candidates : ndarray of int64, shape (num_queries, num_candidates)
        Document ids, or -1; num_candidates > k.
    k : int
        The results wanted per query.
    num_threads : int
    report : dict, optional
        Gets "scored": the number of (query, candidate) pairs scored in
        float32.

    Returns
    -------
    kept : ndarray of int64, shape (num_queries, num_candidates)
        The candidates, -1 where ruled out.
    scores : ndarray of float32, same shape
        Their float32 MaxSim (maxsim_scores' values), -inf where ruled out:
        the rerank's selection over these gives bitwise its selection over
        every candidate's score.
    """
    num_queries, num_candidates = candidates.shape
    lower = np.empty(candidates.shape, dtype=np.float64)
    upper = np.empty(candidates.shape, dtype=np.float64)
    kernels.maxsim_bounds(query_tokens, query_offsets, documents.kernel_tokens, documents.offsets,
                          candidates, lower, upper, num_threads, KERNEL)
    first = np.argpartition(lower, num_candidates - k, axis=1)[:, num_candidates - k:]
    first_candidates = np.take_along_axis(candidates, first, axis=1)
    first_scores = maxsim_unchecked(query_tokens, query_offsets, documents, first_candidates, num_threads)
    threshold = first_scores.min(axis=1)
    threshold[np.isnan(threshold)] = -np.inf  # (no float32 score is NaN where a bound is known)
    rest = upper >= threshold[:, None]
    np.put_along_axis(rest, first, False, axis=1)
    counts = rest.sum(axis=1)
    rest_candidates = np.full((num_queries, int(counts.max(initial=0))), -1, dtype=np.int64)
    rows, positions = np.nonzero(rest)
    columns = (np.cumsum(rest, axis=1) - 1)[rows, positions]
    rest_candidates[rows, columns] = candidates[rows, positions]
    rest_scores = maxsim_unchecked(query_tokens, query_offsets, documents, rest_candidates, num_threads)
    scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
    np.put_along_axis(scores, first, first_scores, axis=1)
    scores[rows, positions] = rest_scores[rows, columns]
    kept = np.where(rest, candidates, -1)
    np.put_along_axis(kept, first, first_candidates, axis=1)
    if report is not None:
        report["scored"] = int(np.count_nonzero(kept >= 0))
    return kept, scores


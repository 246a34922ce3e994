"""The exhaustive first stage: every row of W scored, at the index's precision.

float32 scans W itself (the register tiles and lane-wise products of
:mod:`lemur._tiles`). bfloat16 and int8 scan a compact copy of W
(:mod:`.compact`): approximate scores, a proven bound on their distance from
the float32 scores, and an exact float32 rescoring of the rows the bound
cannot decide, read from W (in memory or mapped: only the rows rescored are
touched). The results are bitwise those of the float32 scan, for every k.

Parallel strategy: the compact scan splits W into blocks of 64 rows over the
threads (dynamic schedule); each thread keeps, per query, heaps of the k
largest lower and k + 1 largest upper bounds and the pairs that survive its
running threshold; the heaps are merged and the pairs filtered by the merged
threshold (so what is rescored does not depend on the split); the rescoring
runs over the distinct rows (each read once for all its queries), the final
selection over queries.
"""

from __future__ import annotations

import functools

import numpy as np

from lemur._dispatch import kernels
from lemur.first_stage import compact
from lemur.retrieval import top_k_unchecked

#: Memory for the per-thread heaps of one chunk of queries.
HEAP_BUDGET_BYTES = 32 * 2**20
#: The most pairs one thread keeps for rescoring (20 bytes each) before the
#: chunk is scanned in float32 instead (which is exact too): what a
#: degenerate W, whose rows all tie, would need.
SURVIVOR_LIMIT = 2**21
#: Above this product of the largest feature and row norms a float32 score
#: could overflow; the scan then runs in float32.
OVERFLOW_GUARD = 1e37


class ExhaustiveScan:
    """Every row of W, at a precision.

    Parameters
    ----------
    W : ndarray of float32, shape (num_docs, h)
        Checked by the caller; kept by reference (it may be memory-mapped).
    rows : compact.CompactRows, optional
        The compact copy (bfloat16 or int8) of W; none for float32.

    Attributes
    ----------
    certified_fraction : float
        The compact scan runs for k up to this fraction of the documents;
        beyond, the float32 scan (as exact, and then faster).
    """

    certified_fraction = 0.25

    def __init__(self, W: np.ndarray, rows: compact.CompactRows | None = None) -> None:
        if rows is not None and (rows.num_docs, rows.h) != W.shape:
            raise ValueError(f"the compact copy ({rows.num_docs} x {rows.h}) does not match W {W.shape}")
        self.W = W
        self.rows = rows

    @functools.cached_property
    def _max_row_norm(self) -> float:
        """The largest row norm of the compact copy (at the first scan, which
        reads its parameters anyway: not when a mapped file is opened)."""
        return float(self.rows.params[:, 0].max(initial=0.0)) if self.rows is not None else 0.0  # padding: 0

    @property
    def precision(self) -> str:
        return "float32" if self.rows is None else self.rows.precision

    @property
    def description(self) -> str:
        if self.rows is None:
            return f"exhaustive scan of {self.W.shape[0]:,} float32 rows"
        return (f"exhaustive scan of a {self.precision} copy of {self.W.shape[0]:,} rows, "
                "certified float32 rescoring (bitwise the float32 results)")

    @classmethod
    def build(cls, W: np.ndarray, precision: str, basis: np.ndarray | None, num_threads: int) -> ExhaustiveScan:
        """The scan of W at `precision`, making the compact copy (with the
        directions `basis`, (m, h)) unless it is float32."""
        if compact.check_precision(precision) == "float32":
            return cls(W)
        return cls(W, compact.build(W, precision, basis, num_threads))

    @property
    def nbytes(self) -> int:
        """Bytes of the compact copy (W is the caller's)."""
        return 0 if self.rows is None else self.rows.nbytes

    def appended(self, W: np.ndarray, new_rows: np.ndarray, num_threads: int) -> ExhaustiveScan:
        """The scan of W, whose last rows are `new_rows` (the others: this scan's)."""
        if self.rows is None:
            return ExhaustiveScan(W)
        return ExhaustiveScan(W, compact.appended(self.rows, new_rows, num_threads))

    def subset(self, W: np.ndarray, keep: np.ndarray) -> ExhaustiveScan:
        """The scan of W = this W's rows where `keep` is True."""
        if self.rows is None:
            return ExhaustiveScan(W)
        return ExhaustiveScan(W, compact.subset(self.rows, keep))

    # -- searching -------------------------------------------------------------

    def top_k(self, features: np.ndarray, k: int, num_threads: int,
              report: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k best rows of each query with their float32 scores, best first
        (ties: smaller row): bitwise the float32 scan's. `report`, if given,
        receives the number of (query, row) pairs rescored in float32 under
        "rescored" (added to what it holds)."""
        if self._in_float32(features, k):
            return top_k_unchecked(features, self.W, k, num_threads)
        return self._certified(features, k, num_threads, report, sets=False)

    def best_rows(self, features: np.ndarray, k: int, num_threads: int,
                  report: dict | None = None) -> np.ndarray:
        """The set of the k best rows of each query (the float32 scan's, ties
        to the smaller row), each query's rows in increasing order: what a
        rerank needs, rescoring only the rows the bound cannot place inside or
        outside the set."""
        if self._in_float32(features, k):
            return np.sort(top_k_unchecked(features, self.W, k, num_threads)[0], axis=1)
        return self._certified(features, k, num_threads, report, sets=True)

    def _in_float32(self, features: np.ndarray, k: int) -> bool:
        if self.rows is None or k > self.certified_fraction * self.W.shape[0] or k >= self.W.shape[0]:
            return True
        if not kernels.float_environment():  # the bound assumes rounding to nearest, gradual underflow
            return True
        # max |f_i| sqrt(h) >= ||f||, a cheaper bound on the largest feature norm
        largest = float(np.abs(features).max()) * np.sqrt(features.shape[1])
        return not largest * self._max_row_norm < OVERFLOW_GUARD

    def _certified(self, features: np.ndarray, k: int, num_threads: int, report: dict | None, sets: bool):
        rows, m = self.rows, self.rows.basis.shape[0]
        chunk = max(1, HEAP_BUDGET_BYTES // (num_threads * (k + 2) * 4))
        found = np.empty((features.shape[0], k), np.int64)
        scores = np.empty((features.shape[0], k), np.float32)
        rescored = 0
        for start in range(0, features.shape[0], chunk):
            part = slice(start, start + chunk)
            codes, params = compact.encode_queries(features[part], rows, num_threads)
            scan = kernels.compact_scan(rows.codes, rows.params, compact.KINDS[rows.precision], rows.num_docs,
                                        rows.h, m, codes, params, k, sets, SURVIVOR_LIMIT, num_threads)
            if scan is None:  # too many pairs to keep: a degenerate W
                found[part], scores[part] = top_k_unchecked(features[part], self.W, k, num_threads)
                continue
            _, ceiling, kept_rows, kept_queries, lower, _ = scan
            rescored += kernels.certified_result(features[part], self.W, kept_rows, kept_queries, lower,
                                                 ceiling if sets else None, found[part], scores[part],
                                                 num_threads)
        if report is not None:
            report["rescored"] = report.get("rescored", 0) + rescored
        if sets:
            return np.sort(found, axis=1)
        return found, scores



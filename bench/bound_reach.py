"""How many rows the compact first stage leaves to float32, by the codes' width.

    python bench/bound_reach.py                         # compare.py's 10k data
    python bench/bound_reach.py --docs 100000 --bits 8 6 4

The certified scan (``lemur/first_stage/compact.py``) rescores in float32
every row whose bounds it cannot place inside or outside a query's k' best.
Two Cauchy-Schwarz terms dominate its bound: ||f_perp|| ||w - w_hat|| (the
row's codes) and ||delta|| ||w_hat|| (the query's), the first in proportion
to the row's code step. This models that bound in float64 for codes of b
bits (each row scaled by its largest magnitude, as int8 is; the query's
f_perp in 8 bits, as the scan quantises it), with the index's own exact
directions, and prints the fraction of rows the bound leaves undecided for a
candidate set of k' (upper bound at least the k'-th largest lower bound, and
lower bound at most the (k'+1)-th largest upper bound): the median and the
largest over the single queries. Beside the 8-bit model it prints the
fraction the real int8 scan rescored (its report), which the model should
match from below (it leaves out the bound's small terms).

Codes of fewer bits read fewer bytes, but each bit fewer doubles the step:
this is what says whether a narrower first stage could pay.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from compare import CANDIDATES, QUERY_TOKENS, make_data

#: Rows of W modelled in float64 at a time (128 MB of them at h = 2048).
CHUNK_ROWS = 8192


def undecided_fraction(lower: np.ndarray, upper: np.ndarray, k: int) -> float:
    """The fraction of rows a candidate set of k cannot place from these bounds."""
    reach = np.partition(lower, -k)[-k]
    certain = np.partition(upper, -(k + 1))[-(k + 1)]
    return float(np.mean((upper >= reach) & (lower <= certain)))


def modelled_fractions(W: np.ndarray, basis: np.ndarray, features: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Per query, the undecided fraction under the bound's two main terms for
    codes of `bits` bits."""
    levels = 2 ** (bits - 1) - 1
    V = basis.astype(np.float64)
    projections = np.empty((W.shape[0], V.shape[0]))
    code_error = np.empty(W.shape[0])
    code_norm = np.empty(W.shape[0])
    compact = np.empty(W.shape, np.float32)
    for start in range(0, W.shape[0], CHUNK_ROWS):  # float64 a chunk at a time
        chunk = slice(start, start + CHUNK_ROWS)
        rows = W[chunk].astype(np.float64)
        step = np.abs(rows).max(axis=1, keepdims=True) / levels
        step[step == 0] = 1
        rounded = step * np.round(rows / step)
        projections[chunk] = rows @ V.T
        code_error[chunk] = np.linalg.norm(rows - rounded, axis=1)
        code_norm[chunk] = np.linalg.norm(rounded, axis=1)
        compact[chunk] = rounded
    fractions = []
    for f in features.astype(np.float64):
        coefficients = V @ f
        perpendicular = f - coefficients @ V
        query_step = max(np.abs(perpendicular).max() / 127, np.finfo(np.float64).tiny)
        query_codes = query_step * np.round(perpendicular / query_step)
        approximate = projections @ coefficients + compact @ query_codes.astype(np.float32)
        error = (np.linalg.norm(perpendicular) * code_error
                 + np.linalg.norm(perpendicular - query_codes) * code_norm)
        fractions.append(undecided_fraction(approximate - error, approximate + error, k))
    return np.array(fractions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10000)
    parser.add_argument("--single", type=int, default=20, help="single queries to take the fractions over")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/lemur-bench"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    arguments = parser.parse_args()
    if any(not 2 <= bits <= 8 for bits in arguments.bits):
        parser.error("--bits must lie between 2 and 8")

    import lemur

    folder = make_data(arguments.data_dir, arguments.docs, max(100, arguments.single))
    model = lemur.Model.load(folder / "model.npz")
    W = np.load(folder / "W.npy")
    # with the documents' tokens, as compare.py builds it: its exact directions
    # follow features of pseudo-queries drawn from them
    index = lemur.Index(model, W, np.load(folder / "doc_tokens.npy", mmap_mode="r"),
                        np.load(folder / "doc_counts.npy"), precision="int8", num_threads=arguments.threads)
    scan, k = index._store.scan, CANDIDATES[-1]
    single = np.load(folder / "single_queries.npy")
    features = index.features(single[: arguments.single * QUERY_TOKENS], [QUERY_TOKENS] * arguments.single,
                              num_threads=arguments.threads)
    measured = []
    for f in features:
        report: dict = {}
        scan.best_rows(f[None], k, arguments.threads, report)
        measured.append(report["rescored"] / W.shape[0])
    print(f"{arguments.docs:,} documents, k' = {k}, {scan.rows.basis.shape[0]} exact directions: "
          f"the fraction of rows left to float32 (median / largest over {arguments.single} queries)")
    print(f"  int8 scan, measured        {np.median(measured):7.2%} / {np.max(measured):7.2%}")
    results = {"docs": arguments.docs, "k": k, "measured int8": measured}
    for bits in arguments.bits:
        fractions = modelled_fractions(W, scan.rows.basis, features, bits, k)
        print(f"  {bits}-bit codes, modelled     {np.median(fractions):7.2%} / {np.max(fractions):7.2%}")
        results[f"modelled {bits} bits"] = fractions.tolist()
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

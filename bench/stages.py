"""Where a search's time goes, stage by stage, and what the rerank's screen saves.

    python bench/stages.py                       # 10k documents, compare.py's data
    python bench/stages.py --docs 100000 --json stages.json

On compare.py's workload (written once into --data-dir, shared with it), with
an int8 index (float32 and float16 token stores), 2 threads, medians over
the single queries:

* a single query's stages on their own: features, the first stage's
  candidate set (k' = 200), the rerank of those 200 candidates, and the whole
  ``search``;
* the rerank of B queries x 200 candidates -> 10 with the screen
  (``lemur.screening``, where the CPU has AMX) against the float32 MaxSim of
  every candidate, for B = 1, 2, 4, 8, 16, 100 (the screen forced on or off by
  setting ``screening.SCREEN_MIN_QUERIES``, for this measurement only).

Run it with OPENBLAS_CORETYPE as you want it (the stages here do not use
OpenBLAS); ``lemur config`` says which CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from compare import CANDIDATES, FINAL_K, QUERY_TOKENS, make_data, median_seconds


def single_query_stages(index, queries: list[np.ndarray], threads: int, repeat: int) -> dict[str, float]:
    """Median ms of each stage of a single query, over `queries`."""
    counts, k = [QUERY_TOKENS], CANDIDATES[-1]
    features = [index.features(q, counts, num_threads=threads) for q in queries]
    candidates = [index.top_k(f, k, num_threads=threads)[0] for f in features]
    stages = {  # each a call for query i
        "features": lambda i: index.features(queries[i], counts, num_threads=threads),
        "first stage (set of k'=200)": lambda i: index._store.scan.best_rows(features[i], k, threads),
        "rerank 200 -> 10": lambda i: index.rerank(queries[i], counts, candidates[i], FINAL_K,
                                                   num_threads=threads),
        "search": lambda i: index.search(queries[i], counts, k=FINAL_K, candidates=k, num_threads=threads),
    }
    return {name: 1e3 * float(np.median([median_seconds(lambda i=i, stage=stage: stage(i), repeat)
                                         for i in range(len(queries))]))
            for name, stage in stages.items()}


def screen_against_float32(index, queries: np.ndarray, threads: int, repeat: int) -> dict[str, dict[str, float]]:
    """Median ms of the rerank of B queries x 200 candidates, screened and not."""
    from lemur import screening

    default = screening.SCREEN_MIN_QUERIES
    results = {}
    features = index.features(queries, [QUERY_TOKENS] * (len(queries) // QUERY_TOKENS), num_threads=threads)
    candidates = index.top_k(features, CANDIDATES[-1], num_threads=threads)[0]
    for batch in (1, 2, 4, 8, 16, 100):
        tokens, counts, rows = queries[: batch * QUERY_TOKENS], [QUERY_TOKENS] * batch, candidates[:batch]
        times = {}
        for label, minimum in (("screened", 1), ("float32", 10**9)):
            screening.SCREEN_MIN_QUERIES = minimum
            try:
                times[label] = 1e3 * median_seconds(
                    lambda tokens=tokens, counts=counts, rows=rows: index.rerank(
                        tokens, counts, rows, FINAL_K, num_threads=threads), repeat)
            finally:
                screening.SCREEN_MIN_QUERIES = default
        times["ratio"] = times["screened"] / times["float32"]
        results[f"{batch} queries"] = times
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10000)
    parser.add_argument("--single", type=int, default=50, help="single queries to take medians over")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/lemur-bench"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    arguments = parser.parse_args()

    import lemur
    from lemur._dispatch import kernels

    folder = make_data(arguments.data_dir, arguments.docs, max(100, arguments.single))
    model = lemur.Model.load(folder / "model.npz")
    W, counts = np.load(folder / "W.npy"), np.load(folder / "doc_counts.npy")
    tokens = np.load(folder / "doc_tokens.npy", mmap_mode="r")
    single = np.load(folder / "single_queries.npy")
    queries = [single[i * QUERY_TOKENS:(i + 1) * QUERY_TOKENS] for i in range(arguments.single)]
    batch = np.load(folder / "queries.npy")
    print(f"{arguments.docs:,} documents, int8 index, {arguments.threads} threads, "
          f"AMX tiles: {'yes' if kernels.AMX_BFLOAT16 else 'no'} (lemur config: the CPU)")
    report = {"docs": arguments.docs, "threads": arguments.threads, "amx": bool(kernels.AMX_BFLOAT16)}
    for store in (np.float32, np.float16):
        index = lemur.Index(model, W, np.ascontiguousarray(tokens, dtype=store), counts, precision="int8",
                            num_threads=arguments.threads)
        name = np.dtype(store).name
        stages = single_query_stages(index, queries, arguments.threads, arguments.repeat)
        print(f"\n{name} tokens, one query (median ms over {arguments.single} queries):")
        for stage, ms in stages.items():
            print(f"  {stage:32s} {ms:8.3f}")
        screen = screen_against_float32(index, batch, arguments.threads, arguments.repeat)
        print(f"{name} tokens, rerank of B queries x 200 candidates -> 10 (ms):")
        for label, times in screen.items():
            print(f"  {label:12s} screened {times['screened']:8.3f}  float32 {times['float32']:8.3f}"
                  f"  ratio {times['ratio']:.2f}")
        report[name] = {"single_query_ms": stages, "screen_ms": screen}
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

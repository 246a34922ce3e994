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
  (``lemur.screening``, where the CPU has one) against the float32 MaxSim of
  every candidate, for B = 1, 2, 4, 8, 16, 100 (the screen forced on or off by
  setting ``screening.SCREEN_MIN_QUERIES``, for this measurement only; the
  two timed alternately, medians of each).

and, in the same run, what those stages would take at this machine's limits
(their roofline, measured rather than taken from a datasheet):

* memory: a plain read of as many bytes as the int8 codes the first stage
  scans (lemur's finiteness check of a float32 buffer that size, vectorised
  on the same threads), from memory (after
  reading a buffer larger than the L3 in between) and back to back (what
  the L3 keeps), beside the first stage in the same two states;
* multiply-adds: MaxSim of a query against 20 of its candidates 10 times
  each (their tokens in L2: the FMA rate alone) beside its 200 distinct
  candidates, as the rerank scores them, in float32 and, where the CPU has
  a screen, with the screen's bfloat16 bounds (VDPBF16PS or AMX).

Run it with OPENBLAS_CORETYPE as you want it (the stages here do not use
OpenBLAS); ``lemur config`` says which CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from compare import CANDIDATES, FINAL_K, QUERY_TOKENS, make_data, median_seconds


def first_stage_inputs(index, queries: list[np.ndarray], threads: int) -> tuple[list, list]:
    """Each single query's features and its k' = 200 candidates."""
    features = [index.features(q, [QUERY_TOKENS], num_threads=threads) for q in queries]
    return features, [index.top_k(f, CANDIDATES[-1], num_threads=threads)[0] for f in features]


def single_query_stages(index, queries: list[np.ndarray], features: list, candidates: list, threads: int,
                        repeat: int) -> dict[str, float]:
    """Median ms of each stage of a single query, over `queries` (with their
    features and candidates from first_stage_inputs)."""
    counts, k = [QUERY_TOKENS], CANDIDATES[-1]
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
    """Median ms of the rerank of B queries x 200 candidates, screened and not,
    the two timed alternately (back-to-back medians of each drift apart on a
    shared machine by more than the screen saves)."""
    from lemur import screening

    default = screening.SCREEN_MIN_QUERIES
    results = {}
    features = index.features(queries, [QUERY_TOKENS] * (len(queries) // QUERY_TOKENS), num_threads=threads)
    candidates = index.top_k(features, CANDIDATES[-1], num_threads=threads)[0]
    settings = {"screened": 1, "float32": 10**9}

    def seconds(minimum, tokens, counts, rows):
        screening.SCREEN_MIN_QUERIES = minimum
        try:
            start = time.perf_counter()
            index.rerank(tokens, counts, rows, FINAL_K, num_threads=threads)
            return time.perf_counter() - start
        finally:
            screening.SCREEN_MIN_QUERIES = default

    for batch in (1, 2, 4, 8, 16, 100):
        operands = queries[: batch * QUERY_TOKENS], [QUERY_TOKENS] * batch, candidates[:batch]
        for minimum in settings.values():   # warm-up
            seconds(minimum, *operands)
        timings = {label: [] for label in settings}
        for _ in range(repeat):
            for label, minimum in settings.items():
                timings[label].append(seconds(minimum, *operands))
        times = {label: 1e3 * float(np.median(values)) for label, values in timings.items()}
        times["ratio"] = times["screened"] / times["float32"]
        results[f"{batch} queries"] = times
    return results


def evicting_buffer() -> np.ndarray:
    """Bytes to read between timings so that what came before has left the
    L3: twice its size where the OS says it, else 64 MB."""
    try:
        l3 = os.sysconf("SC_LEVEL3_CACHE_SIZE")
    except (ValueError, OSError, AttributeError):
        l3 = 0
    return np.ones(max(64 * 2**20, 2 * max(0, l3)) // 8, np.uint64)


def floors(index, queries: list[np.ndarray], features: list, distinct: list, threads: int,
           repeat: int) -> dict[str, dict[str, float]]:
    """Each big stage of a single query beside what this machine's memory or
    multiply-adds allow it, in the same run (medians, ms); `features` and the
    `distinct` candidates from first_stage_inputs."""
    from lemur import screening
    from lemur._dispatch import kernels
    from lemur.documents import maxsim_unchecked

    k, repeat = CANDIDATES[-1], max(repeat, 20)
    codes_bytes = index._store.scan.rows.codes.nbytes
    # as many bytes as the codes, read by lemur's finiteness check: vectorised,
    # on lemur's OpenMP threads (numpy's reductions from a thread pool read at
    # half the memory's rate on Zen 3, slower than one thread); filled, so that
    # every page is its own (untouched zeros all map the kernel's one zero page,
    # which stays in cache)
    plain = np.full((codes_bytes // 4096, 1024), 0.5, np.float32)
    evict = evicting_buffer()
    turn = iter(range(10**9))

    def read_codes():
        kernels.first_nonfinite_row(plain, threads)

    def first_stage():
        index._store.scan.best_rows(features[next(turn) % len(features)], k, threads)

    def from_memory():
        np.bitwise_or.reduce(evict)

    memory = {"codes (MB)": codes_bytes / 1e6}
    for state, before in (("from memory", from_memory), ("back to back", None)):
        memory[f"read the codes, {state}"] = 1e3 * median_seconds(read_codes, repeat, before)
        memory[f"first stage, {state}"] = 1e3 * median_seconds(first_stage, repeat, before)
    memory["read rate from memory (GB/s)"] = plain.nbytes / memory["read the codes, from memory"] / 1e6

    documents = index._store.documents()
    offsets = np.array([0, QUERY_TOKENS], np.int64)
    # 20 of them 10 times each: 0.8 MB of float32 tokens, in the L2 of two cores
    # (one document repeated would be one thread's work: the pairs are split by document)
    in_cache = [np.repeat(rows[:, :20], k // 20, axis=1) for rows in distinct]
    counts = documents.counts
    per_token = QUERY_TOKENS * documents.dim

    def rate(candidates: list[np.ndarray], milliseconds: float) -> float:
        """GMAC/s of MaxSim over these candidate sets taking `milliseconds` each."""
        return float(np.mean([per_token * counts[rows[0]].sum() for rows in candidates])) / milliseconds / 1e6

    def each_query(score, candidates):
        def call():
            i = next(turn) % len(queries)
            score(queries[i], candidates[i])
        return call

    def float32(query, rows):
        maxsim_unchecked(query, offsets, documents, rows, threads)

    compute = {}
    kinds = [("float32 MaxSim", float32)]
    if screening.KERNEL:
        lower, upper = np.empty((1, k)), np.empty((1, k))

        def screen(query, rows):
            kernels.maxsim_bounds(query, offsets, documents.kernel_tokens, documents.offsets, rows,
                                  lower, upper, threads, screening.KERNEL)

        kinds.append((f"screen bounds ({screening.KERNEL})", screen))
    for label, score in kinds:
        for what, candidates in ((f"{k} distinct candidates", distinct),
                                 (f"{k // 20} times 20 candidates (in cache)", in_cache)):
            milliseconds = 1e3 * median_seconds(each_query(score, candidates), repeat)
            compute[f"{label}, {what}"] = milliseconds
            compute[f"{label}, {what}: GMAC/s"] = rate(candidates, milliseconds)
    return {"memory": memory, "multiply-adds": compute}


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
        features, candidates = first_stage_inputs(index, queries, arguments.threads)
        stages = single_query_stages(index, queries, features, candidates, arguments.threads, arguments.repeat)
        print(f"\n{name} tokens, one query (median ms over {arguments.single} queries):")
        for stage, ms in stages.items():
            print(f"  {stage:32s} {ms:8.3f}")
        screen = screen_against_float32(index, batch, arguments.threads, arguments.repeat)
        print(f"{name} tokens, rerank of B queries x 200 candidates -> 10 (ms):")
        for label, times in screen.items():
            print(f"  {label:12s} screened {times['screened']:8.3f}  float32 {times['float32']:8.3f}"
                  f"  ratio {times['ratio']:.2f}")
        report[name] = {"single_query_ms": stages, "screen_ms": screen}
        limits = floors(index, queries, features, candidates, arguments.threads, arguments.repeat)
        print(f"{name} tokens, the stages beside this machine's limits (median ms):")
        for group in limits.values():
            for label, value in group.items():
                print(f"  {label:48s} {value:12,.3f}")
        report[name]["floors"] = limits
    if arguments.json:
        arguments.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

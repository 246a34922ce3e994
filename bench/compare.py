"""lemur side by side with the original LEMUR and the Numba fork, in one run.

    python bench/compare.py --original ~/peers/lemur --fork ~/peers/lemur-numpy \\
        --peer-python ~/peers/venv/bin/python

The same synthetic workload goes through each implementation: documents of 60
to 100 tokens (80 on average), d = 128, a one-layer GELU model with
h = 2048, 100-query batches of 32 tokens, k' = 100 and 200 candidates, final
k = 10, and single queries. Printed: medians of repeated runs and ratios for
the first stage (features + top-k'), the rerank (exact MaxSim of k'
candidates -> 10), end to end, single-query latency p50/p90, and the first
stage's peak memory (its peak RSS above the RSS before it, beside W's size).

lemur runs in several configurations, each a column: the first stage's
precision (float32; bfloat16 and int8, which return bitwise the float32
results), a float16 token store ("-f16"), and an int8 index with a float16
token store memory-mapped from a saved file ("-mmap": its opening time, and its
resident memory after loading and after 100 single-query searches, the file's
mapped pages counted). For the compact precisions the fraction of (query,
document) pairs rescored in float32 is printed too, and where the CPU has AMX
the fraction of candidates the rerank's screen (lemur.screening) leaves to
exact MaxSim.

Each implementation runs in a process of its own (no shared thread pools, a
clean memory peak) on the same data, which is generated once into --data-dir
and reused. Each OPENBLAS_CORETYPE setting asked for (default: unset, as users
have it, and Haswell, as this machine's environment sets it) is a separate
pass, since OpenBLAS reads it when it is loaded.

With --rounds N each pass runs every implementation's process N times, in
turns (the order reversed every other round), and prints the median of each
figure over the rounds; a ratio is the median of the rounds' own ratios, each
taken between processes that ran minutes apart rather than a whole pass apart.
On a shared VM whose memory speed drifts (the original's first stage has taken
103 to 219 ms in one day's runs of the same command) a single round's ratio
says little; the JSON keeps every round.

The peers are optional; give checkouts built outside this project, from their
public repositories (their package is also called ``lemur``, so they run in an
interpreter without lemur-retrieval installed, --peer-python):

* the original: ``git clone https://github.com/ejaasaari/lemur`` and, in it,
  ``python setup.py build_ext --inplace`` (needs torch, pybind11, tqdm);
* the fork: ``git clone https://github.com/oaustegard/lemur-numpy`` (needs
  numba; its package imports torch too).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, HIDDEN, QUERY_TOKENS, BATCH, FINAL_K = 128, 2048, 32, 100, 10
CANDIDATES = (100, 200)
#: lemur's configurations: name -> (precision, token store dtype, mapped from a file)
LEMUR_CONFIGURATIONS = {
    "lemur": ("float32", "float32", False),
    "lemur-bf16": ("bfloat16", "float32", False),
    "lemur-int8": ("int8", "float32", False),
    "lemur-int8-f16": ("int8", "float16", False),
    "lemur-int8-mmap": ("int8", "float16", True),
}
PEERS = ("original", "fork")
IMPLEMENTATIONS = (*LEMUR_CONFIGURATIONS, *PEERS)


# -- data ----------------------------------------------------------------------------------


def make_data(folder: Path, num_docs: int, num_single: int, seed: int = 0) -> Path:
    """Write the workload for `num_docs` documents into folder (once)."""
    target = folder / f"docs{num_docs}_single{num_single}_seed{seed}"
    if (target / "done").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    random = np.random.default_rng(seed)

    def unit(rows: int) -> np.ndarray:
        out = np.empty((rows, DIM), dtype=np.float32)
        for start in range(0, rows, 1 << 20):
            block = random.standard_normal((min(1 << 20, rows - start), DIM), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start : start + len(block)] = block
        return out

    doc_counts = random.integers(60, 101, num_docs).astype(np.int32)
    np.save(target / "doc_counts.npy", doc_counts)
    np.save(target / "doc_tokens.npy", unit(int(doc_counts.sum())))
    np.save(target / "W.npy", random.standard_normal((num_docs, HIDDEN), dtype=np.float32) * 0.05)
    np.save(target / "queries.npy", unit(BATCH * QUERY_TOKENS))
    np.save(target / "single_queries.npy", unit(num_single * QUERY_TOKENS))
    np.savez(
        target / "model.npz",  # the fork's export format, which all three read
        layer_0_weight=random.standard_normal((HIDDEN, DIM), dtype=np.float32) / np.float32(np.sqrt(DIM)),
        layer_0_bias=random.standard_normal(HIDDEN, dtype=np.float32) * 0.1,
        layer_0_ln_weight=1 + random.standard_normal(HIDDEN, dtype=np.float32) * 0.1,
        layer_0_ln_bias=random.standard_normal(HIDDEN, dtype=np.float32) * 0.1,
        W=np.zeros((1, HIDDEN), np.float32),
        final_hidden_dim=np.int64(HIDDEN),
        num_layers=np.int64(1),
    )
    (target / "done").write_text("ok")
    return target


# -- measuring (in the worker process) ------------------------------------------------------


def median_seconds(function, repeat: int, before=None) -> float:
    """The median wall time of `repeat` calls of `function`, after one warm-up
    call; `before()`, if given, runs untimed ahead of each."""
    function()
    timings = []
    for _ in range(repeat):
        if before is not None:
            before()
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return float(np.median(timings))


def peer_import_problem(name: str) -> str | None:
    """Why ``import lemur`` in a peer's worker does not find the peer's checkout
    (named by LEMUR_COMPARE_PEER), or None when it does."""
    import lemur

    location = os.path.realpath(lemur.__file__)
    expected = os.environ.get("LEMUR_COMPARE_PEER", "")
    if not expected or not location.startswith(os.path.realpath(expected)):
        return f"'import lemur' finds {location}, not the {name}'s checkout"
    return None


def rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS (VmHWM) so a stage's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class Pipeline:
    """One implementation's stages on numpy inputs."""

    name = ""

    def first_stage(self, tokens, counts, k): ...

    def rerank(self, tokens, counts, candidates): ...

    def end_to_end(self, tokens, counts, k_candidates):
        return self.rerank(tokens, counts, self.first_stage(tokens, counts, k_candidates))


def mapped_index_file(folder: Path) -> Path:
    """The int8 index with a float16 token store that "-mmap" opens, saved once."""
    return folder / "index_int8_f16.npz"


def save_mapped_index(folder: Path) -> None:
    import lemur

    path = mapped_index_file(folder)
    if not path.exists():
        model = lemur.Model.load(folder / "model.npz")
        tokens = np.load(folder / "doc_tokens.npy").astype(np.float16)
        lemur.Index(model, np.load(folder / "W.npy"), tokens, np.load(folder / "doc_counts.npy"),
                    precision="int8").save(path)


def mapped_resident_bytes(path: Path) -> int:
    """Bytes of the file's mapped pages resident in this process (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's first line
                inside = len(fields) >= 6 and os.path.realpath(fields[-1]) == os.path.realpath(path)
            elif inside and fields and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


class LemurPipeline(Pipeline):
    def __init__(self, data, threads, configuration):
        import lemur

        self.version = lemur.__version__
        self.threads = threads
        precision, token_dtype, mapped = LEMUR_CONFIGURATIONS[configuration]
        if mapped:
            path = mapped_index_file(data["folder"])
            start = time.perf_counter()
            self.index = lemur.load(path, mmap=True)
            self.open_ms = 1e3 * (time.perf_counter() - start)
            self.mapped_path = path
            return
        model = lemur.Model.load(data["folder"] / "model.npz")
        tokens = data["doc_tokens"].astype(np.float16) if token_dtype == "float16" else data["doc_tokens"]
        self.index = lemur.Index(model, data["W"], tokens, data["doc_counts"], precision=precision,
                                 num_threads=threads)

    def rescored_fractions(self, tokens, counts) -> dict[str, float]:
        """The fraction of (query, document) pairs the compact first stage
        rescores in float32: for the top-100 (scores needed) and for the
        k'=200 candidate set of a search (only the set needed); and of the
        200 candidates the rerank's screen leaves to exact MaxSim."""
        from lemur import screening

        fractions = {}
        scan = self.index._store.scan  # the first stage behind the index
        features = self.index.features(tokens, counts, num_threads=self.threads)
        if scan.rows is not None:
            pairs = features.shape[0] * self.index.num_docs
            report_top, report_set = {}, {}
            scan.top_k(features, 100, self.threads, report_top)
            scan.best_rows(features, CANDIDATES[-1], self.threads, report_set)
            fractions["rescored_top_100"] = report_top.get("rescored", 0) / pairs
            fractions["rescored_set_200"] = report_set.get("rescored", 0) / pairs
        candidates = np.ascontiguousarray(self.index.top_k(features, CANDIDATES[-1])[0], dtype=np.int64)
        if screening.applies(*candidates.shape, FINAL_K):
            documents = self.index._require_documents("rerank")
            screen = {}
            screening.screened_scores(self.index._model.centred(tokens, self.threads),
                                      np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
                                      documents, candidates, FINAL_K, self.threads, screen)
            fractions["rerank_scored_200"] = screen["scored"] / candidates.size
        return fractions

    def first_stage(self, tokens, counts, k):
        features = self.index.features(tokens, counts, num_threads=self.threads)
        return self.index.top_k(features, k, num_threads=self.threads)[0]

    def rerank(self, tokens, counts, candidates):
        return self.index.rerank(tokens, counts, candidates, FINAL_K, num_threads=self.threads)[0]

    def end_to_end(self, tokens, counts, k_candidates):
        return self.index.search(
            tokens, counts, k=FINAL_K, candidates=k_candidates, num_threads=self.threads
        )[0]


class OriginalPipeline(Pipeline):
    name = "original"

    def __init__(self, data, threads):
        import torch
        from lemur import Lemur
        from lemur.maxsim import MaxSim
        from lemur.model import MLP

        torch.set_num_threads(threads)
        self.torch, self.threads = torch, threads
        self.version = f"torch {torch.__version__}"
        weights = np.load(data["folder"] / "model.npz")
        mlp = MLP(input_dim=DIM, output_dim=128, hidden_dim=512, final_hidden_dim=HIDDEN,
                  num_layers=1, activation="gelu")
        with torch.no_grad():
            mlp.feature_extractor[0].weight.copy_(torch.from_numpy(weights["layer_0_weight"]))
            mlp.feature_extractor[0].bias.copy_(torch.from_numpy(weights["layer_0_bias"]))
            mlp.feature_extractor[1].weight.copy_(torch.from_numpy(weights["layer_0_ln_weight"]))
            mlp.feature_extractor[1].bias.copy_(torch.from_numpy(weights["layer_0_ln_bias"]))
        self.lemur = Lemur(device="cpu")
        self.lemur.mlp, self.lemur.final_hidden_dim = mlp.eval(), HIDDEN
        self.W = torch.from_numpy(data["W"])
        self.maxsim = MaxSim(data["doc_tokens"], data["doc_counts"])

    def first_stage(self, tokens, counts, k):
        with self.torch.inference_mode():
            features = self.lemur.compute_features((tokens, counts))
            return self.torch.topk(features @ self.W.T, k, dim=1).indices.numpy().astype(np.int32)

    def rerank(self, tokens, counts, candidates):
        return self.maxsim.rerank_subset(
            tokens, counts, FINAL_K, np.ascontiguousarray(candidates, dtype=np.int32), self.threads
        )


class ForkPipeline(Pipeline):
    name = "fork"

    def __init__(self, data, threads):
        import numba
        from lemur.lemur_numpy import LemurNumPy

        numba.set_num_threads(threads)
        self.version = f"numba {numba.__version__}"
        self.lemur = LemurNumPy().load_npz(data["folder"] / "model.npz")
        self.lemur.W_out = data["W"]
        self.doc_tokens, self.doc_counts = data["doc_tokens"], data["doc_counts"]

    def first_stage(self, tokens, counts, k):
        return self.lemur.top_k(self.lemur.compute_features(tokens, counts), k)[0]

    def rerank(self, tokens, counts, candidates):
        # the fork scores the candidates; the final top k is the user's argsort
        scores = self.lemur.exact_maxsim(tokens, counts, self.doc_tokens, self.doc_counts, candidates)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :FINAL_K]
        return np.take_along_axis(candidates, order, axis=1)


def single_latencies(pipeline, folder: Path, single_repeat: int) -> list[float]:
    singles = np.load(folder / "single_queries.npy").reshape(-1, QUERY_TOKENS, DIM)
    one = np.array([QUERY_TOKENS], dtype=np.int32)
    pipeline.end_to_end(singles[0], one, CANDIDATES[-1])
    latencies = []
    for query in singles[:single_repeat]:
        start = time.perf_counter()
        pipeline.end_to_end(query, one, CANDIDATES[-1])
        latencies.append(time.perf_counter() - start)
    return latencies


def measure(implementation: str, folder: Path, threads: int, repeat: int, single_repeat: int) -> dict:
    if implementation in PEERS:
        problem = peer_import_problem(implementation)
        if problem:
            return {"skipped": problem}
    mapped = implementation in LEMUR_CONFIGURATIONS and LEMUR_CONFIGURATIONS[implementation][2]
    rss_empty = rss_bytes("VmRSS")
    W_bytes = int(np.load(folder / "W.npy", mmap_mode="r").nbytes)
    data = {"folder": folder} if mapped else {
        "folder": folder,
        "W": np.load(folder / "W.npy"),
        "doc_tokens": np.load(folder / "doc_tokens.npy"),
        "doc_counts": np.load(folder / "doc_counts.npy"),
    }
    if implementation in LEMUR_CONFIGURATIONS:
        pipeline = LemurPipeline(data, threads, implementation)
    else:
        pipeline = {"original": OriginalPipeline, "fork": ForkPipeline}[implementation](data, threads)
    if implementation != "original":  # whose MaxSim keeps raw pointers into its arrays
        data.clear()
    queries = np.load(folder / "queries.npy")
    counts = np.full(BATCH, QUERY_TOKENS, dtype=np.int32)
    results: dict[str, object] = {
        "version": pipeline.version,
        "W_bytes": W_bytes,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "unset"),
        "rss_after_load": rss_bytes("VmRSS") - rss_empty,
    }
    if mapped:
        # resident memory after exactly 100 searches, before the batch workloads touch more
        results["open_ms"] = pipeline.open_ms
        results["mapped_resident_after_load"] = mapped_resident_bytes(pipeline.mapped_path)
        latencies = single_latencies(pipeline, folder, max(single_repeat, 100))
        results["rss_after_100_searches"] = rss_bytes("VmRSS") - rss_empty
        results["mapped_resident_after_100_searches"] = mapped_resident_bytes(pipeline.mapped_path)
    if isinstance(pipeline, LemurPipeline):
        results.update(pipeline.rescored_fractions(queries, counts))
    rss_before = rss_bytes("VmRSS")
    peak_reset = reset_peak_rss()
    for k in CANDIDATES:
        results[f"first_stage_{k}"] = 1e3 * median_seconds(
            lambda k=k: pipeline.first_stage(queries, counts, k), repeat)
    results["first_stage_peak_extra_bytes"] = (rss_bytes("VmHWM") - rss_before) if peak_reset else None
    results["rss_bytes"] = rss_before
    for k in CANDIDATES:
        candidates = np.ascontiguousarray(pipeline.first_stage(queries, counts, k), dtype=np.int64)
        results[f"rerank_{k}"] = 1e3 * median_seconds(
            lambda candidates=candidates: pipeline.rerank(queries, counts, candidates), repeat)
        results[f"end_to_end_{k}"] = 1e3 * median_seconds(
            lambda k=k: pipeline.end_to_end(queries, counts, k), repeat)
    if not mapped:
        latencies = single_latencies(pipeline, folder, single_repeat)
    results["single_p50"] = float(np.percentile(latencies, 50) * 1e3)
    results["single_p90"] = float(np.percentile(latencies, 90) * 1e3)
    return results


# -- the report (in the parent) --------------------------------------------------------------


def coretype_environment(coretype: str) -> dict[str, str]:
    """This process's environment with OPENBLAS_CORETYPE as asked ('unset': none)."""
    environment = dict(os.environ)
    environment.pop("OPENBLAS_CORETYPE", None)
    if coretype != "unset":
        environment["OPENBLAS_CORETYPE"] = coretype
    return environment


def run_worker_process(script: str, implementation: str, peer: str | None, peer_python: str | None,
                       coretype: str, worker_arguments: list[str]) -> dict:
    """Run `script --worker implementation ...` in a process of its own and return
    the JSON it prints last; a peer runs with its checkout first on PYTHONPATH.
    {"skipped": why} when the peer was not given or the worker failed."""
    environment = coretype_environment(coretype)
    python = sys.executable
    if implementation in PEERS:
        if not peer:
            return {"skipped": f"no --{implementation} checkout given"}
        python = peer_python or sys.executable
        environment["PYTHONPATH"] = os.pathsep.join([peer, environment.get("PYTHONPATH", "")])
        environment["LEMUR_COMPARE_PEER"] = peer
    child = subprocess.run([python, script, "--worker", implementation, *worker_arguments],
                           env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines()
        return {"skipped": f"failed: {lines[-1] if lines else child.returncode}"}
    return json.loads(child.stdout.strip().splitlines()[-1])


def run_worker(implementation, folder, arguments, coretype) -> dict:
    peer = {"original": arguments.original, "fork": arguments.fork}.get(implementation)
    return run_worker_process(
        __file__, implementation, peer, arguments.peer_python, coretype,
        ["--data", str(folder), "--threads", str(arguments.threads), "--repeat", str(arguments.repeat),
         "--single", str(arguments.single)])


ROWS = [
    ("first stage (features + top-100), 100 queries", "first_stage_100", "ms"),
    ("first stage (features + top-200), 100 queries", "first_stage_200", "ms"),
    ("rerank 100 queries x 100 candidates -> 10", "rerank_100", "ms"),
    ("rerank 100 queries x 200 candidates -> 10", "rerank_200", "ms"),
    ("end to end, k'=100 -> 10, 100 queries", "end_to_end_100", "ms"),
    ("end to end, k'=200 -> 10, 100 queries", "end_to_end_200", "ms"),
    ("single query end to end (k'=200), p50", "single_p50", "ms"),
    ("single query end to end (k'=200), p90", "single_p90", "ms"),
    ("first stage peak memory above RSS before it", "first_stage_peak_extra_bytes", "MB"),
    ("resident memory after loading (RSS growth)", "rss_after_load", "MB"),
    ("pairs rescored in float32, top-100", "rescored_top_100", "%"),
    ("pairs rescored in float32, k'=200 set", "rescored_set_200", "%"),
    ("rerank's screen: candidates left to float32", "rerank_scored_200", "%"),
]
#: rows of the mapped configuration only
MAPPED_ROWS = [
    ("opening the mapped index", "open_ms", "ms"),
    ("its file's pages resident after opening", "mapped_resident_after_load", "MB"),
    ("... after 100 single-query searches", "mapped_resident_after_100_searches", "MB"),
    ("RSS growth after 100 single-query searches", "rss_after_100_searches", "MB"),
]


def run_rounds(folder, arguments, coretype) -> list[dict]:
    """Every implementation asked for, `arguments.rounds` times in turns (the
    order reversed every other round): one {name: results} per round."""
    chosen = set(arguments.only or IMPLEMENTATIONS) | {"lemur"}
    rounds = []
    for turn in range(arguments.rounds):
        order = [name for name in IMPLEMENTATIONS if name in chosen]
        results = {name: {"skipped": "not asked for (--only)"} for name in IMPLEMENTATIONS}
        for name in order if turn % 2 == 0 else reversed(order):
            results[name] = run_worker(name, folder, arguments, coretype)
        if "skipped" in results["lemur"]:
            raise SystemExit(f"lemur failed: {results['lemur']['skipped']}")
        rounds.append(results)
    return rounds


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def median_over_rounds(rounds: list[dict]) -> dict:
    """One implementation's results over the rounds: each figure's median over
    the rounds that have it; anything else as the first round has it. Skipped
    in any round: that round's reason."""
    for results in rounds:
        if "skipped" in results:
            return results
    combined = {}
    for key, value in rounds[0].items():
        values = [results.get(key) for results in rounds]
        numbers = [value for value in values if is_number(value)]
        combined[key] = float(np.median(numbers)) if is_number(value) and numbers else value
    return combined


def paired_ratio(rounds: list[dict], theirs: str, ours: str, key: str) -> float | None:
    """The median over the rounds of theirs[key] / ours[key], each from the same round."""
    ratios = [results[theirs][key] / results[ours][key] for results in rounds
              if is_number(results[theirs].get(key)) and is_number(results[ours].get(key))
              and results[ours][key] > 0]
    return float(np.median(ratios)) if ratios else None


def report(num_docs, coretype, rounds, threads):
    results = {name: median_over_rounds([round_results[name] for round_results in rounds])
               for name in IMPLEMENTATIONS}
    base = results["lemur"]
    print(
        f"\n== {num_docs:,} documents, OPENBLAS_CORETYPE={coretype}, {threads} threads "
        f"(W: {base['W_bytes'] / 2**20:.0f} MB)"
        + (f", medians of {len(rounds)} rounds" if len(rounds) > 1 else "") + " =="
    )
    names = [name for name in IMPLEMENTATIONS if "skipped" not in results[name]]
    for name in IMPLEMENTATIONS:
        if "skipped" in results[name]:
            print(f"  ({name}: skipped, {results[name]['skipped']})")
    ours = [name for name in names if name in LEMUR_CONFIGURATIONS]
    reference = "original" if "original" in names else None
    header = f"  {'':44s}" + "".join(f"{name:>16s}" for name in names)
    if reference:
        header += "".join(f"{'orig/' + name[6:] if name != 'lemur' else 'orig/lemur':>16s}" for name in ours)
    print(header + "\n  " + "-" * (len(header) - 2))
    for label, key, unit in ROWS:
        values = [results[name].get(key) for name in names]
        if all(value is None for value in values):
            continue
        print(f"  {label:44s}" + "".join(cell(value, unit) for value in values) + (
            "".join(ratio(paired_ratio(rounds, reference, name, key), unit) for name in ours)
            if reference else ""))
    mapped = [name for name in names if name in LEMUR_CONFIGURATIONS and LEMUR_CONFIGURATIONS[name][2]]
    for name in mapped:
        print(f"  {name}:")
        for label, key, unit in MAPPED_ROWS:
            value = results[name].get(key)
            share = f"  ({value / base['W_bytes']:.2f}x W)" if unit == "MB" and value is not None else ""
            print(f"    {label:42s}{cell(value, unit)}{share}")
    print("  (ratios: the original's time / lemur's, so > 1 means lemur is faster"
          + (", the median of the rounds' ratios)" if len(rounds) > 1 else ")"))
    return results


def cell(value, unit: str) -> str:
    if value is None:
        return f"{'-':>16s}"
    if unit == "MB":
        return f"{value / 2**20:14.0f}MB"
    if unit == "%":
        return f"{100 * value:15.2f}%"
    return f"{value:14.2f}ms"


def ratio(value, unit: str) -> str:
    if unit != "ms" or value is None:
        return f"{'':16s}"
    return f"{value:15.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--original", help="checkout of ejaasaari/lemur, built in place")
    parser.add_argument("--fork", help="checkout of oaustegard/lemur-numpy")
    parser.add_argument("--peer-python", help="interpreter for the peers (without lemur-retrieval)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10, help="runs per batch measurement")
    parser.add_argument("--single", type=int, default=100, help="single queries timed")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of every implementation's process per pass, in turns (medians reported)")
    parser.add_argument("--coretype", action="append", help="OPENBLAS_CORETYPE ('unset' for none); repeatable")
    parser.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lemur-bench"))
    parser.add_argument("--json", help="also write all results to this file")
    parser.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS,
                        help="run these implementations only (default: all; lemur's float32 always runs)")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.rounds < 1:
        parser.error("--rounds must be at least 1")

    if arguments.worker:
        print(json.dumps(measure(arguments.worker, Path(arguments.data), arguments.threads,
                                 arguments.repeat, arguments.single)))
        return
    if arguments.prepare:
        save_mapped_index(Path(arguments.data))
        return
    everything = []
    for num_docs in arguments.docs:
        folder = make_data(Path(arguments.data_dir), num_docs, arguments.single)
        subprocess.run([sys.executable, __file__, "--prepare", "--data", str(folder)], check=True)
        for coretype in arguments.coretype or ["unset", "Haswell"]:
            rounds = run_rounds(folder, arguments, coretype)
            results = report(num_docs, coretype, rounds, arguments.threads)
            everything.append({"docs": num_docs, "coretype": coretype, "threads": arguments.threads,
                               "results": results, "rounds": rounds})
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()

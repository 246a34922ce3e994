"""Training a LEMUR model: lemur.train against the original's Lemur.fit, side by side.

    python bench/training.py --original ~/peers/original --peer-python ~/peers/venv/bin/python \\
        --docs 10000 --epochs 10 --threads 2 --out training.json

The corpus: bench/scale.py's synthetic one (documents of 20-60 unit token
vectors of dimension 128 mixing 1-3 of 256 topics), its first --docs
documents, learn set = the corpus tokens (as the original's default). Both
fits run with the original's defaults (1 layer, final_hidden_dim 2048,
gelu, lr 3e-3, batch 512, grad_clip 0.5, train_subset_size 8192,
learn_subset_size 100,000, OLS sample 16,384) and --epochs, on --threads
threads, one after the other, in processes of their own; the original
through its own API (``Lemur(index=DIR).fit(...)``, in --peer-python, which
has torch), lemur through ``lemur.train``. Printed: total fit time
(targets, training, W for every document), seconds per epoch, and for both
models (and an ELM for reference) recall@10 after the exact rerank of
k' = 20, 50, 100 and 200 candidates against brute-force MaxSim, for --queries
queries near documents (bench/scale.py's), all searched by lemur (the
original's index directory is read by lemur.load).

With --fixtures (../shared/fixtures), also the fixture corpus (300
documents): lemur.train with the settings the original's fixture models
were trained with (its README), against those models, recall@10 after the
rerank of k' = 20, 50 and 100 for the fixtures' 40 queries.

    python bench/training.py --fixtures ../shared/fixtures --docs 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import scale

import lemur
from lemur._config import cpu_model
from lemur._dispatch import kernels

ORIGINAL_FIT = r"""
import sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[1])
from lemur import Lemur
torch.set_num_threads(int(sys.argv[4]))
torch.manual_seed(0)
tokens = np.load(sys.argv[2] + "/tokens.npy")
counts = np.load(sys.argv[2] + "/counts.npy").astype(np.int32)
start = time.perf_counter()
Lemur(index=sys.argv[3], device="cpu").fit(torch.from_numpy(tokens), torch.from_numpy(counts),
                                           epochs=int(sys.argv[5]), force_retrain=True, verbose=True)
print("FIT_SECONDS", time.perf_counter() - start, flush=True)
"""


def run_original(args, folder: str, index_dir: str) -> dict:
    """The original's fit in its own interpreter; per-epoch times from its lines."""
    command = [args.peer_python, "-c", ORIGINAL_FIT, args.original, folder, index_dir, str(args.threads),
               str(args.epochs)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    start, stamps, seconds, losses = time.perf_counter(), [], None, []
    for line in process.stdout:
        if line.startswith("epoch "):
            stamps.append(time.perf_counter() - start)
            losses.append(float(line.split("train_loss=")[1].split()[0]))
            print(f"  original: {line.strip()} ({stamps[-1]:.0f} s)", flush=True)
        elif line.startswith("FIT_SECONDS"):
            seconds = float(line.split()[1])
    if process.wait() != 0 or seconds is None:
        raise RuntimeError(f"the original's fit failed (exit status {process.returncode})")
    epochs = np.diff(stamps)
    return {"fit_s": seconds, "epoch_s": float(np.median(epochs)) if epochs.size else None, "losses": losses}


def recalls(index: lemur.Index, queries: np.ndarray, counts: np.ndarray, truth: np.ndarray,
            candidate_counts: tuple[int, ...] = (20, 50, 100, 200)) -> dict:
    out = {}
    for candidates in candidate_counts:
        found = index.search(queries, counts, k=10, candidates=candidates)[0]
        out[f"recall@10_k{candidates}"] = float(np.mean([np.intersect1d(a, b).size / 10
                                                         for a, b in zip(found, truth)]))
    return out


#: The fixture models the original trained (../shared/fixtures/README.md):
#: variant -> (corpus key, lemur.train settings besides the common ones).
FIXTURE_MODELS = {
    "mlp1_gelu_d128_h2048": ("doc_tokens_d128", dict(num_layers=1, final_hidden_dim=2048, activation="gelu")),
    "mlp2_relu_d96_h256": ("doc_tokens_d96", dict(num_layers=2, hidden_dim=128, final_hidden_dim=256,
                                                  activation="relu")),
    "mlp1_silu_d100_h256": ("doc_tokens_d100", dict(num_layers=1, final_hidden_dim=256, activation="silu")),
    "mlp1_mish_d64_h256": ("doc_tokens_d64", dict(num_layers=1, final_hidden_dim=256, activation="mish")),
}


def fixture_quality(folder: str, threads: int, precisions: list[str]) -> dict:
    """lemur.train (each matmul precision) against the original's fixture
    models, on the fixture corpus."""
    results = {}
    with np.load(os.path.join(folder, "corpus.npz"), allow_pickle=False) as corpus:
        arrays = {key: corpus[key] for key in corpus.files}
    counts = arrays["doc_counts"].astype(np.int64)
    for variant, (key, settings) in FIXTURE_MODELS.items():
        tokens = arrays[key]
        with np.load(os.path.join(folder, variant, "golden.npz"), allow_pickle=False) as golden:
            queries, query_counts = golden["query_tokens"], golden["query_counts"].astype(np.int64)
        keep = query_counts > 0
        offsets = np.concatenate([[0], np.cumsum(query_counts)])
        queries = np.concatenate([queries[offsets[i] : offsets[i + 1]] for i in np.flatnonzero(keep)])
        query_counts = query_counts[keep]
        everything = np.tile(np.arange(counts.size), (query_counts.size, 1))
        exact = lemur.maxsim_scores(queries, query_counts, tokens, counts, everything, num_threads=threads)
        truth = np.argsort(-exact, axis=1, kind="stable")[:, :10]
        theirs = lemur.load(os.path.join(folder, variant)).with_documents(tokens, counts)
        results[variant] = {"original": recalls(theirs, queries, query_counts, truth, (20, 50, 100))}
        for precision in precisions:
            name = "lemur" if precision == "float32" else f"lemur-{precision}"
            ours = lemur.train(tokens, counts, epochs=6, train_subset_size=128, learn_subset_size=4096,
                               sample_size=3000, matmul_precision=precision, progress=False, num_threads=threads,
                               **settings)
            results[variant][name] = recalls(ours, queries, query_counts, truth, (20, 50, 100))
        print(f"  fixture {variant}, recall@10 at k' = 20 / 50 / 100: " + "; ".join(
            f"{name} " + " / ".join(f"{figures[f'recall@10_k{k}']:.3f}" for k in (20, 50, 100))
            for name, figures in results[variant].items()), flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--original", help="a checkout of the original LEMUR, its extension built")
    parser.add_argument("--peer-python", default=sys.executable, help="a python with torch, for the original")
    parser.add_argument("--fixtures", help="../shared/fixtures: also compare on the fixture corpus")
    parser.add_argument("--matmul-precision", nargs="+", choices=("float32", "bfloat16"),
                        default=["float32", "bfloat16"], help="lemur.train's matmul_precision, each a run")
    parser.add_argument("--out", help="a JSON file for the figures")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    results = {"cpu": cpu_model(), "amx_bfloat16": kernels.AMX_BFLOAT16, "threads": args.threads, "docs": args.docs,
               "epochs": args.epochs, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    if args.fixtures:
        results["fixtures"] = fixture_quality(args.fixtures, args.threads, args.matmul_precision)
    if not args.docs:
        return _write(results, args.out)
    tokens, counts = scale.corpus_tokens(args.docs)
    tokens = tokens.astype(np.float32)
    targets = np.random.default_rng(5).choice(args.docs, args.queries, replace=False)
    queries, query_counts = scale.queries_for(targets)
    everything = np.tile(np.arange(args.docs), (args.queries, 1))
    exact = lemur.maxsim_scores(queries, query_counts, tokens, counts, everything, num_threads=args.threads)
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "tokens.npy"), tokens)
        np.save(os.path.join(folder, "counts.npy"), counts)
        print(f"{args.docs:,} documents, {tokens.shape[0]:,} tokens of dimension {tokens.shape[1]}; "
              f"{args.epochs} epochs at the original's defaults, {args.threads} threads", flush=True)
        for precision in args.matmul_precision:
            name = "lemur" if precision == "float32" else f"lemur-{precision}"
            start = time.perf_counter()
            trained = lemur.train(tokens, counts, epochs=args.epochs, matmul_precision=precision,
                                  num_threads=args.threads)
            log = trained.training_log
            results[name] = {"fit_s": time.perf_counter() - start, "epoch_s": float(np.median(log["epoch_seconds"])),
                             "targets_s": log["targets_seconds"], "indexing_s": log["indexing_seconds"],
                             "losses": log["losses"], "matmul_precision": precision,
                             **recalls(trained, queries, query_counts, truth)}
            print(f"  {name}: fit {results[name]['fit_s']:.1f} s ({results[name]['epoch_s']:.1f} s an epoch, "
                  f"targets {results[name]['targets_s']:.1f} s, W {results[name]['indexing_s']:.1f} s), "
                  f"recall@10 {results[name]['recall@10_k100']:.3f} / {results[name]['recall@10_k200']:.3f} "
                  "(k' = 100 / 200)", flush=True)
        elm = lemur.fit_elm(tokens, counts, num_threads=args.threads, progress=False)
        results["elm"] = recalls(elm, queries, query_counts, truth)
        print(f"  lemur ELM: recall@10 {results['elm']['recall@10_k100']:.3f} / "
              f"{results['elm']['recall@10_k200']:.3f}", flush=True)
        if args.original:
            index_dir = os.path.join(folder, "original")
            results["original"] = run_original(args, folder, index_dir)
            original = lemur.load(index_dir).with_documents(tokens, counts)  # its directory has no tokens
            results["original"].update(recalls(original, queries, query_counts, truth))
            print(f"  original: fit {results['original']['fit_s']:.1f} s "
                  f"({results['original']['epoch_s'] or 0:.1f} s an epoch), recall@10 "
                  f"{results['original']['recall@10_k100']:.3f} / {results['original']['recall@10_k200']:.3f}",
                  flush=True)
            for precision in args.matmul_precision:
                name = "lemur" if precision == "float32" else f"lemur-{precision}"
                ratio = results[name]["fit_s"] / results["original"]["fit_s"]
                results[name]["time_ratio"] = ratio
                print(f"  {name}'s fit time / the original's: {ratio:.2f}x; recall@10 difference "
                      f"{results[name]['recall@10_k100'] - results['original']['recall@10_k100']:+.3f} / "
                      f"{results[name]['recall@10_k200'] - results['original']['recall@10_k200']:+.3f}",
                      flush=True)
    return _write(results, args.out)


def _write(results: dict, path: str | None) -> int:
    if path:
        with open(path, "w") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Indexing throughput: fitting W for new documents, lemur against the original.

    python bench/indexing.py --original ~/peers/lemur --peer-python ~/peers/venv/bin/python

Adds 10,000 documents of 60 to 100 tokens (d = 128) to an index with a
one-layer GELU model (h = 2048) and an OLS sample of 16,384 token vectors
drawn from the documents (as the original does when it has no learn set), on
2 threads, and prints documents per second:

* lemur: ``Index.add_documents`` after ``attach_sample``; the pseudo-inverse
  of psi(S), computed once per process and then kept, is timed on its own;
* the original LEMUR: ``Lemur.compute_weights(docs, counts, sample_size)``,
  which draws a sample and computes the SVD of psi(S) on every call.

Each implementation runs in a process of its own, once per OPENBLAS_CORETYPE
setting asked for (default: unset and Haswell). The data comes from
bench/compare.py's generator (same cache folder); see its docstring for how to
build the original outside this project.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from compare import make_data, peer_import_problem, run_worker_process

SAMPLE_SIZE = 16384


def measure_lemur(folder: Path, num_docs: int, threads: int) -> dict:
    import lemur

    tokens, counts = load_documents(folder, num_docs)
    model = lemur.Model.load(folder / "model.npz")
    index = lemur.Index(model, np.empty((0, model.feature_dim), np.float32),
                        np.empty((0, model.input_dim), np.float32), [])
    index.attach_sample(tokens, size=SAMPLE_SIZE, seed=0)
    start = time.perf_counter()
    index._sample.projection(model, threads)  # what the first add_documents computes
    setup = time.perf_counter() - start
    start = time.perf_counter()
    index.add_documents(tokens, counts, progress=False, num_threads=threads)
    add = time.perf_counter() - start
    return {"version": lemur.__version__, "setup_s": setup, "add_s": add}


def measure_original(folder: Path, num_docs: int, threads: int) -> dict:
    problem = peer_import_problem("original")
    if problem:
        return {"skipped": problem}
    import torch
    from lemur import Lemur
    from lemur.model import MLP

    torch.set_num_threads(threads)
    tokens, counts = load_documents(folder, num_docs)
    weights = np.load(folder / "model.npz")
    mlp = MLP(input_dim=tokens.shape[1], output_dim=128, hidden_dim=512,
              final_hidden_dim=weights["layer_0_weight"].shape[0], num_layers=1, activation="gelu")
    with torch.no_grad():
        mlp.feature_extractor[0].weight.copy_(torch.from_numpy(weights["layer_0_weight"]))
        mlp.feature_extractor[0].bias.copy_(torch.from_numpy(weights["layer_0_bias"]))
        mlp.feature_extractor[1].weight.copy_(torch.from_numpy(weights["layer_0_ln_weight"]))
        mlp.feature_extractor[1].bias.copy_(torch.from_numpy(weights["layer_0_ln_bias"]))
    original = Lemur(device="cpu")
    original.mlp, original.final_hidden_dim = mlp.eval(), mlp.config["final_hidden_dim"]
    original.learn = torch.from_numpy(tokens)
    original.mean, original.std = torch.tensor(0.0), torch.tensor(1.0)  # lemur's defaults too
    torch.manual_seed(0)
    start = time.perf_counter()
    original.compute_weights(torch.from_numpy(tokens), torch.from_numpy(counts),
                             sample_size=SAMPLE_SIZE, verbose=False)
    return {"version": f"torch {torch.__version__}", "add_s": time.perf_counter() - start}


def load_documents(folder: Path, num_docs: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.load(folder / "doc_counts.npy")[:num_docs]
    tokens = np.load(folder / "doc_tokens.npy", mmap_mode="r")[: int(counts.sum())]
    return np.ascontiguousarray(tokens), counts.astype(np.int32)


def run(implementation: str, folder: Path, arguments, coretype: str) -> dict:
    return run_worker_process(
        __file__, implementation, arguments.original, arguments.peer_python, coretype,
        ["--data", str(folder), "--docs", str(arguments.docs), "--threads", str(arguments.threads)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000, help="documents to add (default 10000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--original", help="checkout of ejaasaari/lemur, built in place")
    parser.add_argument("--peer-python", help="interpreter for the original (without lemur-retrieval)")
    parser.add_argument("--coretype", action="append", help="OPENBLAS_CORETYPE ('unset' for none); repeatable")
    parser.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lemur-bench"))
    parser.add_argument("--worker", choices=("lemur", "original"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.worker:
        measure = measure_lemur if arguments.worker == "lemur" else measure_original
        print(json.dumps(measure(Path(arguments.data), arguments.docs, arguments.threads)))
        return
    folder = make_data(Path(arguments.data_dir), max(arguments.docs, 10_000), 100)
    for coretype in arguments.coretype or ["unset", "Haswell"]:
        ours = run("lemur", folder, arguments, coretype)
        if "skipped" in ours:
            raise SystemExit(f"lemur failed: {ours['skipped']}")
        theirs = run("original", folder, arguments, coretype)
        n = arguments.docs
        print(f"\n== adding {n:,} documents (~80 tokens, d=128, h=2048, S={SAMPLE_SIZE:,}), "
              f"{arguments.threads} threads, OPENBLAS_CORETYPE={coretype} ==")
        print(f"  lemur {ours['version']}: pinv(psi(S)) once per process {ours['setup_s']:.1f} s, then "
              f"{n / ours['add_s']:,.0f} documents/s ({ours['add_s']:.1f} s); "
              f"with the setup: {n / (ours['add_s'] + ours['setup_s']):,.0f} documents/s")
        if "skipped" in theirs:
            print(f"  original: skipped, {theirs['skipped']}")
            continue
        print(f"  original ({theirs['version']}), compute_weights: {n / theirs['add_s']:,.0f} documents/s "
              f"({theirs['add_s']:.1f} s, its SVD included, as on every call)")
        print(f"  lemur / original: {theirs['add_s'] / ours['add_s']:.2f}x "
              f"({theirs['add_s'] / (ours['add_s'] + ours['setup_s']):.2f}x counting lemur's one-time setup)")


if __name__ == "__main__":
    main()

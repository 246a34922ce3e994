"""Query-feature throughput: lemur against a PyTorch reference, same run.

    python bench/features.py                  # both OPENBLAS_CORETYPE settings
    python bench/features.py --coretype unset # only what users have

For each ``OPENBLAS_CORETYPE`` setting (OpenBLAS reads it once, when it is
loaded, so each setting runs in a child process) this times, with medians of
repeated runs:

* lemur's ``Model.features`` on a ragged batch (default 100 queries x 32
  tokens, d = 128, h = 2048, one GELU layer, 2 threads);
* the same model in PyTorch (``nn.Linear`` + ``nn.LayerNorm`` + ``nn.GELU`` +
  ``segment_reduce`` sum / 32), when torch is importable;
* lemur's product alone on the same GEMM (tokens x weight^T), the roofline of
  the whole computation, and NumPy's matmul on it (NumPy's own OpenBLAS, with
  its own threads) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from compare import coretype_environment, median_seconds


def measure(arguments: argparse.Namespace) -> dict[str, object]:
    """Run the benchmark in this process (OPENBLAS_CORETYPE already set)."""
    import lemur
    from lemur._dispatch import kernels, variant

    random = np.random.default_rng(0)
    d, h, threads = arguments.dim, arguments.hidden, arguments.threads
    layer = lemur.Layer(
        random.standard_normal((h, d), dtype=np.float32) / np.float32(np.sqrt(d)),
        random.standard_normal(h, dtype=np.float32) * 0.1,
        1 + random.standard_normal(h, dtype=np.float32) * 0.1,
        random.standard_normal(h, dtype=np.float32) * 0.1,
    )
    model = lemur.Model([layer], activation="gelu")
    counts = np.full(arguments.queries, arguments.tokens, dtype=np.int64)
    tokens = random.standard_normal((int(counts.sum()), d), dtype=np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)

    results: dict[str, object] = {
        "coretype": os.environ.get("OPENBLAS_CORETYPE", "unset"),
        "openblas_core": kernels.blas_info()["corename"],
        "kernels": variant,
        "threads": threads,
        "gemm_flops": 2.0 * tokens.shape[0] * d * h,
    }
    results["lemur"] = median_seconds(
        lambda: model.features(tokens, counts, num_threads=threads), arguments.repeat
    )
    gemm_out = np.empty((tokens.shape[0], h), dtype=np.float32)
    if hasattr(kernels, "gemm_packed"):  # lemur's own products (_tiles.h)
        packed = kernels.pack_matrix(model.layers[0].weight, True)
        product = lambda: kernels.gemm_packed(tokens, packed, gemm_out, threads)  # noqa: E731
    else:  # earlier lemur: the bundled OpenBLAS's sgemm (for bench/builds.py comparisons)
        product = lambda: kernels.gemm(tokens, model.layers[0].weight, gemm_out, True, threads)  # noqa: E731
    results["gemm"] = median_seconds(product, arguments.repeat)
    weight_t = np.ascontiguousarray(model.layers[0].weight.T)
    results["numpy_matmul"] = median_seconds(
        lambda: np.matmul(tokens, weight_t, out=gemm_out), arguments.repeat)
    try:
        import torch
    except ImportError:
        return results
    torch.set_num_threads(threads)
    network = torch.nn.Sequential(
        torch.nn.Linear(d, h), torch.nn.LayerNorm(h), torch.nn.GELU()
    ).eval()
    with torch.no_grad():
        network[0].weight.copy_(torch.tensor(layer.weight))
        network[0].bias.copy_(torch.tensor(layer.bias))
        network[1].weight.copy_(torch.tensor(layer.ln_weight))
        network[1].bias.copy_(torch.tensor(layer.ln_bias))
    tokens_t, counts_t = torch.from_numpy(tokens), torch.from_numpy(counts)

    def torch_features():
        with torch.inference_mode():
            return torch.segment_reduce(network(tokens_t), "sum", lengths=counts_t, axis=0) / 32

    results["torch"] = median_seconds(torch_features, arguments.repeat)
    results["torch_version"] = torch.__version__
    results["max_abs_difference"] = float(
        np.max(np.abs(torch_features().numpy() - model.features(tokens, counts)))
    )
    return results


def report(results: dict[str, object], arguments: argparse.Namespace) -> None:
    queries = arguments.queries
    gflop = results["gemm_flops"] / 1e9
    print(
        f"\nOPENBLAS_CORETYPE={results['coretype']} (OpenBLAS core: {results['openblas_core']}), "
        f"lemur kernels: {results['kernels']}, {results['threads']} threads, "
        f"{queries} queries x {arguments.tokens} tokens, d={arguments.dim}, h={arguments.hidden}, "
        f"median of {arguments.repeat}"
    )
    print(f"  {'':34s} {'median ms':>10s} {'queries/s':>11s} {'GFLOP/s':>9s}")
    rows = [("lemur Model.features", results["lemur"])]
    if "torch" in results:
        rows.append((f"PyTorch {results['torch_version']} reference", results["torch"]))
    rows.append(("lemur's product alone (same GEMM)", results["gemm"]))
    rows.append(("numpy matmul (its own threads)", results["numpy_matmul"]))
    for name, seconds in rows:
        print(
            f"  {name:34s} {seconds * 1e3:10.2f} {queries / seconds:11,.0f} {gflop / seconds:9.1f}"
        )
    print(f"  the product alone takes {results['gemm'] / results['lemur']:.0%} of lemur's time")
    if "torch" in results:
        print(
            f"  lemur / PyTorch throughput: {results['torch'] / results['lemur']:.2f}x "
            f"(max |difference| {results['max_abs_difference']:.1e})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--coretype",
        action="append",
        help="OPENBLAS_CORETYPE setting to run ('unset' for none); repeatable. "
        "Default: unset and Haswell",
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()

    if arguments.json:  # child process: measure under the inherited environment
        print(json.dumps(measure(arguments)))
        return
    for coretype in arguments.coretype or ["unset", "Haswell"]:
        child = subprocess.run(
            [sys.executable, __file__, "--json", *sys.argv[1:]],
            env=coretype_environment(coretype),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        report(json.loads(child.stdout.strip().splitlines()[-1]), arguments)


if __name__ == "__main__":
    main()

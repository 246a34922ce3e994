"""The big single-call products, at 1 and 2 threads.

    python bench/gemms.py                       # this interpreter's lemur
    python bench/gemms.py --python other/venv/bin/python   # and another install

Times, with medians of repeated runs:

* features for a large batch: ``Model.features``, 1,000 queries x 32 tokens,
  d = 128, h = 2048 (6.7 GFLOP of product);
* ``lemur.scores``: the full score matrix of 100 queries against 10,000 rows
  of W, h = 2048 (4.1 GFLOP), including its finiteness check of W;
* the projection that fits W: 512 documents' targets (512 x 16,384) times
  pinv(psi(S))^T (16,384 x 2048), 34.4 GFLOP, as ``add_documents`` runs it;
* training's three products with the output layer, at ``lemur.train``'s
  defaults (a batch of 512, h = 2048, 8,192 training documents; 17.2 GFLOP
  each): the forward H W^T, the backward G^T H and G W, in float32
  (``kernels.matmul``) and with bfloat16 operands (``matmul_bfloat16``: AMX
  tiles where the CPU has them), packing included.

Each interpreter runs in child processes with OPENBLAS_CORETYPE unset, the
interpreters taking turns round by round (the machine is shared and noisy);
the medians over the rounds are printed. For
an older lemur, whose products were OpenBLAS's sgemm, the projection is timed
through its ``kernels.gemm``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from compare import median_seconds

THREADS = (1, 2)


def measure(repeat: int) -> dict[str, float]:
    import lemur
    from lemur._dispatch import kernels

    random = np.random.default_rng(0)
    d, h = 128, 2048
    layer = lemur.Layer(
        random.standard_normal((h, d), dtype=np.float32) / np.float32(np.sqrt(d)),
        random.standard_normal(h, dtype=np.float32) * 0.1,
        1 + random.standard_normal(h, dtype=np.float32) * 0.1,
        random.standard_normal(h, dtype=np.float32) * 0.1,
    )
    model = lemur.Model([layer])
    tokens = random.standard_normal((1000 * 32, d), dtype=np.float32)
    counts = np.full(1000, 32)
    features = random.standard_normal((100, h), dtype=np.float32)
    W = random.standard_normal((10_000, h), dtype=np.float32)
    targets = random.standard_normal((512, 16_384), dtype=np.float32)
    projection = random.standard_normal((16_384, h), dtype=np.float32) / np.float32(128)
    W_block = np.empty((512, h), dtype=np.float32)
    if hasattr(kernels, "gemm_packed"):
        packed = kernels.pack_matrix(projection, False)

        def project(threads):
            kernels.gemm_packed(targets, packed, W_block, threads)
    else:
        def project(threads):
            kernels.gemm(targets, projection, W_block, False, threads)

    hidden = random.standard_normal((512, h), dtype=np.float32)
    output = random.standard_normal((8192, h), dtype=np.float32)
    grad = random.standard_normal((512, 8192), dtype=np.float32)
    training_products = {  # name -> (a, transpose a, b, transpose b, out)
        "forward": (hidden, False, output, True, np.empty((512, 8192), np.float32)),
        "weight grad": (grad, True, hidden, False, np.empty((8192, h), np.float32)),
        "input grad": (grad, False, output, False, np.empty((512, h), np.float32)),
    }
    products = [kernel for kernel in ("matmul", "matmul_bfloat16") if hasattr(kernels, kernel)]

    results: dict[str, float] = {"version": lemur.__version__}
    for threads in THREADS:
        for name, (a, transpose_a, b, transpose_b, out) in training_products.items():
            for kernel in products:
                results[f"{name} {kernel}_{threads}"] = median_seconds(
                    lambda: getattr(kernels, kernel)(a, transpose_a, b, transpose_b, out, False, threads),  # noqa: B023
                    repeat)
        results[f"features_{threads}"] = median_seconds(
            lambda: model.features(tokens, counts, num_threads=threads), repeat)  # noqa: B023
        results[f"scores_{threads}"] = median_seconds(
            lambda: lemur.scores(features, W, num_threads=threads), repeat)  # noqa: B023
        results[f"projection_{threads}"] = median_seconds(lambda: project(threads), repeat)  # noqa: B023
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", default=[], help="another interpreter to time too")
    parser.add_argument("--repeat", type=int, default=5, help="calls timed per round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds, each running every interpreter once, one after the other")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.json:
        print(json.dumps(measure(arguments.repeat)))
        return
    environment = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
    interpreters = [sys.executable, *arguments.python]
    rounds: list[list[dict[str, float]]] = [[] for _ in interpreters]
    for _ in range(arguments.rounds):  # interleaved, so that all see the same machine load
        for index, python in enumerate(interpreters):
            child = subprocess.run([python, __file__, "--json", "--repeat", str(arguments.repeat)],
                                   env=environment, stdout=subprocess.PIPE, text=True, check=True)
            rounds[index].append(json.loads(child.stdout.strip().splitlines()[-1]))
    keys = set.intersection(*(set(runs[0]) for runs in rounds)) - {"version"}
    results = [{key: float(np.median([r[key] for r in runs])) for key in keys} for runs in rounds]
    flops = {"features": 2.0 * 32_000 * 128 * 2048, "scores": 2.0 * 100 * 10_000 * 2048,
             "projection": 2.0 * 512 * 16_384 * 2048}
    flops.update({f"{name} {kernel}": 2.0 * 512 * 8192 * 2048 for name in ("forward", "weight grad", "input grad")
                  for kernel in ("matmul", "matmul_bfloat16") if f"{name} {kernel}_1" in keys})
    print(f"medians over {arguments.rounds} interleaved rounds of {arguments.repeat}-call medians, "
          "OPENBLAS_CORETYPE unset; ms (GFLOP/s)")
    print(f"  {'':40s}" + "".join(f"{python[-40:]:>44s}" for python in interpreters))
    for name in flops:
        for threads in THREADS:
            key = f"{name}_{threads}"
            cells = "".join(f"{r[key] * 1e3:36.2f} ({flops[name] / r[key] / 1e9:5.0f})" for r in results)
            print(f"  {name + f', {threads} thread' + 's' * (threads > 1):40s}{cells}")


if __name__ == "__main__":
    main()

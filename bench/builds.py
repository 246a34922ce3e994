"""Two installations of lemur on the same workloads, runs interleaved.

    python bench/builds.py --python wheel=/tmp/wheel/bin/python \\
                           --python native=/tmp/native/bin/python

Meant for the portable wheel against a ``-march=native`` build
(``pip install . -Csetup-args=-Dnative=true``): for several rounds, each
installation runs bench/features.py (100 queries x 32 tokens) and
bench/compare.py's lemur pipeline (10,000 documents: first stage, rerank, end
to end, single queries), one after the other, so that both see the same
machine load. Prints the medians over the rounds and each build's time
relative to the first one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np

from compare import make_data

HERE = Path(__file__).parent
METRICS = ["features", "first_stage_100", "first_stage_200", "rerank_100", "rerank_200",
           "end_to_end_100", "end_to_end_200", "single_p50", "single_p90"]


def run_once(python: str, folder: Path, threads: int) -> dict[str, float]:
    environment = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
    features = subprocess.run(
        [python, str(HERE / "features.py"), "--json", "--threads", str(threads), "--repeat", "20"],
        env=environment, stdout=subprocess.PIPE, text=True, check=True,
    )
    pipeline = subprocess.run(
        [python, str(HERE / "compare.py"), "--worker", "lemur", "--data", str(folder),
         "--threads", str(threads), "--repeat", "7", "--single", "50"],
        env=environment, stdout=subprocess.PIPE, text=True, check=True,
    )
    results = json.loads(pipeline.stdout.strip().splitlines()[-1])
    results["features"] = json.loads(features.stdout.strip().splitlines()[-1])["lemur"] * 1e3
    return {metric: float(results[metric]) for metric in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", required=True, metavar="NAME=PYTHON",
                        help="an installation to measure, as name=interpreter; the first is the reference")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lemur-bench"))
    arguments = parser.parse_args()

    builds = dict(entry.split("=", 1) for entry in arguments.python)
    folder = make_data(Path(arguments.data_dir), 10_000, 100)
    samples: dict[str, dict[str, list[float]]] = {name: {m: [] for m in METRICS} for name in builds}
    for _ in range(arguments.rounds):
        for name, python in builds.items():
            for metric, value in run_once(python, folder, arguments.threads).items():
                samples[name][metric].append(value)
    names = list(builds)
    print(f"medians of {arguments.rounds} interleaved rounds, {arguments.threads} threads, "
          "OPENBLAS_CORETYPE unset (ms; in brackets: time relative to the first build)")
    print(f"  {'':20s}" + "".join(f"{name:>22s}" for name in names))
    for metric in METRICS:
        reference = float(np.median(samples[names[0]][metric]))
        cells = []
        for name in names:
            value = float(np.median(samples[name][metric]))
            cells.append(f"{value:10.2f} ({value / reference:5.1%})")
        print(f"  {metric:20s}" + "".join(f"{cell:>22s}" for cell in cells))


if __name__ == "__main__":
    main()

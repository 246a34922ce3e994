"""The figure in bench/README.md, from the results of bench/compare.py --json.

    python bench/compare.py ... --json bench/compare_results.json
    python bench/plot.py bench/compare_results.json bench/results.png

Left: throughput (queries/s, 100-query batches) against the number of
documents, for the first stage (features + top-100) and end to end (top-200,
exact rerank, 10). Right: where the time of a 100-query batch goes at the
smallest corpus: first stage and rerank, for each implementation. Needs
matplotlib.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"lemur": "#1b7837", "lemur-int8": "#5aae61", "lemur-bf16": "#a6dba0", "original": "#762a83",
           "fork": "#e08214"}
BATCH = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="the JSON written by bench/compare.py --json")
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--coretype", default="unset", help="which OPENBLAS_CORETYPE run to plot")
    arguments = parser.parse_args()

    runs = [run for run in json.load(open(arguments.results)) if run["coretype"] == arguments.coretype]
    runs.sort(key=lambda run: run["docs"])
    names = [name for name in COLOURS if "skipped" not in runs[0]["results"][name]]
    figure, (throughput, breakdown) = plt.subplots(1, 2, figsize=(11, 4.2))

    docs = [run["docs"] for run in runs]
    for name in names:
        for key, style, label in (("first_stage_100", "-", "first stage"), ("end_to_end_200", "--", "end to end")):
            values = [BATCH / (run["results"][name][key] / 1e3) for run in runs]
            throughput.plot(docs, values, style, marker="o", color=COLOURS[name], label=f"{name}, {label}")
    throughput.set_xscale("log")
    throughput.set_yscale("log")
    throughput.set_xlabel("documents")
    throughput.set_ylabel("queries / s (100-query batches)")
    throughput.set_title("throughput")
    throughput.grid(True, which="both", alpha=0.3)
    throughput.legend(fontsize=7)

    smallest = runs[0]["results"]
    positions = range(len(names))
    first = [smallest[name]["first_stage_200"] for name in names]
    rerank = [smallest[name]["rerank_200"] for name in names]
    breakdown.bar(positions, first, color=[COLOURS[n] for n in names], label="first stage (features + top-200)")
    breakdown.bar(positions, rerank, bottom=first, color=[COLOURS[n] for n in names], alpha=0.45,
                  label="rerank (exact MaxSim, 200 -> 10)")
    for position, (a, b) in enumerate(zip(first, rerank)):
        breakdown.text(position, a + b, f"{a + b:.0f} ms", ha="center", va="bottom", fontsize=8)
    breakdown.set_xticks(list(positions), names)
    breakdown.set_ylabel("ms per 100-query batch")
    breakdown.set_title(f"where the time goes, {runs[0]['docs']:,} documents")
    breakdown.legend(fontsize=7)

    figure.suptitle(f"lemur vs the original LEMUR and the Numba fork ({runs[0]['threads']} threads, "
                    f"OPENBLAS_CORETYPE={arguments.coretype})", fontsize=10)
    figure.tight_layout()
    figure.savefig(arguments.out, dpi=110)


if __name__ == "__main__":
    main()

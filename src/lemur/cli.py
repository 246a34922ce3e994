"""The ``lemur`` command line (also ``python -m lemur``)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np


def _demo(arguments: argparse.Namespace) -> int:
    from lemur import Layer, Model
    from lemur._dispatch import variant
    from lemur._threads import resolve_num_threads

    threads = resolve_num_threads(arguments.threads)
    random = np.random.default_rng(arguments.seed)
    if arguments.model is None:
        dim, hidden = 128, 2048
        model = Model(
            [
                Layer(
                    weight=random.standard_normal((hidden, dim), dtype=np.float32) / np.sqrt(dim),
                    bias=random.standard_normal(hidden, dtype=np.float32) * 0.1,
                    ln_weight=1 + random.standard_normal(hidden, dtype=np.float32) * 0.1,
                    ln_bias=random.standard_normal(hidden, dtype=np.float32) * 0.1,
                )
            ],
            activation="gelu",
        )
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "demo_model.npz")
            model.save(path)
            model = Model.load(path)
            print(f"made a random model, saved it and loaded it back: {model!r}")
    else:
        model = Model.load(arguments.model, activation=arguments.activation)
        print(f"loaded {arguments.model}: {model!r}")

    counts = np.full(arguments.queries, arguments.tokens, dtype=np.int64)
    tokens = random.standard_normal((int(counts.sum()), model.input_dim), dtype=np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    model.features(tokens, counts, num_threads=threads)  # warm-up
    timings = []
    for _ in range(arguments.repeat):
        start = time.perf_counter()
        features = model.features(tokens, counts, num_threads=threads)
        timings.append(time.perf_counter() - start)
    median = float(np.median(timings))
    print(
        f"features of {arguments.queries} queries x {arguments.tokens} tokens "
        f"(d={model.input_dim}) -> {features.shape} float32"
    )
    print(
        f"median of {arguments.repeat} runs: {median * 1e3:.2f} ms "
        f"({arguments.queries / median:,.0f} queries/s) on {threads} threads, "
        f"kernels: {variant}"
    )
    print(f"first query's features: [{', '.join(f'{v:.4f}' for v in features[0, :4])}, ...]")
    return 0


def _config(arguments: argparse.Namespace) -> int:
    from lemur import show_config

    show_config()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lemur",
        description="LEMUR multi-vector retrieval on the CPU, without PyTorch.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands.required = True

    demo = subcommands.add_parser(
        "demo",
        help="compute query features with a model and time it",
        description="Load a model (or make a random one), compute the features of a batch "
        "of random queries, and print what was done and how fast.",
    )
    demo.add_argument("--model", help="a lemur .npz or LEMUR-NumPy export (default: random)")
    demo.add_argument(
        "--activation",
        help="activation, for exports that do not record it (default: gelu, exact)",
    )
    demo.add_argument("--queries", type=int, default=100, help="queries per batch (default 100)")
    demo.add_argument("--tokens", type=int, default=32, help="tokens per query (default 32)")
    demo.add_argument("--repeat", type=int, default=20, help="timed runs (default 20)")
    demo.add_argument("--threads", type=int, help="threads (default: OMP_NUM_THREADS or all cores)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(handler=_demo)

    config = subcommands.add_parser(
        "config",
        help="print versions, kernel variant, BLAS and threads",
        description="Print lemur's build and run-time configuration (lemur.show_config()).",
    )
    config.set_defaults(handler=_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.handler(arguments)
    except (ValueError, TypeError, OSError) as exc:
        print(f"lemur {arguments.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lemur {arguments.command}: interrupted", file=sys.stderr)
        return 130

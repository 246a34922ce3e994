"""The ``lemur`` command line (also ``python -m lemur``).

Exit status: 0 on success, 1 when the work fails (a bad file or input; the
reason goes to stderr, without a traceback), 2 for a usage error, 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MB"


def _load_array(path: str, what: str) -> np.ndarray:
    """An .npy file, read without unpickling."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy file for {what} ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected an .npy array for {what}, found an .npz archive")
    return array


def _load_vectors(path: str, what: str) -> np.ndarray:
    """Token vectors from .npy, as float32 (other float dtypes are converted)."""
    array = _load_array(path, what)
    if array.dtype.kind != "f":
        raise TypeError(f"{path}: {what} must hold floating-point values, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _info(arguments: argparse.Namespace) -> int:
    from lemur import files

    contents = files.read(arguments.path, activation=arguments.activation)
    model = contents.model
    dims = " -> ".join([str(model.input_dim)] + [str(layer.weight.shape[0]) for layer in model.layers])
    lines = [
        ("file", arguments.path),
        ("format", contents.file_format),
        ("model", f"{model.kind}, {model.num_layers} layer{'s' * (model.num_layers > 1)}, "
                  f"dims {dims}, activation {model.activation}"),
        ("weights", f"float32, {_megabytes(model.nbytes)}"),
        ("target statistics", f"output_mean {model.output_mean:.6g}, output_std {model.output_std:.6g}"),
    ]
    total = model.nbytes
    if contents.W is None:
        lines.append(("documents", "none (a model without W)"))
    else:
        lines.append(("documents", f"{contents.W.shape[0]:,} (W: {contents.W.shape[0]:,} x "
                                   f"{contents.W.shape[1]} {contents.W.dtype}, {_megabytes(contents.W.nbytes)})"))
        total += contents.W.nbytes
    if contents.doc_tokens is None:
        lines.append(("token store", "none"))
    else:
        lines.append(("token store", f"{contents.doc_tokens.shape[0]:,} tokens x "
                                     f"{contents.doc_tokens.shape[1]} {contents.doc_tokens.dtype}, "
                                     f"{_megabytes(contents.doc_tokens.nbytes)}"))
        total += contents.doc_tokens.nbytes
    lines.append(("in memory", _megabytes(total)))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label + ':':{width + 1}s} {value}")
    return 0


def _convert(arguments: argparse.Namespace) -> int:
    from lemur import files, npz

    contents = files.read(arguments.source, activation=arguments.activation)
    npz.save(
        arguments.destination,
        model=contents.model,
        W=contents.W,
        doc_tokens=contents.doc_tokens,
        doc_counts=contents.doc_counts,
    )
    what = "index" if contents.W is not None else "model"
    print(
        f"wrote {arguments.destination}: lemur {what} ({contents.model.kind}, activation "
        f"{contents.model.activation}"
        + (f", {contents.W.shape[0]:,} documents" if contents.W is not None else "")
        + f"), from {contents.file_format}"
    )
    return 0


def _search(arguments: argparse.Namespace) -> int:
    from lemur import Index, files

    contents = files.read(arguments.index, activation=arguments.activation)
    if contents.W is None:
        raise ValueError(f"{arguments.index}: holds a model but no W; it is not an index")
    if (arguments.docs is None) != (arguments.doc_counts is None):
        raise ValueError("pass --docs and --doc-counts together")
    if arguments.docs is not None:
        contents = contents._replace(doc_tokens=_load_vectors(arguments.docs, "document tokens"),
                                     doc_counts=_load_array(arguments.doc_counts, "document counts"))
    index = Index.from_contents(contents, num_threads=arguments.threads)
    queries = _load_vectors(arguments.queries, "query tokens")
    counts = _load_array(arguments.counts, "query counts")
    start = time.perf_counter()
    indices, scores = index.search(
        queries, counts, k=arguments.k, candidates=arguments.candidates, num_threads=arguments.threads
    )
    elapsed = time.perf_counter() - start
    how = "rerank by exact MaxSim" if index.has_documents else "first stage only (no document tokens)"
    print(
        f"lemur search: {indices.shape[0]:,} queries, {index.num_docs:,} documents, k={arguments.k}, "
        f"{how}, {elapsed * 1e3:.1f} ms",
        file=sys.stderr,
    )
    if arguments.out == "-":
        lines = ["query\trank\tdocument\tscore"]
        for query, (row_ids, row_scores) in enumerate(zip(indices, scores)):
            lines += [
                f"{query}\t{rank}\t{doc}\t{score:.6g}"
                for rank, (doc, score) in enumerate(zip(row_ids, row_scores))
                if doc >= 0
            ]
        print("\n".join(lines))
    else:
        with open(arguments.out, "wb") as stream:
            np.savez(stream, indices=indices, scores=scores)
        print(f"wrote {arguments.out}: indices {indices.shape} int64, scores float32", file=sys.stderr)
    return 0


def _write_index(index, path: str, what: str) -> None:
    index.save(path)
    print(f"wrote {path}: {index!r} ({what})", file=sys.stderr)


def _build(arguments: argparse.Namespace) -> int:
    from lemur import fit_elm

    doc_tokens = _load_vectors(arguments.docs, "document tokens")
    doc_counts = _load_array(arguments.doc_counts, "document counts")
    learn = None if arguments.learn is None else _load_vectors(arguments.learn, "learn tokens")
    start = time.perf_counter()
    index = fit_elm(
        doc_tokens, doc_counts, hidden_dim=arguments.hidden, activation=arguments.activation,
        sample_size=arguments.sample_size, learn_tokens=learn, seed=arguments.seed,
        train_subset_size=arguments.train_subset, learn_subset_size=arguments.learn_subset,
        keep_tokens=not arguments.no_tokens, progress=None if arguments.progress else False,
        num_threads=arguments.threads,
    )
    elapsed = time.perf_counter() - start
    _write_index(index, arguments.out, f"built in {elapsed:.1f} s, {index.num_docs / elapsed:,.0f} documents/s")
    return 0


def _open_for_update(arguments: argparse.Namespace):
    """The index to update, and where to write it (lemur .npz files in place)."""
    from lemur import files
    from lemur.index import Index

    contents = files.read(arguments.index)
    if contents.W is None:
        raise ValueError(f"{arguments.index}: holds a model but no W; it is not an index")
    out = arguments.out or arguments.index
    if contents.file_format != "lemur" and arguments.out is None:
        raise ValueError(f"{arguments.index} is a {contents.file_format} file: pass --out INDEX.npz "
                         "to write the updated index in lemur's format")
    return Index.from_contents(contents, num_threads=arguments.threads), out


def _add(arguments: argparse.Namespace) -> int:
    index, out = _open_for_update(arguments)
    if arguments.learn is not None:
        index.attach_sample(_load_vectors(arguments.learn, "learn tokens"),
                            size=arguments.sample_size, seed=arguments.seed)
    tokens = _load_vectors(arguments.docs, "document tokens")
    counts = _load_array(arguments.doc_counts, "document counts")
    ids = None if arguments.ids is None else _load_array(arguments.ids, "document ids")
    start = time.perf_counter()
    new_ids = index.add_documents(tokens, counts, ids=ids, num_threads=arguments.threads,
                                  progress=None if arguments.progress else False)
    elapsed = time.perf_counter() - start
    what = (f"added {new_ids.size:,} documents (ids {new_ids.min()}..{new_ids.max()}) in {elapsed:.1f} s"
            if new_ids.size else "added no documents")
    _write_index(index, out, what)
    return 0


def _remove(arguments: argparse.Namespace) -> int:
    index, out = _open_for_update(arguments)
    if (arguments.ids is None) == (arguments.ids_file is None):
        raise ValueError("pass the ids with --ids or --ids-file (one of them)")
    if arguments.ids is not None:
        try:
            ids = np.array([int(part) for part in arguments.ids.split(",") if part.strip()], dtype=np.int64)
        except ValueError:
            raise ValueError(f"--ids must be comma-separated integers, got {arguments.ids!r}") from None
    else:
        ids = _load_array(arguments.ids_file, "document ids")
    index.remove_documents(ids)
    _write_index(index, out, f"removed {ids.size:,} documents")
    return 0


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
                    weight=random.standard_normal((hidden, dim), dtype=np.float32) / np.float32(np.sqrt(dim)),
                    bias=random.standard_normal(hidden, dtype=np.float32) * np.float32(0.1),
                    ln_weight=1 + random.standard_normal(hidden, dtype=np.float32) * np.float32(0.1),
                    ln_bias=random.standard_normal(hidden, dtype=np.float32) * np.float32(0.1),
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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lemur",
        description="LEMUR multi-vector retrieval on the CPU, without PyTorch. Reads lemur "
        ".npz files, LEMUR-NumPy exports and the original LEMUR's index directories "
        "(mlp.pt, w.pt; never executing code from them).",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands.required = True
    activation_help = "the model's activation, for LEMUR-NumPy exports (they do not record it; default gelu)"

    info = subcommands.add_parser(
        "info", help="describe a model or index file",
        description="Print a model's or index's kind, layers, dimensions, activation, number of "
        "documents, dtypes, memory footprint and file format.",
    )
    info.add_argument("path", help="a lemur .npz, a LEMUR-NumPy export, or an original index directory or mlp.pt")
    info.add_argument("--activation", help=activation_help)
    info.set_defaults(handler=_info)

    convert = subcommands.add_parser(
        "convert", help="convert any supported model or index to lemur's .npz",
        description="Write SOURCE in lemur's .npz format, which records the activation and the "
        "model kind (MLP or ELM) that the fork's exporter drops.",
    )
    convert.add_argument("source", help="a lemur .npz, a LEMUR-NumPy export, or an original index directory or mlp.pt")
    convert.add_argument("destination", help="the .npz file to write (replaced atomically)")
    convert.add_argument("--activation", help=activation_help)
    convert.set_defaults(handler=_convert)

    search = subcommands.add_parser(
        "search", help="search an index with queries from .npy files",
        description="Compute the queries' features, take the CANDIDATES documents with the largest "
        "approximate score and rerank them by exact MaxSim (when the index, or --docs, provides "
        "the documents' token vectors), keeping the K best.",
    )
    search.add_argument("index", help="an index: lemur .npz, LEMUR-NumPy export, or original index directory")
    search.add_argument("--queries", required=True, help=".npy of query token vectors (total_tokens, d), float")
    search.add_argument("--counts", required=True, help=".npy of tokens per query (num_queries,), int")
    search.add_argument("--docs", help=".npy of the documents' token vectors, for the exact rerank")
    search.add_argument("--doc-counts", help=".npy of tokens per document, with --docs")
    search.add_argument("-k", type=_positive_int, default=10, help="results per query (default 10)")
    search.add_argument("--candidates", type=_positive_int, default=100,
                        help="candidates per query for the rerank (default 100)")
    search.add_argument("--out", default="-",
                        help="an .npz to write (indices, scores), or - for text on stdout (default)")
    search.add_argument("--threads", type=_positive_int, help="threads (default: OMP_NUM_THREADS or all cores)")
    search.add_argument("--activation", help=activation_help)
    search.set_defaults(handler=_search)

    threads_help = "threads (default: OMP_NUM_THREADS or all cores)"
    progress_help = "no progress line on stderr (shown by default when stderr is a terminal)"

    build = subcommands.add_parser(
        "build", help="build an ELM index from token files (no training)",
        description="Build an index with an ELM (random-feature) model, the original LEMUR's "
        "epochs=0 mode: no training, W fitted by least squares against an OLS sample that the "
        "index keeps, so that documents can be added later.",
    )
    build.add_argument("--docs", required=True, help=".npy of the documents' token vectors (total, d)")
    build.add_argument("--doc-counts", required=True, help=".npy of tokens per document")
    build.add_argument("--out", required=True, help="the index .npz to write")
    build.add_argument("--learn", help=".npy of learn token vectors (query-side; default: the documents')")
    build.add_argument("--hidden", type=_positive_int, default=2048, help="feature dimension h (default 2048)")
    build.add_argument("--activation", default="gelu", help="gelu (default), relu, silu, mish or gelu-tanh")
    build.add_argument("--sample-size", type=_positive_int, default=16384, help="OLS sample size (default 16384)")
    build.add_argument("--train-subset", type=_positive_int, default=8192,
                       help="documents for the target statistics (default 8192)")
    build.add_argument("--learn-subset", type=_positive_int, default=100000,
                       help="learn vectors for the target statistics (default 100000)")
    build.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    build.add_argument("--no-tokens", action="store_true", help="do not keep the documents' tokens (no rerank)")
    build.add_argument("--threads", type=_positive_int, help=threads_help)
    build.add_argument("--no-progress", dest="progress", action="store_false", help=progress_help)
    build.set_defaults(handler=_build)

    add = subcommands.add_parser(
        "add", help="fit and add documents to an index",
        description="Fit W's rows for new documents against the index's OLS sample and add them "
        "(and their tokens, if the index keeps a token store). A lemur .npz is updated in place, "
        "atomically; other formats need --out.",
    )
    add.add_argument("index", help="the index to update")
    add.add_argument("--docs", required=True, help=".npy of the new documents' token vectors")
    add.add_argument("--doc-counts", required=True, help=".npy of tokens per new document")
    add.add_argument("--ids", help=".npy of ids for the new documents (default: the next ids)")
    add.add_argument("--learn", help=".npy of learn tokens to draw an OLS sample from (for indexes without one)")
    add.add_argument("--sample-size", type=_positive_int, default=16384, help="with --learn (default 16384)")
    add.add_argument("--seed", type=int, default=0, help="with --learn (default 0)")
    add.add_argument("--out", help="write the updated index here instead")
    add.add_argument("--threads", type=_positive_int, help=threads_help)
    add.add_argument("--no-progress", dest="progress", action="store_false", help=progress_help)
    add.set_defaults(handler=_add)

    remove = subcommands.add_parser(
        "remove", help="remove documents from an index by id",
        description="Remove documents (their rows of W and their tokens) by id. A lemur .npz is "
        "updated in place, atomically; other formats need --out.",
    )
    remove.add_argument("index", help="the index to update")
    remove.add_argument("--ids", help="comma-separated document ids")
    remove.add_argument("--ids-file", help=".npy of document ids")
    remove.add_argument("--out", help="write the updated index here instead")
    remove.add_argument("--threads", type=_positive_int, help=threads_help)
    remove.set_defaults(handler=_remove)

    demo = subcommands.add_parser(
        "demo", help="compute query features with a model and time them",
        description="Load a model (or make a random one), compute the features of a batch "
        "of random queries, and print what was done and how fast.",
    )
    demo.add_argument("--model", help="a model or index file (default: a random model)")
    demo.add_argument("--activation", help=activation_help)
    demo.add_argument("--queries", type=_positive_int, default=100, help="queries per batch (default 100)")
    demo.add_argument("--tokens", type=_positive_int, default=32, help="tokens per query (default 32)")
    demo.add_argument("--repeat", type=_positive_int, default=20, help="timed runs (default 20)")
    demo.add_argument("--threads", type=_positive_int, help="threads (default: OMP_NUM_THREADS or all cores)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(handler=_demo)

    config = subcommands.add_parser(
        "config", help="print versions, kernel variant, BLAS and threads",
        description="Print lemur's build and run-time configuration (lemur.show_config()).",
    )
    config.set_defaults(handler=_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        return arguments.handler(arguments)
    except (ValueError, TypeError, OSError, MemoryError) as exc:
        print(f"lemur {arguments.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lemur {arguments.command}: interrupted", file=sys.stderr)
        return 130

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


def _load_vectors(path: str, what: str, half: bool = False) -> np.ndarray:
    """Token vectors from .npy, as float32 (other float dtypes are converted;
    with `half`, float16 is kept: a token store)."""
    array = _load_array(path, what)
    if array.dtype.kind != "f":
        raise TypeError(f"{path}: {what} must hold floating-point values, got {array.dtype}")
    keep = half and array.dtype == np.float16
    return np.ascontiguousarray(array, dtype=np.float16 if keep else np.float32)


def _read_record(path: str):
    """The file's record; lemur's own files mapped (nothing large is read)."""
    from lemur import formats

    if formats.detect(path) == "lemur":
        try:
            return formats.read(path, mmap=True)
        except ValueError:  # a member that cannot be mapped (compressed): read it
            pass
    return formats.read(path)


def _info(arguments: argparse.Namespace) -> int:
    from lemur import formats
    from lemur._dispatch import kernels

    record = _read_record(arguments.path)
    model = formats.model_of(record, path=arguments.path, activation=arguments.activation)
    dims = " -> ".join([str(model.input_dim)] + [str(layer.weight.shape[0]) for layer in model.layers])
    lines = [
        ("file", arguments.path),
        ("format", record.file_format),
        ("model", f"{model.kind}, {model.num_layers} layer{'s' * (model.num_layers > 1)}, "
                  f"dims {dims}, activation {model.activation}"),
        ("weights", f"float32, {_megabytes(model.nbytes)}"),
        ("target statistics", f"output_mean {model.output_mean:.6g}, output_std {model.output_std:.6g}"),
        ("query pooling", f"sum of psi / {model.query_scale:g}"),
        ("centre", "none" if model.center is None else f"yes ({model.input_dim} values): tokens are centred"),
    ]
    total = model.nbytes
    if record.W is None:
        lines.append(("documents", "none (a model without W)" if record.sample is None else "none yet"))
    else:
        lines.append(("documents", f"{record.W.shape[0]:,} (W: {record.W.shape[0]:,} x "
                                   f"{record.W.shape[1]} {record.W.dtype}, {_megabytes(record.W.nbytes)})"))
        total += record.W.nbytes
    if record.doc_tokens is None:
        lines.append(("token store", "none"))
    else:
        lines.append(("token store", f"{record.doc_tokens.shape[0]:,} tokens x "
                                     f"{record.doc_tokens.shape[1]} {record.doc_tokens.dtype}, "
                                     f"{_megabytes(record.doc_tokens.nbytes)}"))
        total += record.doc_tokens.nbytes
    if record.sample is not None:
        lines.append(("OLS sample", f"{record.sample.shape[0]:,} tokens (documents can be added)"))
        total += record.sample.nbytes
    if record.is_index:
        first_stage = record.precision
        if record.precision != "float32":
            used = kernels.compact_instructions()[record.precision]
            if record.compact is None:
                first_stage += " (its compact copy is built from W on opening)"
            else:
                size = sum(array.nbytes for array in record.compact)
                first_stage += f" (compact copy of W: {_megabytes(size)}; here: {used})"
                total += size
        lines.append(("first stage", first_stage + ", results bitwise float32's"))
        if record.ann is not None:
            settings = record.ann["ann_settings"]
            size = sum(array.nbytes for array in record.ann.values())
            lines.append(("ANN", f"HNSW graph (usearch) over W's rows projected on {settings[0]} directions, "
                                 f"M={settings[1]}, ef_construction={settings[2]}, {settings[3]} x k rows "
                                 f"rescored; {_megabytes(size)} (searches use it: drop it with lemur ann --drop)"))
            total += size
    lines.append(("in memory", _megabytes(total)))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label + ':':{width + 1}s} {value}")
    return 0


def _open(path: str, activation: str | None, num_threads: int | None, mmap: bool = False):
    """The Index in `path` (ValueError for a bare model); with `mmap`, a lemur
    file is mapped (opening takes milliseconds) where it can be."""
    from lemur import Index, formats

    if mmap and formats.detect(path) == "lemur":
        try:
            return Index.load(path, mmap=True, num_threads=num_threads)
        except ValueError as exc:
            if "cannot be mapped" not in str(exc):
                raise
    return Index.load(path, activation=activation, num_threads=num_threads)


def _convert(arguments: argparse.Namespace) -> int:
    from lemur import formats

    record, written = formats.convert(arguments.source, arguments.destination, format=arguments.format,
                                      activation=arguments.activation, precision=arguments.precision)
    documents = "" if record.W is None else f", {record.W.shape[0]:,} documents"
    print(f"wrote {arguments.destination}: {written} ({record.kind}, activation "
          f"{record.activation or arguments.activation or 'gelu'}{documents}), from {record.file_format}")
    return 0


def _search(arguments: argparse.Namespace) -> int:
    index = _open(arguments.index, arguments.activation, arguments.threads, mmap=True)
    if (arguments.docs is None) != (arguments.doc_counts is None):
        raise ValueError("pass --docs and --doc-counts together")
    if arguments.docs is not None:
        index = index.with_documents(_load_vectors(arguments.docs, "document tokens", half=True),
                                     _load_array(arguments.doc_counts, "document counts"),
                                     num_threads=arguments.threads)
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
    _write_results(indices, scores, arguments.out)
    return 0


def _write_results(indices: np.ndarray, scores: np.ndarray, out: str) -> None:
    """Search results as text on stdout (out "-") or an .npz."""
    if out == "-":
        lines = ["query\trank\tdocument\tscore"]
        for query, (row_ids, row_scores) in enumerate(zip(indices, scores)):
            lines += [
                f"{query}\t{rank}\t{doc}\t{score:.6g}"
                for rank, (doc, score) in enumerate(zip(row_ids, row_scores))
                if doc >= 0
            ]
        print("\n".join(lines))
    else:
        with open(out, "wb") as stream:
            np.savez(stream, indices=indices, scores=scores)
        print(f"wrote {out}: indices {indices.shape} int64, scores float32", file=sys.stderr)


def _write_index(index, path: str, what: str) -> None:
    index.save(path)
    print(f"wrote {path}: {index!r} ({what})", file=sys.stderr)


def _corpus_files(arguments: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """--docs, --doc-counts and --learn of the commands that build an index."""
    doc_tokens = _load_vectors(arguments.docs, "document tokens", half=True)
    doc_counts = _load_array(arguments.doc_counts, "document counts")
    learn = None if arguments.learn is None else _load_vectors(arguments.learn, "learn tokens")
    return doc_tokens, doc_counts, learn


def _build(arguments: argparse.Namespace) -> int:
    from lemur import fit_elm

    doc_tokens, doc_counts, learn = _corpus_files(arguments)
    start = time.perf_counter()
    index = fit_elm(
        doc_tokens, doc_counts, hidden_dim=arguments.hidden, activation=arguments.activation,
        sample_size=arguments.sample_size, learn_tokens=learn, seed=arguments.seed,
        train_subset_size=arguments.train_subset, learn_subset_size=arguments.learn_subset,
        keep_tokens=not arguments.no_tokens, precision=arguments.precision,
        progress=None if arguments.progress else False, num_threads=arguments.threads,
    )
    elapsed = time.perf_counter() - start
    _write_index(index, arguments.out, f"built in {elapsed:.1f} s, {index.num_docs / elapsed:,.0f} documents/s")
    return 0


def _train(arguments: argparse.Namespace) -> int:
    from lemur import train

    doc_tokens, doc_counts, learn = _corpus_files(arguments)
    start = time.perf_counter()
    index = train(
        doc_tokens, doc_counts, learn_tokens=learn, epochs=arguments.epochs, num_layers=arguments.layers,
        hidden_dim=arguments.hidden, final_hidden_dim=arguments.final_hidden, activation=arguments.activation,
        lr=arguments.lr, batch_size=arguments.batch_size, grad_clip=arguments.grad_clip,
        train_subset_size=arguments.train_subset, learn_subset_size=arguments.learn_subset,
        sample_size=arguments.sample_size, validation_split=arguments.validation_split,
        keep_tokens=not arguments.no_tokens, seed=arguments.seed, matmul_precision=arguments.matmul_precision,
        progress=None if arguments.progress else False, num_threads=arguments.threads,
    )
    if arguments.precision != "float32":
        index = index.with_precision(arguments.precision, num_threads=arguments.threads)
    _write_index(index, arguments.out, f"trained and indexed in {time.perf_counter() - start:.1f} s")
    return 0


def _open_for_update(arguments: argparse.Namespace):
    """The index to update, and where to write it (lemur .npz files in place)."""
    from lemur import formats

    file_format = formats.detect(arguments.index)
    if file_format != "lemur" and arguments.out is None:
        raise ValueError(f"{arguments.index} is a {file_format} file: pass "
                         "--out INDEX.npz to write the updated index in lemur's format")
    return _open(arguments.index, None, arguments.threads), arguments.out or arguments.index


def _add(arguments: argparse.Namespace) -> int:
    index, out = _open_for_update(arguments)
    if arguments.learn is not None:
        index.attach_sample(_load_vectors(arguments.learn, "learn tokens"),
                            size=arguments.sample_size, seed=arguments.seed)
    tokens = _load_vectors(arguments.docs, "document tokens", half=True)
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


def _removed_ids(arguments: argparse.Namespace) -> np.ndarray:
    """The ids of --ids (comma-separated) or --ids-file (.npy)."""
    if (arguments.ids is None) == (arguments.ids_file is None):
        raise ValueError("pass the ids with --ids or --ids-file (one of them)")
    if arguments.ids_file is not None:
        return _load_array(arguments.ids_file, "document ids")
    try:
        return np.array([int(part) for part in arguments.ids.split(",") if part.strip()], dtype=np.int64)
    except ValueError:
        raise ValueError(f"--ids must be comma-separated integers, got {arguments.ids!r}") from None


def _remove(arguments: argparse.Namespace) -> int:
    index, out = _open_for_update(arguments)
    ids = _removed_ids(arguments)
    index.remove_documents(ids)
    _write_index(index, out, f"removed {ids.size:,} documents")
    return 0


def _ann(arguments: argparse.Namespace) -> int:
    index, out = _open_for_update(arguments)
    if arguments.drop:
        index.drop_ann()
        _write_index(index, out, "the ANN graph dropped: searches scan W")
        return 0
    start = time.perf_counter()
    index.build_ann(dims=arguments.dims, connectivity=arguments.connectivity,
                    expansion_add=arguments.expansion_add, candidates_factor=arguments.candidates_factor,
                    progress=None if arguments.progress else False, num_threads=arguments.threads)
    _write_index(index, out, f"ANN graph built in {time.perf_counter() - start:.1f} s, "
                             f"{_megabytes(index.ann.nbytes)}")
    return 0


def _postgres(arguments: argparse.Namespace) -> int:
    """lemur postgres export|search|add|remove|info: psycopg's errors are reported as the others."""
    import lemur.postgres

    psycopg = lemur.postgres._driver()[0]
    try:
        return arguments.postgres_handler(arguments, lemur.postgres)
    except psycopg.Error as exc:
        raise ValueError(f"PostgreSQL: {str(exc).strip()}") from None


def _postgres_export(arguments: argparse.Namespace, postgres) -> int:
    index = _open(arguments.index, arguments.activation, arguments.threads, mmap=True)
    start = time.perf_counter()
    postgres.export(index, arguments.dsn, table=arguments.table, connectivity=arguments.connectivity,
                    ef_construction=arguments.ef_construction, replace=arguments.replace,
                    progress=None if arguments.progress else False, num_threads=arguments.threads)
    print(f"exported {index.num_docs:,} documents to {arguments.table} in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
    return 0


def _postgres_search(arguments: argparse.Namespace, postgres) -> int:
    queries = _load_vectors(arguments.queries, "query tokens")
    counts = _load_array(arguments.counts, "query counts")
    with postgres.open(arguments.dsn, table=arguments.table, ef_search=arguments.ef_search) as index:
        start = time.perf_counter()
        indices, scores = index.search(queries, counts, k=arguments.k, candidates=arguments.candidates,
                                       num_threads=arguments.threads)
        print(f"lemur postgres search: {indices.shape[0]:,} queries, {arguments.table}, k={arguments.k}, "
              f"{(time.perf_counter() - start) * 1e3:.1f} ms", file=sys.stderr)
    _write_results(indices, scores, arguments.out)
    return 0


def _postgres_add(arguments: argparse.Namespace, postgres) -> int:
    tokens = _load_vectors(arguments.docs, "document tokens", half=True)
    counts = _load_array(arguments.doc_counts, "document counts")
    ids = None if arguments.ids is None else _load_array(arguments.ids, "document ids")
    with postgres.open(arguments.dsn, table=arguments.table) as index:
        new_ids = index.add_documents(tokens, counts, ids=ids, num_threads=arguments.threads,
                                      progress=None if arguments.progress else False)
    print(f"added {new_ids.size:,} documents to {arguments.table}" +
          (f" (ids {new_ids.min()}..{new_ids.max()})" if new_ids.size else ""), file=sys.stderr)
    return 0


def _postgres_remove(arguments: argparse.Namespace, postgres) -> int:
    ids = _removed_ids(arguments)
    with postgres.open(arguments.dsn, table=arguments.table) as index:
        index.remove_documents(ids)
    print(f"removed {ids.size:,} documents from {arguments.table}", file=sys.stderr)
    return 0


def _postgres_info(arguments: argparse.Namespace, postgres) -> int:
    with postgres.open(arguments.dsn, table=arguments.table) as index:
        print(f"table:      {index.table}\nmodel:      {index.model!r}\ndocuments:  {index.num_docs:,}\n"
              f"generation: {index.generation}\nOLS sample: "
              f"{'none' if index.sample is None else f'{index.sample.shape[0]:,} tokens'}")
    return 0


def _synthetic_corpus(random: np.random.Generator, num_docs: int, tokens_per_doc: int,
                      dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit-norm token vectors: documents mix 1 to 3 of 64 topics."""
    def unit(vectors: np.ndarray) -> np.ndarray:
        return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)

    centres = unit(random.standard_normal((64, dim)))
    counts = random.integers(tokens_per_doc // 2, tokens_per_doc * 3 // 2 + 1, num_docs)
    topics = [random.choice(64, random.integers(1, 4), replace=False) for _ in range(num_docs)]
    tokens = np.concatenate([
        unit(centres[random.choice(doc_topics, count)] + 2.4 / np.sqrt(dim) * random.standard_normal((count, dim)))
        for doc_topics, count in zip(topics, counts)
    ])
    return tokens, counts


def _demo(arguments: argparse.Namespace) -> int:
    from lemur import Index, fit_elm, maxsim_scores
    from lemur._dispatch import variant
    from lemur._threads import resolve_num_threads

    threads = resolve_num_threads(arguments.threads)
    random = np.random.default_rng(arguments.seed)
    dim = 128
    tokens, counts = _synthetic_corpus(random, arguments.docs, 40, dim)
    print(f"made a synthetic corpus: {arguments.docs:,} documents, {tokens.shape[0]:,} token "
          f"vectors of dimension {dim} (clustered, unit norm)")

    start = time.perf_counter()
    index = fit_elm(tokens, counts, hidden_dim=arguments.hidden, sample_size=4096,
                    learn_subset_size=10_000, seed=arguments.seed, progress=False, num_threads=threads)
    built = time.perf_counter() - start
    print(f"built an ELM index (no training; h={arguments.hidden}) in {built:.2f} s: {index!r}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "demo_index.npz")
        index.save(path)
        index = Index.load(path)
        print(f"saved it ({os.path.getsize(path) / 2**20:.1f} MB) and loaded it back")

    # queries: 32 tokens around the tokens of a random document each
    offsets = np.concatenate([[0], np.cumsum(counts)])
    targets = random.choice(arguments.docs, arguments.queries)
    queries = np.concatenate([
        tokens[random.integers(offsets[doc], offsets[doc + 1], 32)] + 0.1 * random.standard_normal((32, dim)) / np.sqrt(dim)
        for doc in targets
    ]).astype(np.float32)
    query_counts = np.full(arguments.queries, 32)
    index.search(queries, query_counts, num_threads=threads)  # warm-up
    start = time.perf_counter()
    found, _ = index.search(queries, query_counts, k=10, candidates=100, num_threads=threads)
    batch = time.perf_counter() - start
    single = []
    for query in range(min(arguments.queries, 50)):
        start = time.perf_counter()
        index.search(queries[32 * query : 32 * query + 32], [32], k=10, candidates=100, num_threads=threads)
        single.append(time.perf_counter() - start)
    print(f"searched {arguments.queries} queries of 32 tokens (features -> top 100 -> exact MaxSim "
          f"rerank -> 10): {batch * 1e3:.1f} ms for the batch, {np.median(single) * 1e3:.2f} ms "
          f"per single query (median), {threads} threads, kernels {variant}")

    every = np.tile(np.arange(arguments.docs), (arguments.queries, 1))
    exact = maxsim_scores(queries, query_counts, tokens, counts, every, num_threads=threads)
    truth = np.argsort(-exact, axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    print(f"recall@10 against brute-force MaxSim over all {arguments.docs:,} documents: {recall:.3f}")
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
        ".npz files, LEMUR-NumPy exports, the original LEMUR's index directories (mlp.pt, w.pt; "
        "never executing code from them) and txtai's LEMUR artifacts, and writes lemur's, the "
        "original's and txtai's.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND")
    subcommands.required = True
    activation_help = "the model's activation, for LEMUR-NumPy exports (they do not record it; default gelu)"
    threads_help = "threads (default: OMP_NUM_THREADS or all cores)"
    progress_help = "no progress line on stderr (shown by default when stderr is a terminal)"

    def updating(parser: argparse.ArgumentParser, progress: bool = True) -> None:
        """The options of a command that updates an index file."""
        parser.add_argument("index", help="the index to update")
        parser.add_argument("--out", help="write the updated index here instead")
        parser.add_argument("--threads", type=_positive_int, help=threads_help)
        if progress:
            parser.add_argument("--no-progress", dest="progress", action="store_false", help=progress_help)

    info = subcommands.add_parser(
        "info", help="describe a model or index file",
        description="Print a model's or index's kind, layers, dimensions, activation, number of "
        "documents, dtypes, memory footprint and file format.",
    )
    info.add_argument("path", help="a lemur .npz, a LEMUR-NumPy export, an original index directory "
                      "or mlp.pt, or a txtai artifact directory")
    info.add_argument("--activation", help=activation_help)
    info.set_defaults(handler=_info)

    convert = subcommands.add_parser(
        "convert", help="convert a model or index between formats",
        description="Write SOURCE (any format lemur reads) in another format: lemur's .npz (the "
        "default; it keeps everything), the original LEMUR's index directory (mlp.pt, w.pt), or "
        "a txtai LEMUR artifact directory (config.json, model.safetensors). What a format has "
        "no place for is reported; a model it cannot hold (a centre in the original's, say) is "
        "an error.",
    )
    convert.add_argument("source", help="a lemur .npz, a LEMUR-NumPy export, an original index "
                         "directory or mlp.pt, or a txtai artifact directory")
    convert.add_argument("destination", help="the .npz file (lemur) or directory (original, txtai) to write")
    convert.add_argument("--format", choices=("lemur", "original", "txtai"), default="lemur",
                         help="the format to write (default lemur)")
    convert.add_argument("--activation", help=activation_help)
    convert.add_argument("--precision", choices=("float32", "bfloat16", "int8"),
                         help="an index's first-stage precision to write (lemur's format keeps it; "
                         "default: the source's). bfloat16 and int8 keep a compact copy of W and "
                         "return bitwise the float32 results, faster")
    convert.set_defaults(handler=_convert)

    search = subcommands.add_parser(
        "search", help="search an index with queries from .npy files",
        description="Compute the queries' features, take the CANDIDATES documents with the largest "
        "approximate score and rerank them by exact MaxSim (when the index, or --docs, provides "
        "the documents' token vectors), keeping the K best.",
    )
    search.add_argument("index", help="an index: lemur .npz, LEMUR-NumPy export, original index "
                        "directory, or txtai artifact directory")
    search.add_argument("--queries", required=True, help=".npy of query token vectors (total_tokens, d), float")
    search.add_argument("--counts", required=True, help=".npy of tokens per query (num_queries,), int")
    search.add_argument("--docs", help=".npy of the documents' token vectors, for the exact rerank")
    search.add_argument("--doc-counts", help=".npy of tokens per document, with --docs")
    search.add_argument("-k", type=_positive_int, default=10, help="results per query (default 10)")
    search.add_argument("--candidates", type=_positive_int, default=100,
                        help="candidates per query for the rerank (default 100)")
    search.add_argument("--out", default="-",
                        help="an .npz to write (indices, scores), or - for text on stdout (default)")
    search.add_argument("--threads", type=_positive_int, help=threads_help)
    search.add_argument("--activation", help=activation_help)
    search.set_defaults(handler=_search)

    build = subcommands.add_parser(
        "build", help="build an ELM index from token files (no training)",
        description="Build an index with an ELM (random-feature) model, the original LEMUR's "
        "epochs=0 mode: no training, W fitted by least squares against an OLS sample that the "
        "index keeps, so that documents can be added later.",
    )
    def building(parser: argparse.ArgumentParser, subsets: str) -> None:
        """The options of a command that builds an index from token files."""
        parser.add_argument("--docs", required=True, help=".npy of the documents' token vectors (total, d)")
        parser.add_argument("--doc-counts", required=True, help=".npy of tokens per document")
        parser.add_argument("--out", required=True, help="the index .npz to write")
        parser.add_argument("--learn", help=".npy of learn token vectors (query-side; default: the documents')")
        parser.add_argument("--activation", default="gelu", help="gelu (default), relu, silu, mish or gelu-tanh")
        parser.add_argument("--sample-size", type=_positive_int, default=16384,
                            help="OLS sample size (default 16384)")
        parser.add_argument("--train-subset", type=_positive_int, default=8192,
                            help=f"documents {subsets} (default 8192)")
        parser.add_argument("--learn-subset", type=_positive_int, default=100000,
                            help=f"learn vectors {subsets} (default 100000)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--no-tokens", action="store_true", help="do not keep the documents' tokens (no rerank)")
        parser.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default="float32",
                            help="the first stage's precision (default float32; the results are the same)")
        parser.add_argument("--threads", type=_positive_int, help=threads_help)
        parser.add_argument("--no-progress", dest="progress", action="store_false", help=progress_help)

    building(build, "for the target statistics")
    build.add_argument("--hidden", type=_positive_int, default=2048, help="feature dimension h (default 2048)")
    build.set_defaults(handler=_build)

    trainer = subcommands.add_parser(
        "train", help="train a LEMUR model on token files and index the corpus (no PyTorch)",
        description="Train the original LEMUR's MLP (Linear -> LayerNorm -> activation layers, an output "
        "layer over a subset of documents, MSE on standardised MaxSim targets, Adam, gradient clipping, "
        "the best epoch kept), then fit W for every document against an OLS sample that the index "
        "keeps. A progress line (epoch, loss, ETA) shows on a terminal; Ctrl-C stops after the current "
        "batch and keeps the best epoch so far (Ctrl-C again aborts).",
    )
    building(trainer, "trained on")
    trainer.add_argument("--epochs", type=int, default=10, help="epochs (default 10; 0: an ELM, no training)")
    trainer.add_argument("--layers", type=_positive_int, default=1, help="layers (default 1)")
    trainer.add_argument("--hidden", type=_positive_int, default=512, help="inner layers' width (default 512)")
    trainer.add_argument("--final-hidden", type=_positive_int, default=2048,
                         help="feature dimension h (default 2048)")
    trainer.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default 0.003)")
    trainer.add_argument("--batch-size", type=_positive_int, default=512, help="batch size (default 512)")
    trainer.add_argument("--grad-clip", type=float, default=0.5, help="gradient norm clip (default 0.5; 0: none)")
    trainer.add_argument("--validation-split", type=float, default=0.0,
                         help="fraction of learn vectors held out to choose the best epoch (default 0)")
    trainer.add_argument("--matmul-precision", choices=("float32", "bfloat16"), default="float32",
                         help="the training's matrix products: float32 (default), or operands rounded to "
                         "bfloat16 with float32 sums (AMX tiles where the CPU has them: about 3x faster "
                         "training; `lemur config` says)")
    trainer.set_defaults(handler=_train)

    add = subcommands.add_parser(
        "add", help="fit and add documents to an index",
        description="Fit W's rows for new documents against the index's OLS sample and add them "
        "(and their tokens, if the index keeps a token store). A lemur .npz is updated in place, "
        "atomically; other formats need --out.",
    )
    add.add_argument("--docs", required=True, help=".npy of the new documents' token vectors")
    add.add_argument("--doc-counts", required=True, help=".npy of tokens per new document")
    add.add_argument("--ids", help=".npy of ids for the new documents (default: the next ids)")
    add.add_argument("--learn", help=".npy of learn tokens to draw an OLS sample from (for indexes without one)")
    add.add_argument("--sample-size", type=_positive_int, default=16384, help="with --learn (default 16384)")
    add.add_argument("--seed", type=int, default=0, help="with --learn (default 0)")
    updating(add)
    add.set_defaults(handler=_add)

    remove = subcommands.add_parser(
        "remove", help="remove documents from an index by id",
        description="Remove documents (their rows of W and their tokens) by id. A lemur .npz is "
        "updated in place, atomically; other formats need --out.",
    )
    remove.add_argument("--ids", help="comma-separated document ids")
    remove.add_argument("--ids-file", help=".npy of document ids")
    updating(remove, progress=False)
    remove.set_defaults(handler=_remove)

    ann = subcommands.add_parser(
        "ann", help="build (or drop) an index's embedded ANN first stage",
        description="Build an HNSW graph (usearch; pip install 'lemur-retrieval[ann]') over W's rows "
        "projected on the model's leading feature directions, and keep it in the index: searches "
        "then take the graph's best rows, rescored exactly, instead of scanning every row. A lemur "
        ".npz is updated in place, atomically; other formats need --out.",
    )
    ann.add_argument("--dims", type=_positive_int, default=256, help="projected dimensions (default 256)")
    ann.add_argument("--connectivity", type=_positive_int, default=16, help="HNSW's M (default 16)")
    ann.add_argument("--expansion-add", type=_positive_int, default=128, help="HNSW's ef_construction (default 128)")
    ann.add_argument("--candidates-factor", type=_positive_int, default=10,
                     help="rows taken from the graph and rescored per row asked (default 10)")
    ann.add_argument("--drop", action="store_true", help="drop the graph instead (searches scan W)")
    updating(ann)
    ann.set_defaults(handler=_ann)

    postgres = subcommands.add_parser(
        "postgres", help="keep an index in PostgreSQL + pgvector, search and change it there",
        description="The whole index in a PostgreSQL table (pip install 'lemur-retrieval[postgres]'; "
        "the server needs the vector extension): export an index, then search it, add and remove "
        "documents from any client. DSN: a libpq connection string or URI.",
    )
    actions = postgres.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    postgres.set_defaults(handler=_postgres)

    def action(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("dsn", help="where the database is: a connection string or URI")
        parser.add_argument("--table", default="lemur_documents", help="the table (default lemur_documents)")
        parser.add_argument("--threads", type=_positive_int, help=threads_help)
        parser.set_defaults(postgres_handler=handler)
        return parser

    export = action("export", _postgres_export, "write an index into a table (one transaction)")
    export.add_argument("index", help="the index to export (any format lemur reads)")
    export.add_argument("--connectivity", type=_positive_int, default=16, help="pgvector HNSW m (default 16)")
    export.add_argument("--ef-construction", type=_positive_int, default=64,
                        help="pgvector HNSW ef_construction (default 64)")
    export.add_argument("--replace", action="store_true", help="drop a table of that name first")
    export.add_argument("--activation", help=activation_help)
    export.add_argument("--no-progress", dest="progress", action="store_false", help=progress_help)
    found = action("search", _postgres_search, "search the table with queries from .npy files")
    found.add_argument("--queries", required=True, help=".npy of query token vectors (total_tokens, d), float")
    found.add_argument("--counts", required=True, help=".npy of tokens per query (num_queries,), int")
    found.add_argument("-k", type=_positive_int, default=10, help="results per query (default 10)")
    found.add_argument("--candidates", type=_positive_int, default=100,
                       help="candidates per query for the rerank (default 100)")
    found.add_argument("--ef-search", type=_positive_int, help="pgvector's hnsw.ef_search (default: 2 x candidates)")
    found.add_argument("--out", default="-", help="an .npz to write (indices, scores), or - for text on stdout")
    added = action("add", _postgres_add, "fit documents here and insert them (one transaction)")
    added.add_argument("--docs", required=True, help=".npy of the new documents' token vectors")
    added.add_argument("--doc-counts", required=True, help=".npy of tokens per new document")
    added.add_argument("--ids", help=".npy of ids for the new documents (default: the table's sequence)")
    added.add_argument("--no-progress", dest="progress", action="store_false", help=progress_help)
    removed = action("remove", _postgres_remove, "delete documents by id (one transaction)")
    removed.add_argument("--ids", help="comma-separated document ids")
    removed.add_argument("--ids-file", help=".npy of document ids")
    action("info", _postgres_info, "describe a table: model, documents, generation")

    demo = subcommands.add_parser(
        "demo", help="build an index on a synthetic corpus, search it, measure recall",
        description="The whole pipeline on made-up data: a clustered synthetic corpus, an ELM index "
        "built from it (no training), saved and loaded back, a batch of queries searched (features, "
        "top candidates, exact MaxSim rerank), timings, and recall@10 against brute-force MaxSim.",
    )
    demo.add_argument("--docs", type=_positive_int, default=2000, help="documents (default 2000)")
    demo.add_argument("--queries", type=_positive_int, default=100, help="queries (default 100)")
    demo.add_argument("--hidden", type=_positive_int, default=1024, help="feature dimension h (default 1024)")
    demo.add_argument("--threads", type=_positive_int, help=threads_help)
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
    except BrokenPipeError:  # the reader went away (lemur info ... | head): not an error
        sys.stderr.close()
        return 0
    except (ValueError, TypeError, OSError, MemoryError) as exc:
        print(f"lemur {arguments.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lemur {arguments.command}: interrupted", file=sys.stderr)
        return 130

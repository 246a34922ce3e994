"""The embedded ANN libraries lemur could use for its first stage, on one data set.

    python bench/scale.py --data /tmp/lemur-scale --only-prepare     # the data, once
    python bench/ann_libraries.py --data /tmp/lemur-scale --docs 100000 --dims 128 --threads 2

usearch, faiss-cpu (IndexHNSWFlat) and hnswlib build an HNSW graph with the
same parameters (M = 16, ef_construction = 128) over the rows lemur's ANN
stage indexes: W's fitted rows (``bench/scale.py``'s corpus, the first
--docs) projected on the model's --dims leading feature directions (0: the
full rows), twice each: with the inner product itself, and with the standard
reduction of inner products to nearest neighbours (each row gets one more
value, sqrt(max norm^2 - |w|^2), each query a 0, so the nearest row in L2 is
the one of largest inner product). Each query asks the graph for --counts
rows, which are then scored exactly (<f, w> over the full float32 rows) as
lemur's stage does, keeping 200. Printed first: how much of the true top 200
the exact top --counts rows by the projected product hold (the projection's
own ceiling); then per library and metric: build time,
resident memory of the graph, single-query latency (p50, graph and
rescoring) and recall of the 200 against the exact top-200. The libraries
are optional: a missing one is skipped (pip install usearch faiss-cpu hnswlib).
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np
from compare import rss_bytes

K = 200


def exact_top(W: np.ndarray, features: np.ndarray) -> np.ndarray:
    import lemur

    return lemur.top_k(features, W, K)[0]


def augmented(W: np.ndarray) -> tuple[np.ndarray, float]:
    """The reduction to nearest neighbours: rows (n, h + 1) of equal norm."""
    norms = np.einsum("ij,ij->i", W, W, dtype=np.float64)
    largest = float(norms.max())
    extra = np.sqrt(np.maximum(largest - norms, 0)).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([W, extra[:, None]], axis=1)), largest


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, truth)]))


def data(folder: str, num_docs: int, dims: int, num_queries: int, threads: int):
    """(W rows, graph rows, query features, graph queries) from bench/scale.py's data."""
    import scale

    import lemur
    from lemur.first_stage import compact

    W = np.ascontiguousarray(np.load(os.path.join(folder, "W_1000000.npy"), mmap_mode="r")[:num_docs])
    base = lemur.load(os.path.join(folder, "model.npz"))
    targets = np.random.default_rng(3).choice(num_docs, num_queries, replace=False)
    features = base.features(*scale.queries_for(targets), num_threads=threads)
    if not dims:
        return W, W, features, features
    basis = compact.subspace(base._typical_features(threads, num_queries=4096), dims)
    return W, lemur.scores(W, basis, num_threads=threads), features, lemur.scores(features, basis)


class Library:
    name = ""

    def build(self, rows: np.ndarray, metric: str, threads: int): ...

    def search(self, query: np.ndarray, ef: int) -> np.ndarray: ...


class Usearch(Library):
    name = "usearch"

    def build(self, rows, metric, threads):
        from usearch.index import Index

        self.index = Index(ndim=rows.shape[1], metric="ip" if metric == "ip" else "l2sq", dtype="f16",
                           connectivity=16, expansion_add=128)
        self.index.add(np.arange(len(rows), dtype=np.uint64), rows, threads=threads)

    def search(self, query, count):
        return np.asarray(self.index.search(query, count, threads=1).keys, dtype=np.int64)


class Faiss(Library):
    name = "faiss"

    def build(self, rows, metric, threads):
        import faiss

        faiss.omp_set_num_threads(threads)
        measure = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        self.index = faiss.IndexHNSWFlat(rows.shape[1], 16, measure)
        self.index.hnsw.efConstruction = 128
        self.index.add(rows)
        faiss.omp_set_num_threads(1)

    def search(self, query, count):
        self.index.hnsw.efSearch = count
        return self.index.search(query[None, :], count)[1][0].astype(np.int64)


class Hnswlib(Library):
    name = "hnswlib"

    def build(self, rows, metric, threads):
        import hnswlib

        self.index = hnswlib.Index(space="ip" if metric == "ip" else "l2", dim=rows.shape[1])
        self.index.init_index(max_elements=len(rows), M=16, ef_construction=128)
        self.index.set_num_threads(threads)
        self.index.add_items(rows, np.arange(len(rows)))
        self.index.set_num_threads(1)

    def search(self, query, count):
        self.index.set_ef(count)
        return self.index.knn_query(query[None, :], k=count)[0][0].astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="bench/scale.py's data folder")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=128, help="projected dimensions (0: the full rows)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--libraries", nargs="+", default=["usearch", "faiss", "hnswlib"])
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(arguments.threads))

    W, rows, features, queries = data(arguments.data, arguments.docs, arguments.dims, arguments.queries,
                                      arguments.threads)
    truth = exact_top(W, features)
    if arguments.dims:  # what the projection itself keeps, before any graph
        import lemur

        projected_top = lemur.top_k(queries, rows, max(arguments.counts), num_threads=arguments.threads)[0]
        print("exact top rows by the projected product: " + ", ".join(
            f"{count:,} hold {recall(projected_top[:, :count], truth):.3f}" for count in arguments.counts)
            + f" of the true top {K}")
    rows_by_metric = {"ip": (rows, queries)}
    wide, _ = augmented(rows)
    rows_by_metric["l2 (reduced)"] = (wide, np.concatenate([queries, np.zeros((len(queries), 1), np.float32)], 1))
    libraries = {"usearch": Usearch, "faiss": Faiss, "hnswlib": Hnswlib}
    print(f"{arguments.docs:,} fitted rows of W, graphs over {arguments.dims or W.shape[1]} dimensions, "
          f"{arguments.queries} queries, top-{K} after exact rescoring, {arguments.threads} threads for building, "
          "1 for searching")
    for name in arguments.libraries:
        for metric, (graph_rows, graph_queries) in rows_by_metric.items():
            library = libraries[name]()
            gc.collect()
            before = rss_bytes("VmRSS")
            start = time.perf_counter()
            try:
                library.build(graph_rows, "ip" if metric == "ip" else "l2", arguments.threads)
            except ImportError as exc:
                print(f"  {name}: skipped ({exc})")
                break
            built = time.perf_counter() - start
            memory = rss_bytes("VmRSS") - before
            print(f"  {name:8s} {metric:13s} build {built:7.1f} s, graph memory {memory / 2**20:7.0f} MB")
            for count in arguments.counts:
                found, latencies = [], []
                for feature, query in zip(features, graph_queries):
                    start = time.perf_counter()
                    rows_found = np.sort(library.search(query, count))
                    rows_found = rows_found[rows_found >= 0]
                    best = np.argsort(-(W[rows_found] @ feature), kind="stable")[:K]
                    found.append(rows_found[best])
                    latencies.append(time.perf_counter() - start)
                print(f"      {count:5d} rows from the graph: single query p50 {1e3 * np.median(latencies):6.2f} ms, "
                      f"recall@{K} {recall(found, truth):.3f}")
            del library
            gc.collect()


if __name__ == "__main__":
    main()

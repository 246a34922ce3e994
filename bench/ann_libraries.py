"""The embedded ANN libraries lemur could use for its first stage, on one data set.

    python bench/ann_libraries.py --docs 100000 --threads 2

usearch, faiss-cpu (IndexHNSWFlat) and hnswlib build an HNSW graph over the
rows of a synthetic W (h = 2048: clustered rows of varied norms, as fitted W
rows are) for maximum inner product search, with the same graph parameters
(M = 16, ef_construction = 128), twice each: with the inner product itself,
and with the standard reduction of inner products to nearest neighbours (each
row gets one more value, sqrt(max norm^2 - ||w||^2), each query a 0, so the
nearest row in L2 is the one of largest inner product). Printed per library
and metric: build time, resident memory of the index, single-query latency
(p50 over 200 queries) and recall of the 200 it returns against the exact
top-200, at several ef. The libraries are optional: a missing one is
skipped (pip install usearch faiss-cpu hnswlib).
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import numpy as np
from compare import rss_bytes

H = 2048
K = 200


def synthetic(num_docs: int, num_queries: int, seed: int = 0):
    """Clustered rows of varied norms, and queries near the clusters."""
    random = np.random.default_rng(seed)
    centres = random.standard_normal((max(8, num_docs // 100), H)).astype(np.float32)
    W = np.empty((num_docs, H), np.float32)
    for start in range(0, num_docs, 65536):
        stop = min(num_docs, start + 65536)
        rows = centres[random.integers(0, len(centres), stop - start)]
        rows = rows + 0.8 * random.standard_normal((stop - start, H), dtype=np.float32)
        W[start:stop] = rows * np.exp(0.3 * random.standard_normal((stop - start, 1))).astype(np.float32)
    queries = centres[random.integers(0, len(centres), num_queries)]
    queries = (queries + 0.8 * random.standard_normal((num_queries, H))).astype(np.float32)
    return W, queries


def exact_top(W: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import lemur

    return lemur.top_k(queries, W, K)[0]


def augmented(W: np.ndarray) -> tuple[np.ndarray, float]:
    """The reduction to nearest neighbours: rows (n, h + 1) of equal norm."""
    norms = np.einsum("ij,ij->i", W, W, dtype=np.float64)
    largest = float(norms.max())
    extra = np.sqrt(np.maximum(largest - norms, 0)).astype(np.float32)
    return np.ascontiguousarray(np.concatenate([W, extra[:, None]], axis=1)), largest


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / K for a, b in zip(found, truth)]))


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

    def search(self, query, ef):
        self.index.expansion_search = ef
        return np.asarray(self.index.search(query, K, threads=1).keys, dtype=np.int64)


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

    def search(self, query, ef):
        self.index.hnsw.efSearch = ef
        return self.index.search(query[None, :], K)[1][0].astype(np.int64)


class Hnswlib(Library):
    name = "hnswlib"

    def build(self, rows, metric, threads):
        import hnswlib

        self.index = hnswlib.Index(space="ip" if metric == "ip" else "l2", dim=rows.shape[1])
        self.index.init_index(max_elements=len(rows), M=16, ef_construction=128)
        self.index.set_num_threads(threads)
        self.index.add_items(rows, np.arange(len(rows)))
        self.index.set_num_threads(1)

    def search(self, query, ef):
        self.index.set_ef(max(ef, K))
        return self.index.knn_query(query[None, :], k=K)[0][0].astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ef", type=int, nargs="+", default=[200, 400, 800])
    parser.add_argument("--libraries", nargs="+", default=["usearch", "faiss", "hnswlib"])
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(arguments.threads))

    W, queries = synthetic(arguments.docs, arguments.queries)
    truth = exact_top(W, queries)
    rows_by_metric = {"ip": (W, queries)}
    wide, _ = augmented(W)
    rows_by_metric["l2 (reduced)"] = (wide, np.concatenate([queries, np.zeros((len(queries), 1), np.float32)], 1))
    libraries = {"usearch": Usearch, "faiss": Faiss, "hnswlib": Hnswlib}
    print(f"{arguments.docs:,} rows x {H}, {arguments.queries} queries, top-{K}, {arguments.threads} threads "
          "for building, 1 for searching")
    for name in arguments.libraries:
        for metric, (rows, metric_queries) in rows_by_metric.items():
            library = libraries[name]()
            gc.collect()
            before = rss_bytes("VmRSS")
            start = time.perf_counter()
            try:
                library.build(rows, "ip" if metric == "ip" else "l2", arguments.threads)
            except ImportError as exc:
                print(f"  {name}: skipped ({exc})")
                break
            built = time.perf_counter() - start
            memory = rss_bytes("VmRSS") - before
            print(f"  {name:8s} {metric:13s} build {built:7.1f} s, index memory {memory / 2**20:7.0f} MB")
            for ef in arguments.ef:
                found, latencies = [], []
                for query in metric_queries:
                    start = time.perf_counter()
                    found.append(library.search(query, ef))
                    latencies.append(time.perf_counter() - start)
                print(f"      ef {ef:5d}: single query p50 {1e3 * np.median(latencies):6.2f} ms, "
                      f"recall@{K} {recall(found, truth):.3f}")
            del library
            gc.collect()


if __name__ == "__main__":
    main()

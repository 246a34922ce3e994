"""Many Python threads calling lemur at once, with mixed num_threads: every
result must be bitwise what the same call gives alone, nothing may hang, and
OpenBLAS may never warn about OpenMP (its threads are never started)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import random_model
from test_retrieval import corpus

import lemur

NUM_PYTHON_THREADS = 8
CALLS_PER_THREAD = 50


def workload():
    """An index and a mixed list of calls (name, function of num_threads)."""
    random = np.random.default_rng(0)
    model = random_model("mlp", "gelu", dims=(32, 64, 256))
    doc_tokens, doc_counts = corpus(1500, 32, seed=1)
    index = lemur.Index(model, random.standard_normal((1500, 256)).astype(np.float32),
                        doc_tokens, doc_counts, sample=random.standard_normal((300, 32)).astype(np.float32))
    query_tokens = random.standard_normal((40 * 32, 32)).astype(np.float32)
    counts = np.full(40, 32)
    features = index.features(query_tokens, counts)
    candidates = random.integers(0, 1500, (40, 60))
    new_tokens, new_counts = corpus(20, 32, seed=2)
    calls = {
        "features": lambda t: index.features(query_tokens, counts, num_threads=t),
        "token features": lambda t: model.token_features(query_tokens[:300], num_threads=t),
        "top_k": lambda t: index.top_k(features, 50, num_threads=t),
        "top_k all": lambda t: index.top_k(features[:3], 2000, num_threads=t),
        "scores": lambda t: index.scores(features[:7], num_threads=t),
        "search": lambda t: index.search(query_tokens, counts, k=10, candidates=100, num_threads=t),
        "single query": lambda t: index.search(query_tokens[:32], [32], k=10, candidates=100, num_threads=t),
        "maxsim_scores": lambda t: index.maxsim_scores(query_tokens, counts, candidates, num_threads=t),
        "rerank": lambda t: index.rerank(query_tokens, counts, candidates, 10, num_threads=t),
        "fitting": lambda t: lemur.fitting.fit_rows(
            model, index._sample, new_tokens, np.concatenate([[0], np.cumsum(new_counts)]),
            num_threads=t, progress=False),
    }
    return calls


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_eight_python_threads_with_mixed_num_threads_get_the_lone_results(capfd):
    calls = workload()
    expected = {name: as_tuple(call(1)) for name, call in calls.items()}
    for name, call in calls.items():  # and alone at other thread counts
        for threads in (2, 3, 8):
            assert all(np.array_equal(a, b) for a, b in zip(as_tuple(call(threads)), expected[name])), name
    names = sorted(calls)
    failures: list[str] = []
    start = threading.Barrier(NUM_PYTHON_THREADS)

    def worker(seed: int) -> None:
        random = np.random.default_rng(seed)
        start.wait()
        for _ in range(CALLS_PER_THREAD):
            name = names[random.integers(len(names))]
            threads = int(random.integers(1, 3))
            result = as_tuple(calls[name](threads))
            if not all(np.array_equal(a, b) for a, b in zip(result, expected[name])):
                failures.append(f"{name} with num_threads={threads}")

    workers = [threading.Thread(target=worker, args=(seed,), daemon=True) for seed in range(NUM_PYTHON_THREADS)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=240)
        assert not thread.is_alive(), "a call hung"
    assert not failures, failures
    # OpenBLAS writes "OpenBLAS Warning : Detect OpenMP Loop ..." to the process's
    # stderr when its own threads would start inside OpenMP's
    assert "OpenBLAS" not in capfd.readouterr().err


def test_every_computation_is_bitwise_the_same_for_1_2_3_and_8_threads():
    calls = workload()
    doc_tokens, doc_counts = corpus(120, 32, seed=3)
    calls["fit_elm"] = lambda t: lemur.fit_elm(doc_tokens, doc_counts, hidden_dim=96, sample_size=200,
                                               seed=4, num_threads=t).W
    calls["functions"] = lambda t: (
        lemur.top_k(calls_features, calls_W, 7, num_threads=t)
        + (lemur.scores(calls_features, calls_W, num_threads=t),)
        + lemur.rerank(doc_tokens[:64], [30, 34], doc_tokens, doc_counts, [[1, 5, 9], [3, 2, 119]], 2,
                       num_threads=t)
        + (lemur.maxsim_scores(doc_tokens[:64], [30, 34], doc_tokens, doc_counts, [[1, 5, 9], [3, 2, 119]],
                               num_threads=t),))
    random = np.random.default_rng(5)
    calls_features = random.standard_normal((9, 96)).astype(np.float32)
    calls_W = random.standard_normal((300, 96)).astype(np.float32)
    for name, call in calls.items():
        expected = as_tuple(call(1))
        for threads in (2, 3, 8):
            assert all(np.array_equal(a, b) for a, b in zip(as_tuple(call(threads)), expected)), (name, threads)

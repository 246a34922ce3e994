"""First stages: the candidates of a batch of query features over W's rows.

:class:`lemur.Index` asks its first stage for the best rows of a batch of
features and tells it about rows added and removed; it does not know which
implementation it holds. Three implement :class:`FirstStage`:

- :class:`lemur.first_stage.exhaustive.ExhaustiveScan`: every row, at the
  index's precision (float32, or a compact bfloat16/int8 copy with a
  certified float32 rescoring): exact.
- :class:`lemur.first_stage.ann.AnnStage`: an HNSW graph (usearch) over W's
  rows projected on the model's leading feature directions, its best rows
  rescored exactly in float32: approximate (a miss costs recall).
- :class:`lemur.postgres.PgvectorStage`: an HNSW index of pgvector over W's
  rows in a PostgreSQL table: approximate. Its rows live in the database,
  where :class:`lemur.postgres.PostgresIndex` inserts and deletes them
  (with their tokens, in one transaction per change, as any client may), so
  it implements the searching half of the interface; the database's own
  index follows the table.

Rows are named by keys (int64): an in-memory index's row numbers of W, a
database's document ids. Scores are float32 inner products computed by the
rule of ``lemur/_tiles.h`` (the same float32 for a query and a row wherever
they fall), so two stages that find the same rows give the same scores and
order. A stage is immutable where it can be (``appended``/``subset`` return
a new stage; a search that took the old one runs on it unchanged).

Removed documents are tombstones until the index compacts them:
:func:`live_top_k` filters them out of any stage's results exactly, asking
for more rows when some of those returned were removed.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class FirstStage(Protocol):
    """What :class:`lemur.Index` asks of a first stage.

    ``top_k(features, k, num_threads, report)``: ``(keys, scores)``, shape
    ``(num_queries, k)`` (k at most the number of rows), int64 keys and their
    float32 scores, best first, ties by smaller key; an approximate stage pads
    with -1/-inf when it finds fewer. `report` (a dict, optional) receives
    counts of the work done ("rescored": (query, row) pairs scored in
    float32).

    ``best_rows(features, k, num_threads, report)``: the keys of the same k
    rows as a set per query (increasing, -1 padding first): what a rerank
    needs, and what a stage may find with less work than their order.

    ``appended(W, new_rows, num_threads)``: the stage over `W`, whose last
    rows are `new_rows` (keys: their row numbers) and whose others are this
    stage's. ``subset(W, keep)``: the stage over `W`, the rows of this one
    where the boolean `keep` is True (renumbered in order).

    ``description``: a line for ``lemur info`` and ``show_config``;
    ``nbytes``: the bytes the stage holds besides W.
    """

    @property
    def description(self) -> str: ...

    @property
    def nbytes(self) -> int: ...

    def top_k(self, features: np.ndarray, k: int, num_threads: int,
              report: dict | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def best_rows(self, features: np.ndarray, k: int, num_threads: int,
                  report: dict | None = None) -> np.ndarray: ...

    def appended(self, W: np.ndarray, new_rows: np.ndarray, num_threads: int) -> FirstStage: ...

    def subset(self, W: np.ndarray, keep: np.ndarray) -> FirstStage: ...


def live_top_k(stage: FirstStage, removed: np.ndarray, num_live: int, features: np.ndarray, k: int,
               num_threads: int, report: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The stage's top k over the rows not `removed` (a boolean mask over the
    stage's rows; `num_live` of them False): for each query, the k best live
    rows of the stage's answer when it is asked for more, best first.

    An exact stage gives exactly the exact top k of the live rows: its top
    k + r holds at least k live rows when r of them are removed, and they
    are the k best live rows in order. The stage is asked for
    k / (live fraction) rows plus a margin first, and again with twice as
    many for the queries that still lack live rows (at most until all rows
    are asked for), so tombstones cost in proportion to how many of them
    rank high.
    """
    total = removed.shape[0]
    k = min(k, num_live)
    keys = np.full((features.shape[0], k), -1, np.int64)
    scores = np.full((features.shape[0], k), -np.inf, np.float32)
    pending = np.arange(features.shape[0])
    asked = min(total, int(np.ceil(k * total / max(1, num_live))) + 16)
    while pending.size:
        found, found_scores = stage.top_k(features[pending], asked, num_threads, report)
        live = found >= 0
        live[live] = ~removed[found[live]]
        # the first k live rows of each query, in their order
        rank = np.cumsum(live, axis=1)
        taken = live & (rank <= k)
        complete = (rank[:, -1] >= k) | (asked >= total)
        for row in np.flatnonzero(complete):
            chosen = taken[row]
            count = int(chosen.sum())
            keys[pending[row], :count] = found[row, chosen]
            scores[pending[row], :count] = found_scores[row, chosen]
        pending = pending[~complete]
        asked = min(total, 2 * asked)
    return keys, scores

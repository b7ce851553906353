"""The recall backend: many Search queries against one collection in one store call.

Milvus Lite pays a per-call pass over the collection, so 16 queries in one
call cost far less than 16 calls. Queries batch together only when they share
collection, mode and filter (the batcher's key); each gets its own top-k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True, eq=False)
class RecallQuery:
    collection: str
    mode: str  # dense | sparse | hybrid
    expr: str
    k: int
    text: str = ""
    vector: np.ndarray | None = None
    predicate: Callable[[dict], bool] | None = None  # the filter over metadata; same for every query of a key

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.collection, self.mode, self.expr)


class RecallBackend:
    """The batcher's Backend over a store: items are queries, not token sequences, so none is measured."""

    name = kind = "recall"
    max_length = 0
    pass_cost = None  # a batch of queries is one store call

    def __init__(self, store):
        self.store = store

    def trace_attributes(self, query: RecallQuery) -> dict:
        """A batch's span attributes (OpenTelemetry's database conventions): one store search."""
        return {"db.system.name": "milvus", "db.operation.name": "search", "db.collection.name": query.collection,
                "tandem.mode": query.mode}

    def measure(self, queries: Sequence[RecallQuery], inline: bool = False) -> list[int]:
        return [1] * len(queries)

    def run(self, queries: Sequence[RecallQuery]) -> list:
        q0 = queries[0]
        vectors = [q.vector.tolist() for q in queries] if q0.mode != "sparse" else None
        texts = [q.text for q in queries] if q0.mode != "dense" else None
        limit = max(q.k for q in queries)
        results = self.store.search(q0.collection, q0.mode, vectors, texts, limit, q0.expr, q0.predicate)
        return [hits[: q.k] for hits, q in zip(results, queries)]

"""What the services share at run time: config, loaded models, their batchers, the store.

Built once at start-up by `server.app`; services receive it and never construct
models, clients or queues themselves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import grpc

from server.config import Config
from server.errors import ServiceError, not_found
from workers import Batcher


@dataclass
class Runtime:
    config: Config
    rerankers: dict[str, Batcher] = field(default_factory=dict)
    embedders: dict[str, Batcher] = field(default_factory=dict)
    recall: Batcher | None = None
    store: object | None = None  # server.storage.Store
    sealer: object | None = None  # server.sealer.Sealer, for an embedded store
    reranker_missing: str = ""  # why the server runs recall-only, when it does
    health: object | None = None

    @staticmethod
    def clock() -> float:
        return asyncio.get_running_loop().time()

    def deadline(self, context) -> float | None:
        """The call's deadline as an absolute loop time, or None."""
        remaining = context.time_remaining()
        return None if remaining is None else self.clock() + remaining

    def wrote(self, collection: str, rows: int) -> None:
        """An acknowledged write: let the sealer know (a no-op against a Milvus server)."""
        if self.sealer is not None:
            self.sealer.wrote(collection, rows)

    def reranker_batcher(self, model: str = "") -> Batcher:
        if not self.rerankers:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, self.reranker_missing)
        name = model or self.config.reranker
        if name not in self.rerankers:
            raise not_found(f"reranker {name!r} is not loaded; loaded: {', '.join(self.rerankers)}")
        return self.rerankers[name]

    def embedder_batcher(self, model: str = "") -> Batcher:
        name = model or self.config.embedder
        if name not in self.embedders:
            raise not_found(f"embedder {name!r} is not loaded; loaded: {', '.join(self.embedders)}")
        return self.embedders[name]

    def batchers(self) -> list[Batcher]:
        out = [*self.rerankers.values(), *self.embedders.values()]
        return out + ([self.recall] if self.recall else [])

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
    default_reranker: str = ""  # the first loaded --reranker; empty when recall-only
    default_embedder: str = ""  # the first --embedder
    reranker_missing: str = ""  # why the server runs recall-only, when it does
    splitters: dict = field(default_factory=dict)  # model name -> server.chunking.Splitter
    health: object | None = None
    device: str = "cpu"  # where the models run (set when they load)
    draining: asyncio.Event = field(default_factory=asyncio.Event)  # set when the shutdown grace is nearly up

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
        name = model or self.default_reranker
        if name not in self.rerankers:
            raise not_found(f"reranker {name!r} is not loaded; loaded: {', '.join(self.rerankers)}")
        return self.rerankers[name]

    def embedder_batcher(self, model: str = "") -> Batcher:
        name = model or self.default_embedder
        if name not in self.embedders:
            raise not_found(f"embedder {name!r} is not loaded; loaded: {', '.join(self.embedders)}")
        return self.embedders[name]

    def collection_embedder(self, meta) -> Batcher:
        """The embedder a collection was created with; never another one, whose vectors would be wrong."""
        b = self.embedders.get(meta.embedder)
        if b is None:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"collection {meta.name!r} was created with embedder {meta.embedder!r} "
                               f"(dimension {meta.dimension}), which this server has not loaded (loaded: "
                               f"{', '.join(self.embedders)}). Restart the server with --embedder "
                               f"{meta.embedder}=PATH_OR_HUB_ID (or --embedder {meta.embedder} when that is "
                               "its path or Hugging Face id) to write to or search this collection.")
        if b.backend.dimension != meta.dimension:
            raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"collection {meta.name!r} holds {meta.dimension}-dimensional vectors, but the "
                               f"loaded embedder {meta.embedder!r} makes {b.backend.dimension}-dimensional ones: "
                               "the name now points to a different model. Load the model the collection was "
                               "built with under that name.")
        return b

    def splitter(self, batcher: Batcher):
        """A Splitter over the model's own tokenizer, so windows are counted as the model counts them."""
        from server.chunking import Splitter

        name = batcher.backend.name
        if name not in self.splitters:
            self.splitters[name] = Splitter(batcher.backend.model.tokenizer)
        return self.splitters[name]

    def batchers(self) -> list[Batcher]:
        out = [*self.rerankers.values(), *self.embedders.values()]
        return out + ([self.recall] if self.recall else [])

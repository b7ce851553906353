"""What the engine shares at run time: config, loaded models, their batchers, the store.

Built once at start-up by `server.app`; the engine receives it and never constructs models, clients or queues
itself. Nothing here knows a transport.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tandem.server.chunking import Splitter
from tandem.server.config import Config
from tandem.server.errors import Kind, TandemError, not_found, precondition
from tandem.server.storage import CollectionMeta, Store
from tandem.server.storage.recycler import Recycler
from tandem.server.storage.sealer import Sealer
from tandem.workers import Batcher


class NoReranker(TandemError):
    """The server runs recall-only, so nothing can rerank."""

    kind = Kind.FAILED_PRECONDITION


@dataclass
class Runtime:
    config: Config
    rerankers: dict[str, Batcher] = field(default_factory=dict)
    embedders: dict[str, Batcher] = field(default_factory=dict)
    recall: Batcher | None = None
    store: Store | None = None
    sealer: Sealer | None = None  # for an embedded store
    recycler: Recycler | None = None  # for an embedded store with a child process
    default_reranker: str = ""  # the first loaded --reranker; empty when recall-only
    default_embedder: str = ""  # the first --embedder
    reranker_missing: str = ""  # why the server runs recall-only, when it does
    splitters: dict[str, Splitter] = field(default_factory=dict)  # by model name
    device: str = "cpu"  # where the models run (set when they load)
    draining: asyncio.Event = field(default_factory=asyncio.Event)  # set when the shutdown grace is nearly up

    @staticmethod
    def clock() -> float:
        """Loop time: deadlines are absolute values of this clock."""
        return asyncio.get_running_loop().time()

    def wrote(self, collection: str, rows: int) -> None:
        """An acknowledged write: let the sealer know (a no-op against a Milvus server)."""
        if self.sealer is not None:
            self.sealer.wrote(collection, rows)

    def reranker_batcher(self, model: str = "") -> Batcher:
        if not self.rerankers:
            raise NoReranker(self.reranker_missing)
        name = model or self.default_reranker
        if name not in self.rerankers:
            raise not_found(f"reranker {name!r} is not loaded; loaded: {', '.join(self.rerankers)}")
        return self.rerankers[name]

    def embedder_batcher(self, model: str = "") -> Batcher:
        name = model or self.default_embedder
        if name not in self.embedders:
            raise not_found(f"embedder {name!r} is not loaded; loaded: {', '.join(self.embedders)}")
        return self.embedders[name]

    def collection_embedder(self, meta: CollectionMeta) -> Batcher:
        """The embedder a collection was created with; never another one, whose vectors would be wrong."""
        b = self.embedders.get(meta.embedder)
        if b is None:
            raise precondition(f"collection {meta.name!r} was created with embedder {meta.embedder!r} "
                               f"(dimension {meta.dimension}), which this server has not loaded (loaded: "
                               f"{', '.join(self.embedders)}). Restart the server with --embedder "
                               f"{meta.embedder}=PATH_OR_HUB_ID (or --embedder {meta.embedder} when that is "
                               "its path or Hugging Face id) to write to or search this collection.")
        if b.backend.dimension != meta.dimension:
            raise precondition(f"collection {meta.name!r} holds {meta.dimension}-dimensional vectors, but the "
                               f"loaded embedder {meta.embedder!r} makes {b.backend.dimension}-dimensional ones: "
                               "the name now points to a different model. Load the model the collection was "
                               "built with under that name.")
        return b

    def splitter(self, batcher: Batcher) -> Splitter:
        """A Splitter over the model's own tokenizer, so windows are counted as the model counts them."""
        name = batcher.backend.name
        if name not in self.splitters:
            self.splitters[name] = Splitter(batcher.backend.model.tokenizer)
        return self.splitters[name]

    def batchers(self) -> list[Batcher]:
        out = [*self.rerankers.values(), *self.embedders.values()]
        return out + ([self.recall] if self.recall else [])

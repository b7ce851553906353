"""The engine: every transport's one way in. Plain Python values in, plain results out, Tandem's own errors.

rerank.py   Reranker.score: windows for long documents, best window, sigmoid, sort, top_n
search.py   Retriever.search: validation, filter, embed, recall, the cascade, the answer
cascade.py  the rerank stages of a Search and how a skipped one degrades
embed.py    Embedder.embed
index.py    Indexer: collections, upserts (one batch or a stream), deletes
transfer.py export and import of a collection's rows with their vectors
info.py     what the server runs and enforces

Deadlines are absolute loop times (`Runtime.clock()`); a transport turns its own deadline into one.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.server.engine.embed import Embedder
from tandem.server.engine.index import Indexer
from tandem.server.engine.info import describe
from tandem.server.engine.rerank import Reranker
from tandem.server.engine.search import Retriever
from tandem.server.engine.transfer import Transfer
from tandem.server.runtime import Runtime


@dataclass(frozen=True)
class Engine:
    rt: Runtime
    reranker: Reranker
    retriever: Retriever
    embedder: Embedder
    indexer: Indexer
    transfer: Transfer

    @classmethod
    def over(cls, rt: Runtime) -> "Engine":
        indexer = Indexer(rt)
        return cls(rt, Reranker(rt), Retriever(rt), Embedder(rt), indexer, Transfer(rt, indexer))

    def info(self):
        return describe(self.rt)

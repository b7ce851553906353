"""The document store: Milvus through `pymilvus.MilvusClient`, embedded or server alike.

A local path (`./data/tandem.db`) gives the embedded engine (embedded.py: milvus-lite's C++ engine in a
supervised child process); `http://host:19530` (plus a token) gives Milvus Standalone or Distributed.
`Store` is the one door the engine uses: connection (connection.py), collection records (collections.py),
writes (writes.py), recall (recall.py) and filters (filters.py) each live in their own module.

All methods block; callers run them off the event loop.
"""

from __future__ import annotations

from pathlib import Path

from tandem.server.storage import filters, recall, scan, writes
from tandem.server.storage.collections import Collections
from tandem.server.storage.connection import Connection
from tandem.server.storage.errors import CollectionRecreated
from tandem.server.storage.filters import CompiledFilter
from tandem.server.storage.recall import Hit
from tandem.server.storage.schema import CollectionMeta
from tandem.server.storage.space import Floor


class Store:
    def __init__(self, uri: str, token: str = "", timeout: float = 30.0, engine_nice: int = 0,
                 min_free_bytes: int = 0):
        self.conn = Connection(uri, token, timeout, engine_nice, forget=lambda name: self.collections.forget(name))
        self.collections = Collections(self.conn)
        self._grouping = recall.Grouping()
        self.uri, self.embedded, self.engine = uri, self.conn.embedded, self.conn.engine
        self.kind = "milvus-lite" if self.embedded else "milvus"
        # Writes to the embedded engine stop short of a full disk (space.py); a Milvus server minds its own.
        self.floor = Floor(Path(uri).resolve().parent, min_free_bytes if self.embedded else 0)

    # -- connection ------------------------------------------------------------

    def ping(self) -> None:
        self.conn.call(lambda c: c.list_collections())

    def reset(self) -> None:
        self.conn.reset()

    def close(self) -> None:
        self.conn.close()

    # -- collections -----------------------------------------------------------

    def create(self, name: str, embedder: str, dimension: int, language: str = "",
               chunking: tuple[int, int] | None = None) -> CollectionMeta:
        self.floor.check()
        return self.collections.create(name, embedder, dimension, language, chunking)

    def drop(self, name: str) -> None:
        self.collections.drop(name)

    def list(self) -> list[str]:
        return self.collections.list()

    def cached_meta(self, name: str) -> CollectionMeta | None:
        return self.collections.cached(name)

    def meta(self, name: str) -> CollectionMeta:
        return self.collections.meta(name)

    def current(self, name: str) -> CollectionMeta:
        """meta(name), checked against the store on a Milvus server shared with other replicas (collections.py)."""
        return self.collections.current(name)

    def check_same(self, name: str, meta: CollectionMeta) -> None:
        """CollectionRecreated when the collection is no longer the one `meta` describes (another replica dropped
        and re-created it), CollectionMissing when it is gone; nothing on the embedded engine, which one process
        owns."""
        if self.embedded:
            return
        now = self.current(name)
        if now.generation != meta.generation:
            raise CollectionRecreated(name, now.embedder, bool(now.chunking))

    def cached_current(self, name: str) -> CollectionMeta | None:
        """The record without I/O when that is sure to be current (the embedded engine); else None: ask current()."""
        return self.collections.cached(name) if self.embedded else None

    def describe(self, name: str) -> tuple[CollectionMeta, int, int]:
        return self.collections.counts(name)

    @staticmethod
    def compile_filter(f, meta: CollectionMeta | None = None) -> CompiledFilter:
        """A filter checked and compiled for `meta`'s schema version (for the current one without a meta: a bad
        filter fails before any lookup); recompile with `.for_collection(meta)` once the collection is known."""
        return filters.compile(f, meta.has_presence if meta else True)

    # -- documents -------------------------------------------------------------

    def upsert(self, name: str, rows: list[dict]) -> int:
        self.floor.check()
        return writes.upsert(self.conn, self.meta(name), rows)

    def upsert_documents(self, name: str, docs: list[dict]) -> tuple[int, int]:
        self.floor.check()
        return writes.upsert_documents(self.conn, name, docs)

    def put(self, name: str, rows: list[dict], replacing: bool = False) -> int:
        """Exported rows with their vectors (import): no embedding, BM25 computed by the engine."""
        self.floor.check()
        return writes.put(self.conn, self.meta(name), rows, replacing)

    def scan(self, name: str, page_size: int):
        """Every row, a page at a time (scan.py): a generator whose every step blocks."""
        return scan.scan(self.conn, self.meta(name), page_size)

    def flush(self, name: str) -> None:
        """Seal buffered rows into indexed segments. Not needed for durability (the WAL has them); it makes
        search cost independent of how the rows arrived (see sealer.py)."""
        self.conn.call(lambda c: c.flush(name), name)

    def documents_text(self, name: str, ids: list[str]) -> dict[str, str]:
        return writes.documents_text(self.conn, name, ids)

    def delete(self, name: str, ids: list[str]) -> None:
        writes.delete(self.conn, self.meta(name), ids)

    # -- recall ----------------------------------------------------------------

    def search(self, name: str, mode: str, vectors: list | None, texts: list[str] | None,
               limit: int, expr: str, predicate=None) -> list[list[Hit]]:
        """One call for many queries (recall.py). mode: dense | sparse | hybrid."""
        return recall.search(self.conn, self.meta(name), self._grouping, mode, vectors, texts, limit, expr,
                             predicate)

"""Collections: create, drop, list, and their records (cached; read again after a reconnect)."""

from __future__ import annotations

import logging

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from tandem.server.storage import schema
from tandem.server.storage.connection import Connection
from tandem.server.storage.errors import CollectionExists, CollectionMissing
from tandem.server.storage.schema import DENSE_INDEXES, CollectionMeta

log = logging.getLogger(__name__)


class Collections:
    def __init__(self, conn: Connection):
        self.conn = conn
        self._meta: dict[str, CollectionMeta] = {}
        # First DENSE_INDEXES entry the engine has not rejected. The embedded engine (milvus-lite 2.5.1) takes only
        # FLAT, IVF_FLAT and AUTOINDEX, and searches exactly whatever it is given, so it starts at AUTOINDEX.
        self.dense_index = 1 if conn.engine is not None else 0

    def forget(self, name: str | None) -> None:
        """Drop one cached record, or all of them (None)."""
        if name is None:
            self._meta.clear()
        else:
            self._meta.pop(name, None)

    def create(self, name: str, embedder: str, dimension: int, language: str = "",
               chunking: tuple[int, int] | None = None) -> CollectionMeta:
        lang, analyzer_params = schema.analyzer(language)
        record = schema.new_record(embedder, dimension, lang, chunking)
        properties = {schema.EMBEDDER: embedder, schema.DIMENSION: str(dimension), schema.LANGUAGE: lang}

        def do(c: MilvusClient):
            if c.has_collection(name):
                raise CollectionExists(name)
            while True:  # the first dense index the engine takes
                try:
                    c.create_collection(name, schema=schema.build_schema(record, analyzer_params),
                                        index_params=schema.build_indexes(c, self.dense_index, bool(chunking)),
                                        consistency_level="Strong", properties=properties)
                    return
                except MilvusException as exc:
                    if not schema.index_rejected(exc) or self.dense_index + 1 >= len(DENSE_INDEXES):
                        raise
                    log.info("the engine rejects %s (%s); using %s", DENSE_INDEXES[self.dense_index][0],
                             exc.message, DENSE_INDEXES[self.dense_index + 1][0])
                    if c.has_collection(name):  # created before its index failed
                        c.drop_collection(name)
                    self.dense_index += 1

        self.conn.call(do)
        self.forget(name)
        return self.meta(name)

    def drop(self, name: str) -> None:
        self.meta(name)
        self.conn.call(lambda c: c.drop_collection(name), name)
        self.forget(name)

    def list(self) -> list[str]:
        names = self.conn.call(lambda c: c.list_collections())
        return sorted(n for n in names if self._lookup(n) is not None)

    def cached(self, name: str) -> CollectionMeta | None:
        """The collection's metadata if already known (no I/O: safe on the event loop)."""
        return self._meta.get(name)

    def meta(self, name: str) -> CollectionMeta:
        m = self._lookup(name)
        if m is None:
            raise CollectionMissing(name)
        return m

    def current(self, name: str) -> CollectionMeta:
        """The record, checked against the store. The embedded engine belongs to this process, so its cache is
        always current. On a Milvus server another replica may have dropped the collection, or created it again
        under the same name with another embedder, chunking or language, since this one cached it: one describe
        (about 0.6 ms on loopback) reads the generation, and a changed one reloads the record."""
        cached = self._meta.get(name)
        if cached is None or self.conn.embedded:
            return self.meta(name)
        d = self.conn.call(lambda c: c.describe_collection(name), name)  # missing: CollectionMissing, forgotten
        record = schema.read_record(d.get("properties") or {}, d.get("description") or "")
        if record is not None and str(record.get("generation", "")) == cached.generation:
            return cached
        log.info("collection %r was created again by another server (generation %s, was %s): reading its record "
                 "again", name, (record or {}).get("generation"), cached.generation)
        self.forget(name)
        return self.meta(name)

    def _lookup(self, name: str) -> CollectionMeta | None:
        if name in self._meta:
            return self._meta[name]
        try:  # named, so that a drop racing the describe is CollectionMissing (and forgotten), not an error
            found = self.conn.call(lambda c: _describe(c, name), name)
        except CollectionMissing:
            return None
        if found is not None:
            self._meta[name] = found
        return found

    def counts(self, name: str) -> tuple[CollectionMeta, int, int]:
        """(meta, documents, rows): rows are passages in a chunked collection, documents otherwise."""
        meta = self.current(name)

        def count(where: str) -> int:
            # count(*) under Strong consistency is exact; collection stats count replaced and deleted rows too.
            rows = self.conn.call(lambda c: c.query(name, filter=where, output_fields=["count(*)"]), name)
            return int(rows[0]["count(*)"]) if rows else 0

        rows = count("")
        return meta, count("chunk == 0") if meta.chunking else rows, rows


def _describe(c: MilvusClient, name: str) -> CollectionMeta | None:
    """The collection's metadata; None when it is missing or not a Tandem collection. Loads it if released."""
    if not c.has_collection(name):
        return None
    d = c.describe_collection(name)
    record = schema.read_record(d.get("properties") or {}, d.get("description") or "")
    if record is None:
        return None
    # After a restart (or on a Milvus server) a collection must be loaded before search.
    if "NotLoad" in str(c.get_load_state(name).get("state")):
        c.load_collection(name)
    index = c.describe_index(name, "dense") or {}
    return schema.meta_from(name, record, index, {f["name"] for f in d.get("fields", [])})

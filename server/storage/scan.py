"""Every stored row of a collection, a page at a time, for export.

Pages come from the engine's query iterator, in primary-key order, so the server holds one page, never the
collection. A Milvus server reads every page at the first page's timestamp (a snapshot). milvus-lite 2.5 reads
each page as it stands; because pages advance by key, a row acknowledged before the scan began is still in it
unless a later write replaced or deleted it.
"""

from __future__ import annotations

from typing import Iterator

from tandem.server.storage.connection import Connection
from tandem.server.storage.schema import CollectionMeta, decode_id

FIELDS = ["id", "text", "metadata", "dense"]
PASSAGE_FIELDS = ["doc_id", "chunk", "of", "start"]
# Rows per engine query. milvus-lite 2.5 returns vectors in time that grows faster than the rows asked for: on the
# Xeon, 128-256 rows read at 16-24k rows/s, 1024 at 4k, and 8192 took 93 s (benchmarks/transfer.py, docs).
ENGINE_BATCH = 256


def scan(conn: Connection, meta: CollectionMeta, page_size: int) -> Iterator[list[dict]]:
    """Pages of `page_size` {"id", "text", "metadata", "dense"} (plus "chunk", "of", "start" for passages, whose
    "id" is their document's), with ids as the client sent them. Close the generator to release the iterator."""
    name, chunked = meta.name, bool(meta.chunking)
    fields = FIELDS + PASSAGE_FIELDS if chunked else FIELDS
    decode = decode_id if meta.escaped_ids else (lambda x: x)
    with conn.scanning():  # the iterator lives on this client: no planned restart of the engine meanwhile
        it = conn.call(lambda c: c.query_iterator(name, batch_size=min(page_size, ENGINE_BATCH),
                                                  output_fields=fields), name)
        page: list[dict] = []
        try:
            while True:
                batch = conn.call(lambda c: it.next(), name)
                for r in batch:
                    r["id"] = decode(r.pop("doc_id") if chunked else r["id"])
                page += batch
                if len(page) >= page_size or (not batch and page):
                    yield page
                    page = []
                if not batch:
                    return
        finally:
            try:
                it.close()
            except Exception:  # the connection may be gone; nothing is held server-side for long
                pass

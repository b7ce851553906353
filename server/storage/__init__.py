"""Storage: Milvus, embedded or server, behind one `Store` (store.py), with its own error types (errors.py).

connection.py  the client, reconnects, and pymilvus failures as store errors
embedded.py    the embedded engine: milvus-lite's C++ engine as a supervised child process
schema.py      fields, indexes, analyzers, id encoding and the collection record
collections.py create, drop, list and the cached records
writes.py      upserts, passages, deletes
recall.py      dense, BM25 and hybrid search, post-filtering, grouping, fusion
filters.py     the Filter message as a Milvus expression and a metadata predicate
scan.py        every row of a collection, a page at a time (export)
sealer.py      background flushes of an embedded collection
"""

from tandem.server.storage.errors import (CollectionExists, CollectionMissing, StoreError, StoreFailed,
                                          StoreUnavailable)
from tandem.server.storage.recall import RRF_K, Hit, rrf
from tandem.server.storage.schema import MAX_TEXT_CHARS, METRIC, CollectionMeta
from tandem.server.storage.store import Store

__all__ = ["CollectionExists", "CollectionMeta", "CollectionMissing", "Hit", "MAX_TEXT_CHARS", "METRIC", "RRF_K",
           "Store", "StoreError", "StoreFailed", "StoreUnavailable", "rrf"]

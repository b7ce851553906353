"""The document store: Milvus through `pymilvus.MilvusClient`, Lite or server alike.

A local path (`./data/tandem.db`) gives embedded Milvus Lite; `http://host:19530`
(plus a token) gives Milvus Standalone or Distributed. Nothing else here cares.

Schema per collection:
- `id`        VARCHAR(512) primary key (client-chosen; upsert replaces)
- `text`      VARCHAR(65535) with the standard analyzer, input of the BM25 function
- `dense`     FLOAT_VECTOR(dim), HNSW (M=16, efConstruction=200), COSINE
- `sparse`    SPARSE_FLOAT_VECTOR, filled by Milvus's BM25 function, SPARSE_INVERTED_INDEX
- `metadata`  JSON: the client's metadata object. Kept in one JSON field rather
              than dynamic top-level fields so user keys can never shadow or
              address the reserved fields above.
Collection properties record the embedder (`tandem.embedder`, `tandem.dimension`), so
queries use the same one; they also mark which collections are Tandem's.

All methods block; callers run them off the event loop.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from pymilvus import AnnSearchRequest, DataType, Function, FunctionType, MilvusClient, RRFRanker
from pymilvus.exceptions import MilvusException

from server.errors import ServiceError

log = logging.getLogger(__name__)
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # we log failures ourselves, once
logging.getLogger("faiss").setLevel(logging.WARNING)
# Milvus Lite's in-process server logs a traceback each time pymilvus probes an RPC it lacks (AllocTimestamp).
# Tandem's own server is grpc.aio and does not log through this logger.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

INDEX_TYPE = "HNSW"
METRIC = "COSINE"
INDEX_PARAMS = {"M": 16, "efConstruction": 200}
RRF_K = 60
MAX_TEXT_CHARS = 65535
OUTPUT = ["text", "metadata"]
_EMBEDDER, _DIMENSION = "tandem.embedder", "tandem.dimension"


@dataclass(frozen=True)
class CollectionMeta:
    name: str
    embedder: str
    dimension: int


@dataclass
class Hit:
    id: str
    text: str
    metadata: dict
    score: float


def is_lite(uri: str) -> bool:
    return "://" not in uri


class Store:
    def __init__(self, uri: str, token: str = "", timeout: float = 30.0):
        self.uri, self.token, self.timeout = uri, token, timeout
        self.kind = "milvus-lite" if is_lite(uri) else "milvus"
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()
        self._meta: dict[str, CollectionMeta] = {}

    # -- connection ------------------------------------------------------------

    def client(self) -> MilvusClient:
        with self._lock:
            if self._client is None:
                if is_lite(self.uri):
                    Path(self.uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
                try:
                    self._client = MilvusClient(uri=self.uri, token=self.token, timeout=self.timeout)
                except Exception as exc:
                    raise _unavailable(exc) from None
            return self._client

    def reset(self) -> None:
        """Drop the client so the next call reconnects (after Milvus was unreachable)."""
        with self._lock:
            c, self._client = self._client, None
            self._meta.clear()  # a restarted Milvus has collections released again: re-check and load
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def ping(self) -> None:
        self._call(lambda c: c.list_collections())

    def close(self) -> None:
        self.reset()

    def _call(self, fn, collection: str | None = None):
        try:
            try:
                return fn(self.client())
            except MilvusException as exc:
                if collection is None or not (exc.code == 101 or "load()" in str(exc.message)):
                    raise
                # Released (e.g. Milvus restarted): load once and retry.
                self.client().load_collection(collection)
                return fn(self.client())
        except ServiceError:
            raise
        except MilvusException as exc:
            if exc.code == 100 or "not exist" in str(exc.message) or "not found" in str(exc.message).lower():
                if collection is not None:
                    self._meta.pop(collection, None)
                    raise _missing(collection) from None
            if _is_connection_error(exc):
                self.reset()
                raise _unavailable(exc) from None
            raise ServiceError(grpc.StatusCode.INTERNAL, f"Milvus error: {exc.message}") from None
        except Exception as exc:  # grpc/connection failures surface as many types
            self.reset()
            raise _unavailable(exc) from None

    # -- collections -----------------------------------------------------------

    def create(self, name: str, embedder: str, dimension: int) -> CollectionMeta:
        def do(c: MilvusClient):
            if c.has_collection(name):
                raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"collection {name!r} already exists")
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
            s.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_CHARS, enable_analyzer=True)
            s.add_field("dense", DataType.FLOAT_VECTOR, dim=dimension)
            s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            s.add_field("metadata", DataType.JSON)
            s.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                    input_field_names=["text"], output_field_names=["sparse"]))
            ip = c.prepare_index_params()
            ip.add_index("dense", index_type=INDEX_TYPE, metric_type=METRIC, params=INDEX_PARAMS)
            ip.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
            c.create_collection(name, schema=s, index_params=ip, consistency_level="Strong",
                                properties={_EMBEDDER: embedder, _DIMENSION: str(dimension)})

        self._call(do)
        meta = CollectionMeta(name, embedder, dimension)
        self._meta[name] = meta
        return meta

    def drop(self, name: str) -> None:
        self.meta(name)
        self._call(lambda c: c.drop_collection(name), name)
        self._meta.pop(name, None)

    def list(self) -> list[str]:
        names = self._call(lambda c: c.list_collections())
        return sorted(n for n in names if self._meta_or_none(n) is not None)

    def cached_meta(self, name: str) -> CollectionMeta | None:
        """The collection's metadata if already known (no I/O: safe on the event loop)."""
        return self._meta.get(name)

    def meta(self, name: str) -> CollectionMeta:
        m = self._meta_or_none(name)
        if m is None:
            raise _missing(name)
        return m

    def _meta_or_none(self, name: str) -> CollectionMeta | None:
        if name in self._meta:
            return self._meta[name]

        def do(c: MilvusClient):
            if not c.has_collection(name):
                return None
            props = c.describe_collection(name).get("properties") or {}
            if _EMBEDDER not in props:
                return None  # not a Tandem collection
            # After a restart (or on a Milvus server) a collection must be loaded before search.
            if "NotLoad" in str(c.get_load_state(name).get("state")):
                c.load_collection(name)
            return props

        props = self._call(do)
        if props is None:
            return None
        meta = CollectionMeta(name, props[_EMBEDDER], int(props[_DIMENSION]))
        self._meta[name] = meta
        return meta

    def describe(self, name: str) -> tuple[CollectionMeta, int]:
        meta = self.meta(name)
        rows = self._call(lambda c: c.get_collection_stats(name), name).get("row_count", 0)
        return meta, int(rows)

    # -- documents -------------------------------------------------------------

    def upsert(self, name: str, rows: list[dict]) -> int:
        res = self._call(lambda c: c.upsert(name, rows), name)
        return int(res.get("upsert_count", len(rows))) if isinstance(res, dict) else len(rows)

    def flush(self, name: str) -> None:
        """Seal buffered rows into indexed segments. Not needed for durability (the WAL has them), but
        searching Milvus Lite's in-memory buffer is a brute-force pass, so bulk ingest ends with this."""
        self._call(lambda c: c.flush(name), name)

    def delete(self, name: str, ids: list[str]) -> None:
        self._call(lambda c: c.delete(name, ids=ids), name)

    # -- recall ----------------------------------------------------------------

    def search(self, name: str, mode: str, vectors: list | None, texts: list[str] | None,
               limit: int, expr: str) -> list[list[Hit]]:
        """One call for many queries. mode: dense | sparse | hybrid."""
        dense_param = {"metric_type": METRIC, "params": {"ef": max(limit, 64)}}
        sparse_param = {"metric_type": "BM25"}

        def do(c: MilvusClient):
            if mode == "dense":
                return c.search(name, data=vectors, anns_field="dense", limit=limit, filter=expr,
                                output_fields=OUTPUT, search_params=dense_param)
            if mode == "sparse":
                return c.search(name, data=texts, anns_field="sparse", limit=limit, filter=expr,
                                output_fields=OUTPUT, search_params=sparse_param)
            reqs = [AnnSearchRequest(data=vectors, anns_field="dense", param=dense_param, limit=limit, expr=expr),
                    AnnSearchRequest(data=texts, anns_field="sparse", param=sparse_param, limit=limit, expr=expr)]
            return c.hybrid_search(name, reqs, ranker=RRFRanker(RRF_K), limit=limit, output_fields=OUTPUT)

        result = self._call(do, name)
        out = []
        for hits in result:
            row = []
            for h in hits:
                ent = h.get("entity", {})
                score = float(h["distance"])
                if mode == "sparse":
                    score = abs(score)  # Milvus Lite reports BM25 as a negative distance
                row.append(Hit(str(h["id"]), ent.get("text", ""), ent.get("metadata") or {}, score))
            out.append(row)
        return out


def _missing(name: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND,
                        f"collection {name!r} does not exist; create it with IndexService/CreateCollection")


def _unavailable(exc: Exception) -> ServiceError:
    msg = getattr(exc, "message", None) or str(exc)
    return ServiceError(grpc.StatusCode.UNAVAILABLE, f"Milvus is unreachable: {str(msg).splitlines()[0][:300]}")


def _is_connection_error(exc: MilvusException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("unavailable", "connect", "deadline", "timeout", "closed", "not ready"))

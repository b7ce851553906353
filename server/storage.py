"""The document store: Milvus through `pymilvus.MilvusClient`, embedded or server alike.

A local path (`./data/tandem.db`) gives the embedded engine (`server/engine.py`: milvus-lite's C++ engine in
a supervised child process); `http://host:19530` (plus a token) gives Milvus Standalone or Distributed.

Schema per collection:
- `id`        VARCHAR primary key (client-chosen; upsert replaces). milvus-lite 2.5 cannot replace an id
              holding `'`, nor match one holding a control character, so new collections store ids with
              `%`, quotes, backslash and control characters percent-encoded; clients see the ids they sent.
- `text`      VARCHAR(65535) with the collection's analyzer (`language`), input of the BM25 function
- `dense`     FLOAT_VECTOR(dim), COSINE; the index is the best the engine takes (`DENSE_INDEXES`)
- `sparse`    SPARSE_FLOAT_VECTOR, filled by Milvus's BM25 function, SPARSE_INVERTED_INDEX
- `metadata`  JSON: the client's metadata object. Kept in one JSON field rather
              than dynamic top-level fields so user keys can never shadow or
              address the reserved fields above.
- `present`   JSON {key path: type} of every non-null metadata value, written by the store. It lets
              filters say "absent" and "not a number" without `not`, which milvus-lite 2.5 lacks
              (see server/filters.py).
A chunked collection (passage indexing, server/chunking.py) stores one row per passage instead: `id` is
`<document id>#<n>`, and four more fields say whose passage it is:
- `doc_id`    VARCHAR, the (encoded) document id, with an INVERTED index where the engine builds one
- `chunk`     INT32 passage number from 0, and `of`, INT32 the document's passage count
- `start`     INT64 character offset of the passage in the document
`text` then holds the passage; the document's text is the join of its passages, so a document may be longer
than one VARCHAR. Recall groups passages by `doc_id` (Milvus grouping search), one hit per document.
The collection's record (embedder, dimension, language, chunking) is JSON in the schema description, which
every engine keeps, and in collection properties, which Milvus servers keep (v0.1 wrote only those).

All methods block; callers run them off the event loop.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pymilvus import DataType, Function, FunctionType, MilvusClient
from pymilvus.exceptions import MilvusException

from server import metrics
from server.engine import EmbeddedMilvus, child_engine_available
from server.errors import ServiceError, invalid

log = logging.getLogger(__name__)
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # we log failures ourselves, once
logging.getLogger("faiss").setLevel(logging.WARNING)
# Milvus Lite 3's in-process server logs a traceback each time pymilvus probes an RPC it lacks.
# Tandem's own server is grpc.aio and does not log through this logger.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

METRIC = "COSINE"
# Dense indexes in order of preference. Milvus servers and milvus-lite 3 build HNSW; milvus-lite 2.5's local
# mode takes only FLAT, IVF_FLAT and AUTOINDEX. Search params follow the index type.
DENSE_INDEXES = [("HNSW", {"M": 16, "efConstruction": 200}), ("AUTOINDEX", {})]
RRF_K = 60
OVERSAMPLE = 4  # unfiltered candidates per wanted hit, before the predicate (see Store.search)
GROUP_OVERSAMPLE = 4  # passages per wanted document, where the engine cannot group (see Store.search)
MAX_TOPK = 16384  # Milvus's largest limit
MAX_TEXT_CHARS = 65535
OUTPUT = ["text", "metadata"]
PASSAGE_OUTPUT = ["text", "metadata", "doc_id", "start"]
MAX_QUERY_ROWS = 16384  # Milvus's largest query window
_EMBEDDER, _DIMENSION, _LANGUAGE = "tandem.embedder", "tandem.dimension", "tandem.language"
_RECORD = "tandem:"  # schema description prefix of the collection record

# BM25 analyzers by `language`. English stems and drops stop words; "standard" is v0.1's (lowercase only).
STEMMED = ("arabic", "danish", "dutch", "finnish", "french", "german", "greek", "hungarian", "italian",
           "norwegian", "portuguese", "romanian", "russian", "spanish", "swedish", "tamil", "turkish")
ANALYZERS = {"english": {"type": "english"}, "standard": {"type": "standard"}, "chinese": {"type": "chinese"},
             **{lang: {"tokenizer": "standard", "filter": ["lowercase", {"type": "stemmer", "language": lang}]}
                for lang in STEMMED}}
DEFAULT_LANGUAGE = "english"


def analyzer(language: str) -> tuple[str, dict]:
    lang = (language or DEFAULT_LANGUAGE).strip().lower()
    if lang not in ANALYZERS:
        raise invalid(f"language {language!r} has no BM25 analyzer; use one of {', '.join(sorted(ANALYZERS))}")
    return lang, ANALYZERS[lang]


_ID_UNSAFE = re.compile(r"[%'\"\\\x00-\x1f\x7f]")
_ID_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def encode_id(doc_id: str) -> str:
    return _ID_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", doc_id)


def decode_id(stored: str) -> str:
    return _ID_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), stored)


def presence(metadata: dict, prefix: str = "") -> dict[str, str]:
    """{dotted key path: type} for every non-null value, nested objects included."""
    out: dict[str, str] = {}
    for k, v in metadata.items():
        if v is None:
            continue
        path = prefix + k
        out[path] = ("bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float))
                     else "string" if isinstance(v, str) else "list" if isinstance(v, list) else "object")
        if isinstance(v, dict):
            out.update(presence(v, path + "."))
    return out


@dataclass(frozen=True)
class CollectionMeta:
    name: str
    embedder: str
    dimension: int
    language: str = "standard"
    index_type: str = "HNSW"
    index_params: dict = field(default_factory=dict)
    has_presence: bool = False  # v0.1 collections lack the `present` field
    escaped_ids: bool = False  # v0.1 collections store ids as sent
    chunking: tuple[int, int] | None = None  # (max_tokens, overlap_tokens) of a chunked collection

    def search_params(self, limit: int) -> dict:
        params = {"ef": max(limit, 64)} if self.index_type == "HNSW" else {}
        return {"metric_type": METRIC, "params": params}


@dataclass
class Hit:
    id: str  # the document's id
    text: str  # the document's text; in a chunked collection, the passage's
    metadata: dict
    score: float
    start: int = -1  # chunked collections: the passage's character offset in the document


def is_lite(uri: str) -> bool:
    return "://" not in uri


def _record(props: dict, description: str) -> dict | None:
    """The collection's record: the schema description holds all of it (v0.2); v0.1 wrote only properties."""
    if description.startswith(_RECORD):
        try:
            return json.loads(description[len(_RECORD):])
        except ValueError:
            return None
    if _EMBEDDER in props:
        return {"embedder": props[_EMBEDDER], "dimension": int(props[_DIMENSION]),
                "language": props.get(_LANGUAGE, "standard")}
    return None


def _index_rejected(exc: MilvusException) -> bool:
    text = str(exc.message).lower()
    return "index type" in text or "only support" in text


class Store:
    def __init__(self, uri: str, token: str = "", timeout: float = 30.0, engine_nice: int = 0):
        self.uri, self.token, self.timeout = uri, token, timeout
        self.embedded = is_lite(uri)
        self.kind = "milvus-lite" if self.embedded else "milvus"
        # milvus-lite 2.x runs as Tandem's supervised child; 3.x runs inside pymilvus (no child to supervise).
        self.engine = EmbeddedMilvus(uri, nice=engine_nice) if self.embedded and child_engine_available() else None
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()
        self._meta: dict[str, CollectionMeta] = {}
        # First DENSE_INDEXES entry the engine has not rejected. The embedded engine (milvus-lite 2.5.1) takes only
        # FLAT, IVF_FLAT and AUTOINDEX, and searches exactly whatever it is given, so it starts at AUTOINDEX.
        self._dense_index: int = 1 if self.engine is not None else 0
        self._grouping = True  # the engine groups passages by document in search (see search)

    # -- connection ------------------------------------------------------------

    def client(self) -> MilvusClient:
        with self._lock:
            if self.engine is not None and self._client is not None and not self.engine.alive():
                self._drop_client_locked()  # the child died: reconnect to the one uri() restarts
            if self._client is None:
                try:
                    if self.engine is not None:
                        uri = self.engine.uri()
                    else:
                        uri = self.uri
                        if self.embedded:
                            Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
                    self._client = MilvusClient(uri=uri, token=self.token, timeout=self.timeout)
                except Exception as exc:
                    raise _unavailable(exc) from None
            return self._client

    def _drop_client_locked(self) -> None:
        c, self._client = self._client, None
        self._meta.clear()  # a restarted Milvus has collections released again: re-check and load
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def reset(self) -> None:
        """Drop the client so the next call reconnects (after Milvus was unreachable)."""
        with self._lock:
            self._drop_client_locked()

    def ping(self) -> None:
        self._call(lambda c: c.list_collections())

    def close(self) -> None:
        self.reset()
        if self.engine is not None:
            self.engine.stop()

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

    def create(self, name: str, embedder: str, dimension: int, language: str = "",
               chunking: tuple[int, int] | None = None) -> CollectionMeta:
        lang, analyzer_params = analyzer(language)
        record = {"embedder": embedder, "dimension": dimension, "language": lang, "ids": "escaped"}
        if chunking:
            record["chunking"] = list(chunking)

        def schema():
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                           description=_RECORD + json.dumps(record))
            s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=3 * 512)  # room for escapes
            s.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_CHARS, enable_analyzer=True,
                        analyzer_params=analyzer_params)
            s.add_field("dense", DataType.FLOAT_VECTOR, dim=dimension)
            s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            s.add_field("metadata", DataType.JSON)
            s.add_field("present", DataType.JSON)
            if chunking:
                s.add_field("doc_id", DataType.VARCHAR, max_length=3 * 512)
                s.add_field("chunk", DataType.INT32)
                s.add_field("of", DataType.INT32)
                s.add_field("start", DataType.INT64)
            s.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                    input_field_names=["text"], output_field_names=["sparse"]))
            return s

        def do(c: MilvusClient):
            if c.has_collection(name):
                raise ServiceError(grpc.StatusCode.ALREADY_EXISTS, f"collection {name!r} already exists")
            while True:
                index_type, params = DENSE_INDEXES[self._dense_index]
                ip = c.prepare_index_params()
                ip.add_index("dense", index_type=index_type, metric_type=METRIC, params=params)
                ip.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
                if chunking:
                    ip.add_index("doc_id", index_type="INVERTED")  # passage lookups by document
                try:
                    c.create_collection(name, schema=schema(), index_params=ip, consistency_level="Strong",
                                        properties={_EMBEDDER: embedder, _DIMENSION: str(dimension),
                                                    _LANGUAGE: lang})
                    return
                except MilvusException as exc:
                    if not _index_rejected(exc) or self._dense_index + 1 >= len(DENSE_INDEXES):
                        raise
                    log.info("the engine rejects %s (%s); using %s", index_type, exc.message,
                             DENSE_INDEXES[self._dense_index + 1][0])
                    if c.has_collection(name):  # created before its index failed
                        c.drop_collection(name)
                    self._dense_index += 1

        self._call(do)
        self._meta.pop(name, None)
        return self.meta(name)

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
            d = c.describe_collection(name)
            record = _record(d.get("properties") or {}, d.get("description") or "")
            if record is None:
                return None  # not a Tandem collection
            # After a restart (or on a Milvus server) a collection must be loaded before search.
            if "NotLoad" in str(c.get_load_state(name).get("state")):
                c.load_collection(name)
            idx = c.describe_index(name, "dense") or {}
            fields = {f["name"] for f in d.get("fields", [])}
            return record, idx, "present" in fields

        found = self._call(do)
        if found is None:
            return None
        record, idx, has_presence = found
        skip = {"index_type", "metric_type", "field_name", "index_name", "dim", "total_rows", "indexed_rows",
                "pending_index_rows", "state"}
        meta = CollectionMeta(name, record["embedder"], int(record["dimension"]), record.get("language", "standard"),
                              str(idx.get("index_type", "")), {k: str(v) for k, v in idx.items() if k not in skip},
                              has_presence, record.get("ids") == "escaped",
                              tuple(record["chunking"]) if record.get("chunking") else None)
        self._meta[name] = meta
        return meta

    def describe(self, name: str) -> tuple[CollectionMeta, int, int]:
        """(meta, documents, rows): rows are passages in a chunked collection, documents otherwise."""
        meta = self.meta(name)

        def count(where: str) -> int:
            # count(*) under Strong consistency is exact; collection stats count replaced and deleted rows too.
            rows = self._call(lambda c: c.query(name, filter=where, output_fields=["count(*)"]), name)
            return int(rows[0]["count(*)"]) if rows else 0

        rows = count("")
        return meta, count("chunk == 0") if meta.chunking else rows, rows

    # -- documents -------------------------------------------------------------

    def upsert(self, name: str, rows: list[dict]) -> int:
        meta = self.meta(name)
        if meta.escaped_ids:
            rows = [{**r, "id": encode_id(r["id"])} for r in rows]
        if meta.has_presence:
            rows = [{**r, "present": presence(r.get("metadata") or {})} for r in rows]
        res = self._call(lambda c: c.upsert(name, rows), name)
        return int(res.get("upsert_count", len(rows))) if isinstance(res, dict) else len(rows)

    def flush(self, name: str) -> None:
        """Seal buffered rows into indexed segments. Not needed for durability (the WAL has them); it makes
        search cost independent of how the rows arrived (see server/sealer.py)."""
        self._call(lambda c: c.flush(name), name)

    def upsert_documents(self, name: str, docs: list[dict]) -> tuple[int, int]:
        """Chunked collections: write each document's passages, then remove passages left from an earlier,
        longer version. Returns (documents, passages). A document is complete once this returns; a crash in
        between leaves stale tail passages of an unacknowledged write, which its retry removes.

        docs: [{"id", "metadata", "passages": [{"text", "start", "dense"}]}]."""
        rows, count = [], {}
        for d in docs:
            key, metadata, n = encode_id(d["id"]), d.get("metadata") or {}, len(d["passages"])
            count[key], pres = n, presence(metadata)
            rows += [{"id": f"{key}#{k}", "doc_id": key, "chunk": k, "of": n, "start": p["start"], "text": p["text"],
                      "dense": p["dense"], "metadata": metadata, "present": pres}
                     for k, p in enumerate(d["passages"])]
        self._call(lambda c: c.upsert(name, rows), name)
        old = self._passages(name, list(count), ["chunk"])
        stale = [r["id"] for r in old if r["chunk"] >= count[r["doc_id"]]]
        if stale:
            self._call(lambda c: c.delete(name, ids=stale), name)
        return len(docs), len(rows)

    def _passages(self, name: str, keys: list[str], fields: list[str]) -> list[dict]:
        """Every passage row of these (encoded) document ids."""
        out = []
        for i in range(0, len(keys), 256):
            part = keys[i:i + 256]
            where = f"doc_id in {json.dumps(part)}"  # encoded ids hold no quote, backslash or control character
            got = self._call(lambda c: c.query(name, filter=where, output_fields=["id", "doc_id", *fields],
                                               limit=MAX_QUERY_ROWS), name)
            if len(got) >= MAX_QUERY_ROWS and len(part) > 1:  # too many passages at once: one document at a time
                got = [r for k in part for r in self._passages(name, [k], fields)]
            out += got
        return out

    def documents_text(self, name: str, ids: list[str]) -> dict[str, str]:
        """Chunked collections: each document's whole text, joined from its passages."""
        from server.chunking import join

        by_doc: dict[str, list] = {}
        for r in self._passages(name, [encode_id(x) for x in ids], ["chunk", "of", "start", "text"]):
            by_doc.setdefault(r["doc_id"], []).append(r)
        out = {}
        for key, rows in by_doc.items():
            rows.sort(key=lambda r: r["chunk"])
            # Passages past the first one's count are the tail of an older, longer version whose removal a
            # crash interrupted (see upsert_documents): not part of the document.
            out[decode_id(key)] = join([(r["start"], r["text"]) for r in rows if r["chunk"] < rows[0]["of"]])
        return out

    def delete(self, name: str, ids: list[str]) -> None:
        meta = self.meta(name)
        if meta.escaped_ids:
            ids = [encode_id(x) for x in ids]
        if meta.chunking:  # every passage of each document
            self._call(lambda c: c.delete(name, filter=f"doc_id in {json.dumps(ids)}"), name)
            return
        self._call(lambda c: c.delete(name, ids=ids), name)

    # -- recall ----------------------------------------------------------------

    def search(self, name: str, mode: str, vectors: list | None, texts: list[str] | None,
               limit: int, expr: str, predicate=None) -> list[list[Hit]]:
        """One call for many queries. mode: dense | sparse | hybrid.

        Hybrid runs the dense and the BM25 search and fuses them here with RRF, as Milvus's `hybrid_search`
        would: on milvus-lite 2.5 that call costs 11 ms at 100k documents where the two searches cost 3.

        With a filter and its `predicate` (server/filters.py), the store first asks for OVERSAMPLE x more
        unfiltered candidates and keeps those the predicate accepts: the embedded engine parses every row's
        JSON to filter (about 15 ms per condition per 100k rows), while a 4x larger unfiltered search costs
        about 1 ms more. The kept ones are exactly the filtered top `limit` when at least `limit` survive, or
        when the unfiltered list held the whole collection; otherwise the engine filters, as before.
        """
        meta = self.meta(name)
        as_sent = decode_id if meta.escaped_ids else str
        fields = ("dense", "sparse") if mode == "hybrid" else (mode,)

        def hits(result, sparse: bool) -> list[list[Hit]]:
            # Milvus Lite 3 reports BM25 as a negative distance
            def hit(h) -> Hit:
                e = h.get("entity", {})
                score = abs(float(h["distance"])) if sparse else float(h["distance"])
                if meta.chunking:
                    return Hit(decode_id(e["doc_id"]), e.get("text", ""), e.get("metadata") or {}, score,
                               int(e["start"]))
                return Hit(as_sent(h["id"]), e.get("text", ""), e.get("metadata") or {}, score)

            return [[hit(h) for h in row] for row in result]

        def search(c: MilvusClient, data: list, field: str, k: int, where: str, params: dict) -> list[list[Hit]]:
            if not meta.chunking:
                return hits(c.search(name, data=data, anns_field=field, limit=k, filter=where,
                                     output_fields=OUTPUT, search_params=params), field == "sparse")
            if self._grouping:  # one hit per document: its best passage
                try:
                    return hits(c.search(name, data=data, anns_field=field, limit=k, filter=where,
                                         output_fields=PASSAGE_OUTPUT, search_params=params,
                                         group_by_field="doc_id"), field == "sparse")
                except MilvusException as exc:
                    if "group" not in str(exc).lower():
                        raise
                    log.info("the engine has no grouping search (%s); grouping passages in Tandem", exc.message)
                    self._grouping = False
            # Without grouping search: widen until k documents are found or the collection is exhausted.
            wide = k * GROUP_OVERSAMPLE
            while True:
                rows = hits(c.search(name, data=data, anns_field=field, limit=min(wide, MAX_TOPK), filter=where,
                                     output_fields=PASSAGE_OUTPUT, search_params=params), field == "sparse")
                best = [list({h.id: h for h in reversed(r)}.values())[::-1] for r in rows]  # first hit per doc
                done = all(len(b) >= k or len(r) < min(wide, MAX_TOPK) for b, r in zip(best, rows))
                if done or wide >= MAX_TOPK:
                    return [b[:k] for b in best]
                wide *= 4

        def run(rows: list[int], k: int, where: str) -> dict[str, list[list[Hit]]]:
            def do(c: MilvusClient):
                out = {}
                if "dense" in fields:
                    out["dense"] = search(c, [vectors[i] for i in rows], "dense", k, where, meta.search_params(k))
                if "sparse" in fields:
                    out["sparse"] = search(c, [texts[i] for i in rows], "sparse", k, where, {"metric_type": "BM25"})
                return out

            return self._call(do, name)

        n = len(vectors if vectors is not None else texts)
        lists: dict[str, list] = {f: [None] * n for f in fields}
        engine_rows = list(range(n))
        if expr and predicate is not None:
            over = min(OVERSAMPLE * limit, MAX_TOPK)
            wide = run(engine_rows, over, "")
            engine_rows = []
            for i in range(n):
                kept = {f: [h for h in wide[f][i] if predicate(h.metadata)] for f in fields}
                if all(len(kept[f]) >= limit or len(wide[f][i]) < over for f in fields):
                    for f in fields:
                        lists[f][i] = kept[f][:limit]
                else:
                    engine_rows.append(i)
            metrics.RECALL_FILTER.labels("post").inc(n - len(engine_rows))
        if engine_rows:
            if expr:
                metrics.RECALL_FILTER.labels("engine").inc(len(engine_rows))
            exact = run(engine_rows, limit, expr)
            for j, i in enumerate(engine_rows):
                for f in fields:
                    lists[f][i] = exact[f][j]
        if mode != "hybrid":
            return lists[mode]
        return [rrf([d, s], limit) for d, s in zip(lists["dense"], lists["sparse"])]


def rrf(rankings: list[list[Hit]], limit: int, k: int = RRF_K) -> list[Hit]:
    """Reciprocal rank fusion, Milvus's RRFRanker: score = sum over rankings of 1 / (k + rank), rank from 1."""
    fused: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, h in enumerate(ranking, start=1):
            if h.id in fused:
                fused[h.id].score += 1.0 / (k + rank)
            else:
                fused[h.id] = Hit(h.id, h.text, h.metadata, 1.0 / (k + rank), h.start)
    return sorted(fused.values(), key=lambda h: -h.score)[:limit]


def _missing(name: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND,
                        f"collection {name!r} does not exist; create it with IndexService/CreateCollection")


def _unavailable(exc: Exception) -> ServiceError:
    msg = getattr(exc, "message", None) or str(exc)
    return ServiceError(grpc.StatusCode.UNAVAILABLE, f"Milvus is unreachable: {str(msg).splitlines()[0][:300]}")


def _is_connection_error(exc: MilvusException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("unavailable", "connect", "deadline", "timeout", "closed", "not ready"))

"""Rows in and out by id: upserts, chunked documents' passages, deletes, and documents read back whole."""

from __future__ import annotations

import json
import threading

from tandem.server.chunking import join
from tandem.server.storage.connection import Connection
from tandem.server.storage.schema import CollectionMeta, decode_id, encode_id, presence

MAX_QUERY_ROWS = 16384  # Milvus's largest query window


def upsert(conn: Connection, meta: CollectionMeta, rows: list[dict]) -> int:
    """rows: [{"id", "text", "metadata", "dense"}]; returns how many were written."""
    rows = _as_stored(meta, rows)
    res = conn.call(lambda c: c.upsert(meta.name, rows), meta.name)
    return int(res.get("upsert_count", len(rows))) if isinstance(res, dict) else len(rows)


def _as_stored(meta: CollectionMeta, rows: list[dict]) -> list[dict]:
    """Document rows with their ids encoded and their `present` field, as this collection's schema stores them."""
    if meta.escaped_ids:
        rows = [{**r, "id": encode_id(r["id"])} for r in rows]
    if meta.has_presence:
        rows = [{**r, "present": presence(r.get("metadata") or {})} for r in rows]
    return rows


def upsert_documents(conn: Connection, name: str, docs: list[dict]) -> tuple[int, int]:
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
    conn.call(lambda c: c.upsert(name, rows), name)
    _remove_stale(conn, name, count)
    return len(docs), len(rows)


# Rows per engine write when importing. milvus-lite 2.5 writes 256-row batches at about twice the rate of 1024-row
# ones, and an upsert (a delete, then an insert) slows as the collection grows (4.1k rows/s at 10k rows, 1.1k at
# 60k on the Xeon) while an insert holds about 5k: see `put`.
IMPORT_BATCH = 256
_import_locks: dict[str, threading.Lock] = {}


def put(conn: Connection, meta: CollectionMeta, rows: list[dict], replacing: bool) -> int:
    """Rows as exported (storage/scan.py), with their vectors: documents, or passages that carry their
    document's id, number, count and offset. Returns how many rows were written.

    Rows whose ids are not stored yet are inserted, the rest upserted, so a re-sent import replaces what it wrote
    before without paying an upsert for every new row. The check and the insert hold a per-collection lock, so two
    imports through this server cannot both insert one id. `replacing`: documents may already be stored with more
    passages, whose tail this removes (as upsert_documents does)."""
    name = meta.name
    if meta.chunking:
        count: dict[str, int] = {}
        out = []
        for r in rows:
            key, metadata = encode_id(r["id"]), r.get("metadata") or {}
            count[key] = r["of"]
            out.append({"id": f"{key}#{r['chunk']}", "doc_id": key, "chunk": r["chunk"], "of": r["of"],
                        "start": r["start"], "text": r["text"], "dense": r["dense"], "metadata": metadata,
                        "present": presence(metadata)})
    else:
        out = _as_stored(meta, rows)
    if not meta.escaped_ids:  # a v0.1 collection's ids may hold quotes: no `id in [...]` check, upsert them all
        for i in range(0, len(out), IMPORT_BATCH):
            conn.call(lambda c: c.upsert(name, out[i:i + IMPORT_BATCH]), name)
        return len(out)
    with _import_locks.setdefault(name, threading.Lock()):
        for i in range(0, len(out), IMPORT_BATCH):
            part = out[i:i + IMPORT_BATCH]
            ids = [r["id"] for r in part]
            # Stored ids hold no quote, backslash or control character (schema.encode_id), so JSON quotes them.
            where = f"id in {json.dumps(ids)}"
            stored = {r["id"] for r in conn.call(lambda c: c.query(name, filter=where, output_fields=["id"]), name)}
            new = [r for r in part if r["id"] not in stored]
            old = [r for r in part if r["id"] in stored]
            if new:
                conn.call(lambda c: c.insert(name, new), name)
            if old:
                conn.call(lambda c: c.upsert(name, old), name)
    if meta.chunking and replacing:
        _remove_stale(conn, name, count)
    return len(out)


def _remove_stale(conn: Connection, name: str, count: dict[str, int]) -> None:
    """Delete passages numbered at or past their document's new passage count (an older, longer version)."""
    old = passages(conn, name, list(count), ["chunk"])
    stale = [r["id"] for r in old if r["chunk"] >= count[r["doc_id"]]]
    if stale:
        conn.call(lambda c: c.delete(name, ids=stale), name)


def passages(conn: Connection, name: str, keys: list[str], fields: list[str]) -> list[dict]:
    """Every passage row of these (encoded) document ids."""
    out = []
    for i in range(0, len(keys), 256):
        part = keys[i:i + 256]
        where = f"doc_id in {json.dumps(part)}"  # encoded ids hold no quote, backslash or control character
        got = conn.call(lambda c: c.query(name, filter=where, output_fields=["id", "doc_id", *fields],
                                          limit=MAX_QUERY_ROWS), name)
        if len(got) >= MAX_QUERY_ROWS and len(part) > 1:  # too many passages at once: one document at a time
            got = [r for k in part for r in passages(conn, name, [k], fields)]
        out += got
    return out


def documents_text(conn: Connection, name: str, ids: list[str]) -> dict[str, str]:
    """Chunked collections: each document's whole text, joined from its passages."""
    by_doc: dict[str, list] = {}
    for r in passages(conn, name, [encode_id(x) for x in ids], ["chunk", "of", "start", "text"]):
        by_doc.setdefault(r["doc_id"], []).append(r)
    out = {}
    for key, rows in by_doc.items():
        rows.sort(key=lambda r: r["chunk"])
        # Passages past the first one's count are the tail of an older, longer version whose removal a
        # crash interrupted (see upsert_documents): not part of the document.
        out[decode_id(key)] = join([(r["start"], r["text"]) for r in rows if r["chunk"] < rows[0]["of"]])
    return out


def delete(conn: Connection, meta: CollectionMeta, ids: list[str]) -> None:
    name = meta.name
    if meta.escaped_ids:
        ids = [encode_id(x) for x in ids]
    if meta.chunking:  # every passage of each document
        conn.call(lambda c: c.delete(name, filter=f"doc_id in {json.dumps(ids)}"), name)
        return
    conn.call(lambda c: c.delete(name, ids=ids), name)

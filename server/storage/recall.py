"""Recall: many queries against one collection in one engine call, filtered, grouped and fused.

Hybrid runs the dense and the BM25 search and fuses them here with RRF, as Milvus's `hybrid_search` would: on
milvus-lite 2.5 that call costs 11 ms at 100k documents where the two searches cost 3.

With a filter and its `predicate` (filters.py), recall first asks for OVERSAMPLE x more unfiltered candidates
and keeps those the predicate accepts: the embedded engine parses every row's JSON to filter (about 15 ms per
condition per 100k rows), while a 4x larger unfiltered search costs about 1 ms more. The kept ones are exactly
the filtered top `limit` when at least `limit` survive, or when the unfiltered list held the whole collection;
otherwise the engine filters, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from tandem.server import metrics
from tandem.server.storage.connection import Connection
from tandem.server.storage.schema import CollectionMeta, decode_id

log = logging.getLogger(__name__)

RRF_K = 60
OVERSAMPLE = 4  # unfiltered candidates per wanted hit, before the predicate
GROUP_OVERSAMPLE = 4  # passages per wanted document, where the engine cannot group
MAX_TOPK = 16384  # Milvus's largest limit
OUTPUT = ["text", "metadata"]
PASSAGE_OUTPUT = ["text", "metadata", "doc_id", "start"]


@dataclass
class Hit:
    id: str  # the document's id
    text: str  # the document's text; in a chunked collection, the passage's
    metadata: dict
    score: float
    start: int = -1  # chunked collections: the passage's character offset in the document


@dataclass
class Grouping:
    """Whether the engine groups passages by document in search; learned on the first refusal."""

    supported: bool = True


def search(conn: Connection, meta: CollectionMeta, grouping: Grouping, mode: str, vectors: list | None,
           texts: list[str] | None, limit: int, expr: str,
           predicate: Callable[[dict], bool] | None = None) -> list[list[Hit]]:
    """One call for many queries. mode: dense | sparse | hybrid."""
    fields = ("dense", "sparse") if mode == "hybrid" else (mode,)
    data = {"dense": vectors, "sparse": texts}

    def run(rows: list[int], k: int, where: str) -> dict[str, list[list[Hit]]]:
        return conn.call(lambda c: {f: _search(c, meta, grouping, [data[f][i] for i in rows], f, k, where)
                                    for f in fields}, meta.name)

    n = len(vectors if vectors is not None else texts)
    lists: dict[str, list] = {f: [None] * n for f in fields}
    engine_rows = list(range(n))
    if expr and predicate is not None:
        engine_rows = _post_filter(run, lists, fields, n, limit, predicate)
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


def _post_filter(run, lists: dict, fields, n: int, limit: int, predicate) -> list[int]:
    """Fill `lists` from an unfiltered, oversampled search where the predicate leaves enough (or everything);
    returns the queries the engine must filter itself."""
    over = min(OVERSAMPLE * limit, MAX_TOPK)
    wide = run(list(range(n)), over, "")
    rest = []
    for i in range(n):
        kept = {f: [h for h in wide[f][i] if predicate(h.metadata)] for f in fields}
        if all(len(kept[f]) >= limit or len(wide[f][i]) < over for f in fields):
            for f in fields:
                lists[f][i] = kept[f][:limit]
        else:
            rest.append(i)
    metrics.RECALL_FILTER.labels("post").inc(n - len(rest))
    return rest


def _search(c: MilvusClient, meta: CollectionMeta, grouping: Grouping, data: list, field: str, k: int,
            where: str) -> list[list[Hit]]:
    """One engine search over one field; a chunked collection gets one hit per document (its best passage)."""
    params = meta.search_params(k) if field == "dense" else {"metric_type": "BM25"}
    sparse = field == "sparse"
    if not meta.chunking:
        return _hits(meta, c.search(meta.name, data=data, anns_field=field, limit=k, filter=where,
                                    output_fields=OUTPUT, search_params=params), sparse)
    if grouping.supported:
        try:
            return _hits(meta, c.search(meta.name, data=data, anns_field=field, limit=k, filter=where,
                                        output_fields=PASSAGE_OUTPUT, search_params=params,
                                        group_by_field="doc_id"), sparse)
        except MilvusException as exc:
            if "group" not in str(exc).lower():
                raise
            log.info("the engine has no grouping search (%s); grouping passages in Tandem", exc.message)
            grouping.supported = False
    return _group_here(c, meta, data, field, k, where, params, sparse)


def _group_here(c: MilvusClient, meta: CollectionMeta, data: list, field: str, k: int, where: str, params: dict,
                sparse: bool) -> list[list[Hit]]:
    """Without grouping search: widen until k documents are found or the collection is exhausted."""
    wide = k * GROUP_OVERSAMPLE
    while True:
        rows = _hits(meta, c.search(meta.name, data=data, anns_field=field, limit=min(wide, MAX_TOPK),
                                    filter=where, output_fields=PASSAGE_OUTPUT, search_params=params), sparse)
        best = [list({h.id: h for h in reversed(r)}.values())[::-1] for r in rows]  # first hit per doc
        done = all(len(b) >= k or len(r) < min(wide, MAX_TOPK) for b, r in zip(best, rows))
        if done or wide >= MAX_TOPK:
            return [b[:k] for b in best]
        wide *= 4


def _hits(meta: CollectionMeta, result, sparse: bool) -> list[list[Hit]]:
    as_sent = decode_id if meta.escaped_ids else str

    def hit(h) -> Hit:
        e = h.get("entity", {})
        score = abs(float(h["distance"])) if sparse else float(h["distance"])  # Lite 3: BM25 as a negative distance
        if meta.chunking:
            return Hit(decode_id(e["doc_id"]), e.get("text", ""), e.get("metadata") or {}, score, int(e["start"]))
        return Hit(as_sent(h["id"]), e.get("text", ""), e.get("metadata") or {}, score)

    return [[hit(h) for h in row] for row in result]


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

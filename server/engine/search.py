"""Search: embed the query, recall candidates from the store, rerank them through the cascade, return the best."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tandem.server import metrics, tracing, validation
from tandem.server.config import search_rerank_defaults
from tandem.server.engine import cascade
from tandem.server.engine.cascade import Stage, StageTiming
from tandem.server.errors import invalid
from tandem.server.runtime import Runtime
from tandem.server.storage import StoreFailed
from tandem.server.storage.filters import with_text
from tandem.workers.recall import RecallQuery

MODES = ("dense", "hybrid", "sparse")
DEFAULT_TOP_N, DEFAULT_RECALL_K = 10, 100


@dataclass(frozen=True)
class SearchQuery:
    collection: str
    query: str
    mode: str = "dense"  # dense | hybrid | sparse
    top_n: int = 0  # 0: DEFAULT_TOP_N
    recall_k: int = 0  # 0: max(DEFAULT_RECALL_K, top_n)
    filter: object | None = None  # a tandem.v1.Filter: the contract's typed filter tree, as every transport parses it
    filter_text: str = ""  # conditions in the CLI's words, joined with `filter`
    rerank: bool | None = None  # None: not said (on)
    reranker: str = ""
    stages: tuple[Stage, ...] = ()
    require_rerank: bool = False
    exclude_text: bool = False
    rerank_depth: int = 0  # 0: the server's default
    max_tokens_per_doc: int = 0  # 0: the server's default


@dataclass(frozen=True)
class SearchHit:
    id: str
    metadata: dict
    recall_rank: int
    score: float  # the last rerank stage's relevance, or the recall score when nothing reranked
    recall_score: float
    text: str = ""
    passage: str = ""  # chunked collections: the passage that matched, and where it starts
    passage_offset: int = 0


@dataclass(frozen=True)
class SearchTimings:
    embed_seconds: float
    recall_seconds: float
    rerank_seconds: float
    total_seconds: float
    rerank_stages: list[StageTiming] = field(default_factory=list)


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    reranked: bool
    degraded_reason: str
    recalled: int
    timings: SearchTimings


class Retriever:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self._stage = {s: metrics.STAGE_SECONDS.labels(s) for s in ("embed", "recall", "rerank")}

    async def search(self, q: SearchQuery, deadline: float | None = None) -> SearchResult:
        rt, store = self.rt, self.rt.store
        t0 = rt.clock()
        with tracing.stage("validate"):
            name, meta, flt, stages, top_n, recall_k, depth, max_tokens = await self._validate(q)
        tracing.note(**{"tandem.collection": name, "tandem.mode": q.mode, "tandem.top_n": top_n,
                        "tandem.recall_k": recall_k})

        vector = None
        if q.mode != "sparse":
            embedder = rt.collection_embedder(meta)
            with tracing.stage("embed", {"tandem.model": embedder.backend.name, "tandem.texts": 1}):
                (vector,), _ = await embedder.submit([q.query], deadline=deadline)
        t1 = rt.clock()
        recall = RecallQuery(name, q.mode, flt.expr, recall_k, q.query, vector, flt.predicate)
        with tracing.stage("recall", {"db.system.name": "milvus", "db.operation.name": "search",
                                      "db.collection.name": name, "tandem.mode": q.mode,
                                      "tandem.recall_k": recall_k, "tandem.filtered": bool(flt.expr)}) as span:
            try:
                (hits,), _ = await rt.recall.submit([recall], key=recall.key, deadline=deadline)
            except StoreFailed:  # another replica re-created the collection since _validate: say so
                await asyncio.to_thread(rt.store.check_same, name, meta)
                raise
            if span.is_recording():
                span.set_attribute("tandem.recalled", len(hits))
        t2 = rt.clock()

        # Past the rerank depth, candidates keep recall order behind the reranked ones (Vespa's rerank-count).
        head = hits[:depth] if depth else hits
        if stages and hits:
            ranked = await cascade.run(rt, stages, q.query, [h.text for h in head], require=q.require_rerank,
                                       deadline=deadline, max_tokens=max_tokens)
        else:
            ranked = cascade.Outcome(list(range(len(head))), {}, [], [])
        t3 = rt.clock()
        order = ranked.order + list(range(len(head), len(hits)))
        reranked = bool(ranked.scores)
        degraded = "; ".join(ranked.reasons)
        tracing.note(**{"tandem.recalled": len(hits), "tandem.reranked": reranked,
                        **({"tandem.degraded_reason": degraded} if degraded else {})})
        best = order[:top_n]
        texts = {}
        if meta.chunking and not q.exclude_text and best:  # the documents' whole texts, from their passages
            texts = await asyncio.to_thread(store.documents_text, name, [hits[i].id for i in best])
        out = []
        for i in best:
            h = hits[i]
            score = ranked.scores.get(i, 0.0) if reranked else h.score
            if meta.chunking:
                out.append(SearchHit(h.id, h.metadata, i, score, h.score, texts.get(h.id, ""), h.text, h.start))
            else:
                out.append(SearchHit(h.id, h.metadata, i, score, h.score, "" if q.exclude_text else h.text))
        self._stage["embed"].observe(t1 - t0)
        self._stage["recall"].observe(t2 - t1)
        if stages:
            self._stage["rerank"].observe(t3 - t2)
        return SearchResult(out, reranked, degraded, len(hits),
                            SearchTimings(t1 - t0, t2 - t1, t3 - t2, rt.clock() - t0, ranked.timings))

    async def _validate(self, q: SearchQuery):
        """The query checked against the limits, its cascade planned and its filter compiled for the collection."""
        rt, cfg, store = self.rt, self.rt.config, self.rt.store
        name = validation.collection(q.collection)
        validation.text("query", q.query, cfg.max_text_bytes)
        validation.text("filter_text", q.filter_text, cfg.max_text_bytes, allow_empty=True)
        if q.mode not in MODES:
            raise invalid(f"mode {q.mode!r} is not a search mode; use one of {', '.join(MODES)}")
        # The defaults fit within the server's limit, so a server run with a lower --max-recall-k still answers
        # a Search that leaves them out.
        top_n = q.top_n or min(DEFAULT_TOP_N, cfg.max_recall_k)
        if top_n > cfg.max_recall_k:
            raise invalid(f"top_n is {top_n}; the limit is {cfg.max_recall_k} (max_recall_k)")
        recall_k = q.recall_k or min(max(DEFAULT_RECALL_K, top_n), cfg.max_recall_k)
        if recall_k > cfg.max_recall_k:
            raise invalid(f"recall_k is {recall_k}; the limit is {cfg.max_recall_k} (max_recall_k)")
        if top_n > recall_k:
            raise invalid(f"top_n ({top_n}) is larger than recall_k ({recall_k}); raise recall_k or lower top_n")
        stages = cascade.plan(rt, q.rerank, q.reranker, q.stages, top_n)
        default_depth, default_tokens = search_rerank_defaults(cfg, rt.device)
        depth = q.rerank_depth or default_depth
        max_tokens = q.max_tokens_per_doc or default_tokens
        # A bad filter is INVALID_ARGUMENT before the collection is looked up; its form depends on the collection.
        flt = store.compile_filter(with_text(q.filter, q.filter_text), store.cached_meta(name))
        meta = store.cached_current(name) or await asyncio.to_thread(store.current, name)
        return name, meta, flt.for_collection(meta), stages, top_n, recall_k, depth, max_tokens

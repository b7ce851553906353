"""tandem.v1.SearchService: embed the query, recall candidates, rerank them, return the best."""

from __future__ import annotations

import asyncio
import logging

import grpc


from server import metrics, validation
from server.errors import ServiceError, invalid
from server.filters import compile_filter, compile_predicate
from server.chunking import heads
from server.config import search_rerank_defaults
from server.messages import dict_to_struct, sigmoid
from server.runtime import Runtime
from tandem.v1 import search_pb2, search_pb2_grpc
from workers import Batcher, BackendError, DeadlineExceeded, Overloaded, WorkerStopped
from workers.recall import RecallQuery

log = logging.getLogger(__name__)

Mode = search_pb2.SearchMode
MODES = {Mode.SEARCH_MODE_UNSPECIFIED: "dense", Mode.SEARCH_MODE_DENSE: "dense",
         Mode.SEARCH_MODE_HYBRID: "hybrid", Mode.SEARCH_MODE_SPARSE: "sparse"}
DEFAULT_TOP_N, DEFAULT_RECALL_K = 10, 100
MAX_STAGES = 4


def _reserve(remaining: float) -> float:
    """Time kept back from the rerank stage so a degraded answer still makes the deadline."""
    return max(0.005, min(0.05, 0.2 * remaining))


class SearchService(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt
        self._stage = {s: metrics.STAGE_SECONDS.labels(s) for s in ("embed", "recall", "rerank")}

    async def Search(self, request: search_pb2.SearchRequest, context) -> search_pb2.SearchResponse:
        rt, cfg = self.rt, self.rt.config
        t0 = rt.clock()
        name = validation.collection(request.collection)
        validation.text("query", request.query, cfg.max_text_bytes)
        if request.mode not in MODES:
            raise invalid(f"mode {request.mode} is not a SearchMode; use SEARCH_MODE_DENSE, _HYBRID or _SPARSE")
        mode = MODES[request.mode]
        top_n = request.top_n or DEFAULT_TOP_N
        if top_n > cfg.max_recall_k:
            raise invalid(f"top_n is {top_n}; the limit is {cfg.max_recall_k} (max_recall_k)")
        recall_k = request.recall_k or max(DEFAULT_RECALL_K, top_n)
        if recall_k > cfg.max_recall_k:
            raise invalid(f"recall_k is {recall_k}; the limit is {cfg.max_recall_k} (max_recall_k)")
        if top_n > recall_k:
            raise invalid(f"top_n ({top_n}) is larger than recall_k ({recall_k}); raise recall_k or lower top_n")
        stages = self._stages(request, top_n)
        default_depth, default_tokens = search_rerank_defaults(cfg, rt.device)
        depth = request.rerank_depth or default_depth
        max_tokens = request.max_tokens_per_doc or default_tokens
        deadline = rt.deadline(context)
        # A bad filter is INVALID_ARGUMENT before the collection is looked up; its form depends on the collection.
        cached = rt.store.cached_meta(name)
        presence = cached.has_presence if cached else True
        expr = compile_filter(request.filter, presence) if request.HasField("filter") else ""
        meta = cached or await asyncio.to_thread(rt.store.meta, name)
        if expr and meta.has_presence != presence:
            expr = compile_filter(request.filter, meta.has_presence)

        vector = None
        if mode != "sparse":
            (vector,), _ = await rt.collection_embedder(meta).submit([request.query], deadline=deadline)
        t1 = rt.clock()
        predicate = compile_predicate(request.filter) if expr else None
        query = RecallQuery(name, mode, expr, recall_k, request.query, vector, predicate)
        (hits,), _ = await rt.recall.submit([query], key=query.key, deadline=deadline)
        t2 = rt.clock()

        order, scores, reasons, timings = list(range(len(hits))), {}, [], []
        # Past the rerank depth, candidates keep recall order behind the reranked ones (Vespa's rerank-count).
        beyond = order[depth:] if depth else []
        del order[len(order) - len(beyond):]
        for k, (model, batcher, keep) in enumerate(stages if hits else []):
            ts = rt.clock()
            try:
                if batcher is None:  # recall-only server
                    raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION, rt.reranker_missing)
                stage_scores = await self._score(batcher, request.query, [hits[i] for i in order], deadline,
                                                 max_tokens)
                scores.update(zip(order, stage_scores))
                order.sort(key=lambda i: -scores[i])  # stable: ties keep the previous stage's order
                scored = len(stage_scores)
            except (Overloaded, DeadlineExceeded, BackendError, WorkerStopped, ServiceError) as exc:
                no_reranker = isinstance(exc, ServiceError) and exc.code == grpc.StatusCode.FAILED_PRECONDITION
                if request.require_rerank or (isinstance(exc, ServiceError) and not no_reranker):
                    raise
                what = f"rerank stage {k + 1} ({model})" if len(stages) > 1 else "rerank"
                code, words = _degraded(exc)
                detail = getattr(exc, "message", None) or str(exc)
                reasons.append(f"{what} skipped because {words}" + (f" ({detail})" if code != "no_reranker" else
                                                                    f": {detail}"))
                metrics.DEGRADED.labels(code).inc()
                log.debug("search degraded: %s", reasons[-1])
                scored = 0
            if keep:
                del order[keep:]
            timings.append(search_pb2.RerankStageTiming(model=model, seconds=rt.clock() - ts, scored=scored,
                                                        skipped=not scored))
        t3 = rt.clock()
        order += beyond

        reranked = bool(scores)
        best = order[:top_n]
        texts = {}
        if meta.chunking and not request.exclude_text and best:  # the documents' whole texts, from their passages
            texts = await asyncio.to_thread(rt.store.documents_text, name, [hits[i].id for i in best])
        out = []
        for i in best:
            h = hits[i]
            hit = search_pb2.SearchHit(id=h.id, metadata=dict_to_struct(h.metadata), recall_rank=i,
                                       score=scores.get(i, 0.0) if reranked else h.score, recall_score=h.score)
            if meta.chunking:
                hit.passage, hit.passage_offset = h.text, h.start
                hit.text = texts.get(h.id, "")
            elif not request.exclude_text:
                hit.text = h.text
            out.append(hit)
        self._stage["embed"].observe(t1 - t0)
        self._stage["recall"].observe(t2 - t1)
        if stages:
            self._stage["rerank"].observe(t3 - t2)
        return search_pb2.SearchResponse(
            hits=out, reranked=reranked, degraded_reason="; ".join(reasons), recalled=len(hits),
            timings=search_pb2.SearchTimings(embed_seconds=t1 - t0, recall_seconds=t2 - t1,
                                             rerank_seconds=t3 - t2, total_seconds=rt.clock() - t0,
                                             rerank_stages=timings),
        )

    def _stages(self, request, top_n: int) -> list[tuple[str, Batcher | None, int]]:
        """The rerank stages asked for, as (model name, batcher, keep); [] when rerank is off.

        Unknown models are NOT_FOUND before any work; on a recall-only server the batcher is None and the
        stage degrades (or fails, with require_rerank) like a single rerank always has."""
        want = request.rerank if request.HasField("rerank") else True
        if request.rerank_stages:
            if request.reranker:
                raise invalid("set either reranker (one stage) or rerank_stages (a cascade), not both")
            if not want:
                raise invalid("rerank is false but rerank_stages is set; drop one of them")
            if len(request.rerank_stages) > MAX_STAGES:
                raise invalid(f"{len(request.rerank_stages)} rerank stages; at most {MAX_STAGES} are allowed")
            asked = [(s.model, s.keep) for s in request.rerank_stages]
        elif want:
            asked = [(request.reranker, 0)]
        else:
            return []
        out = []
        for k, (model, keep) in enumerate(asked):
            if keep and keep < top_n:
                raise invalid(f"rerank_stages[{k}].keep is {keep}, below top_n ({top_n}); keep at least top_n, "
                              "or 0 to keep every candidate")
            batcher = self.rt.reranker_batcher(model) if self.rt.rerankers else None
            configured = [m.name for m in self.rt.config.rerankers]  # recall-only: the model that is missing
            out.append((batcher.backend.name if batcher else model or (configured[0] if configured else "none"),
                        batcher, keep))
        return out

    async def _score(self, batcher: Batcher, query: str, hits, deadline: float | None,
                     max_tokens: int = 0) -> list[float]:
        budget = None
        if deadline is not None:
            budget = deadline - _reserve(deadline - self.rt.clock())
        texts = [h.text for h in hits]
        if max_tokens:
            texts = await asyncio.to_thread(heads, self.rt.splitter(batcher), texts, max_tokens)
        if self.rt.draining.is_set():
            raise WorkerStopped("the server is shutting down")
        work = asyncio.ensure_future(batcher.submit([(query, t) for t in texts], deadline=budget))
        stop = asyncio.ensure_future(self.rt.draining.wait())
        try:
            await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()  # drops its queued pairs
        if not work.done() or work.cancelled():
            raise WorkerStopped("the server is shutting down and the rerank would outlast its grace period")
        logits, _ = work.result()
        return [sigmoid(x) for x in logits]


def _degraded(exc: Exception) -> tuple[str, str]:
    """(metric reason, words for people) for a rerank stage that was skipped."""
    if isinstance(exc, Overloaded):
        return "overloaded", "the reranker is overloaded"
    if isinstance(exc, DeadlineExceeded):
        return "deadline_exceeded", "it could not finish before the call's deadline"
    if isinstance(exc, BackendError):
        return "model_error", "the model failed on this batch"
    if isinstance(exc, WorkerStopped):
        return "shutting_down", "the server is shutting down"
    return "no_reranker", "no reranker is loaded"

"""tandem.v1.SearchService over gRPC: an adapter onto Engine.retriever."""

from __future__ import annotations

from tandem.server.engine import Engine
from tandem.server.engine.cascade import Stage
from tandem.server.engine.search import SearchQuery
from tandem.server.errors import invalid
from tandem.server.messages import deadline, dict_to_struct
from tandem.v1 import search_pb2, search_pb2_grpc

Mode = search_pb2.SearchMode
MODES = {Mode.SEARCH_MODE_UNSPECIFIED: "dense", Mode.SEARCH_MODE_DENSE: "dense",
         Mode.SEARCH_MODE_HYBRID: "hybrid", Mode.SEARCH_MODE_SPARSE: "sparse"}


def query_of(request: search_pb2.SearchRequest) -> SearchQuery:
    if request.mode not in MODES:
        raise invalid(f"mode {request.mode} is not a SearchMode; use SEARCH_MODE_DENSE, _HYBRID or _SPARSE")
    return SearchQuery(
        collection=request.collection, query=request.query, mode=MODES[request.mode], top_n=request.top_n,
        recall_k=request.recall_k, filter=request.filter if request.HasField("filter") else None,
        filter_text=request.filter_text,
        rerank=request.rerank if request.HasField("rerank") else None, reranker=request.reranker,
        stages=tuple(Stage(s.model, s.keep) for s in request.rerank_stages), require_rerank=request.require_rerank,
        exclude_text=request.exclude_text, rerank_depth=request.rerank_depth,
        max_tokens_per_doc=request.max_tokens_per_doc)


class SearchService(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    async def Search(self, request: search_pb2.SearchRequest, context) -> search_pb2.SearchResponse:
        out = await self.engine.retriever.search(query_of(request), deadline=deadline(context))
        t = out.timings
        return search_pb2.SearchResponse(
            hits=[search_pb2.SearchHit(id=h.id, metadata=dict_to_struct(h.metadata), recall_rank=h.recall_rank,
                                       score=h.score, recall_score=h.recall_score, text=h.text, passage=h.passage,
                                       passage_offset=h.passage_offset) for h in out.hits],
            reranked=out.reranked, degraded_reason=out.degraded_reason, recalled=out.recalled,
            timings=search_pb2.SearchTimings(
                embed_seconds=t.embed_seconds, recall_seconds=t.recall_seconds, rerank_seconds=t.rerank_seconds,
                total_seconds=t.total_seconds,
                rerank_stages=[search_pb2.RerankStageTiming(model=s.model, seconds=s.seconds, scored=s.scored,
                                                            skipped=s.skipped) for s in t.rerank_stages]),
        )

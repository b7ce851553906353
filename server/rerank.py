"""tandem.v1.RerankService over gRPC: an adapter onto Engine.reranker."""

from __future__ import annotations

from tandem.server.engine import Engine
from tandem.server.errors import invalid
from tandem.server.interceptors import call_timings
from tandem.server.messages import deadline, usage
from tandem.v1 import rerank_pb2, rerank_pb2_grpc


class RerankService(rerank_pb2_grpc.RerankServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    async def Rerank(self, request: rerank_pb2.RerankRequest, context) -> rerank_pb2.RerankResponse:
        if request.long_documents not in rerank_pb2.LongDocuments.values():
            raise invalid(f"long_documents {request.long_documents} is not a LongDocuments value; use "
                          "LONG_DOCUMENTS_TRUNCATE or LONG_DOCUMENTS_CHUNK")
        out = await self.engine.reranker.score(
            request.query, list(request.documents), model=request.model, top_n=request.top_n,
            chunk=request.long_documents == rerank_pb2.LONG_DOCUMENTS_CHUNK, raw=request.raw_scores,
            max_tokens_per_doc=request.max_tokens_per_doc, deadline=deadline(context))
        results = []
        for r in out.results:
            result = rerank_pb2.RerankResult(index=r.index, relevance_score=r.score,
                                              document=request.documents[r.index] if request.return_documents else "")
            if r.window is not None:
                result.window_offset, result.window_length = r.window.start, r.window.end - r.window.start
            results.append(result)
        u = usage(out.stats, out.seconds)
        u.windows = out.windows
        call_timings().update(queue_seconds=out.stats.queue_seconds, inference_seconds=out.stats.inference_seconds)
        return rerank_pb2.RerankResponse(results=results, model=out.model, usage=u)

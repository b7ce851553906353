"""tandem.v1.RerankService: score caller-supplied documents with the cross-encoder."""

from __future__ import annotations

from server import validation
from server.errors import invalid
from server.interceptors import call_timings
from server.messages import sigmoid, usage
from server.runtime import Runtime
from tandem.v1 import rerank_pb2, rerank_pb2_grpc


class RerankService(rerank_pb2_grpc.RerankServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def Rerank(self, request: rerank_pb2.RerankRequest, context) -> rerank_pb2.RerankResponse:
        rt = self.rt
        start = rt.clock()
        batcher = rt.reranker_batcher(request.model)
        cfg = rt.config
        validation.text("query", request.query, cfg.max_text_bytes)
        validation.count("documents", len(request.documents), cfg.max_documents_per_request)
        for i, d in enumerate(request.documents):
            validation.text(f"documents[{i}]", d, cfg.max_text_bytes, allow_empty=True)
        if request.top_n > cfg.max_documents_per_request:
            raise invalid(
                f"top_n is {request.top_n}; it can be at most {cfg.max_documents_per_request} "
                "(0 returns every document)"
            )
        pairs = [(request.query, d) for d in request.documents]
        logits, stats = await batcher.submit(pairs, deadline=rt.deadline(context))
        order = sorted(range(len(logits)), key=lambda i: -logits[i])
        if request.top_n:
            order = order[: request.top_n]
        results = [
            rerank_pb2.RerankResult(
                index=i,
                relevance_score=logits[i] if request.raw_scores else sigmoid(logits[i]),
                document=request.documents[i] if request.return_documents else "",
            )
            for i in order
        ]
        call_timings().update(queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds)
        return rerank_pb2.RerankResponse(
            results=results, model=batcher.backend.name, usage=usage(stats, rt.clock() - start)
        )


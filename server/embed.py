"""tandem.v1.EmbedService: texts in, L2-normalised vectors out, through the batched bi-encoder."""

from __future__ import annotations

from server import validation
from server.interceptors import call_timings
from server.messages import usage
from server.runtime import Runtime
from tandem.v1 import embed_pb2, embed_pb2_grpc


class EmbedService(embed_pb2_grpc.EmbedServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def Embed(self, request: embed_pb2.EmbedRequest, context) -> embed_pb2.EmbedResponse:
        rt = self.rt
        start = rt.clock()
        batcher = rt.embedder_batcher(request.model)
        validation.count("texts", len(request.texts), rt.config.max_documents_per_request)
        for i, t in enumerate(request.texts):
            validation.text(f"texts[{i}]", t, rt.config.max_text_bytes)
        vectors, stats = await batcher.submit(list(request.texts), deadline=rt.deadline(context))
        call_timings().update(queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds)
        return embed_pb2.EmbedResponse(
            embeddings=[embed_pb2.Embedding(values=v.tolist()) for v in vectors],
            model=batcher.backend.name,
            dimension=batcher.backend.dimension,
            usage=usage(stats, rt.clock() - start),
        )

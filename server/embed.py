"""tandem.v1.EmbedService over gRPC: an adapter onto Engine.embedder."""

from __future__ import annotations

from tandem.server.engine import Engine
from tandem.server.interceptors import call_timings
from tandem.server.messages import deadline, usage
from tandem.v1 import embed_pb2, embed_pb2_grpc


class EmbedService(embed_pb2_grpc.EmbedServiceServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    async def Embed(self, request: embed_pb2.EmbedRequest, context) -> embed_pb2.EmbedResponse:
        out = await self.engine.embedder.embed(list(request.texts), model=request.model, deadline=deadline(context))
        call_timings().update(queue_seconds=out.stats.queue_seconds, inference_seconds=out.stats.inference_seconds)
        return embed_pb2.EmbedResponse(embeddings=[embed_pb2.Embedding(values=v.tolist()) for v in out.vectors],
                                       model=out.model, dimension=out.dimension, usage=usage(out.stats, out.seconds))

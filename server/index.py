"""tandem.v1.IndexService over gRPC: an adapter onto Engine.indexer."""

from __future__ import annotations

from tandem.server.engine import Engine
from tandem.server.engine.index import Collection, Document, Written
from tandem.server.interceptors import call_timings
from tandem.server.messages import deadline, struct_to_dict, usage
from tandem.server.storage import METRIC
from tandem.v1 import index_pb2, index_pb2_grpc


def _info(c: Collection) -> index_pb2.CollectionInfo:
    meta = c.meta
    chunking = index_pb2.Chunking(max_tokens=meta.chunking[0], overlap_tokens=meta.chunking[1]) \
        if meta.chunking else None
    return index_pb2.CollectionInfo(
        collection=meta.name, row_count=c.rows, embedder=meta.embedder, dimension=meta.dimension,
        index_type=meta.index_type, metric_type=METRIC, index_params=meta.index_params, language=meta.language,
        chunking=chunking, documents=c.documents, passages=c.rows,
    )


def _documents(docs) -> list[Document]:
    return [Document(d.id, d.text, struct_to_dict(d.metadata)) for d in docs]


def _timed(w: Written) -> None:
    call_timings().update(queue_seconds=w.stats.queue_seconds, inference_seconds=w.stats.inference_seconds)


class IndexService(index_pb2_grpc.IndexServiceServicer):
    def __init__(self, engine: Engine):
        self.indexer = engine.indexer

    async def CreateCollection(self, request, context):
        c = request.chunking
        out = await self.indexer.create(request.collection, embedder=request.embedder, language=request.language,
                                        chunking=(c.max_tokens, c.overlap_tokens) if request.HasField("chunking")
                                        else None)
        return index_pb2.CreateCollectionResponse(info=_info(out))

    async def DropCollection(self, request, context):
        await self.indexer.drop(request.collection)
        return index_pb2.DropCollectionResponse()

    async def ListCollections(self, request, context):
        return index_pb2.ListCollectionsResponse(collections=await self.indexer.list())

    async def DescribeCollection(self, request, context):
        return index_pb2.DescribeCollectionResponse(info=_info(await self.indexer.describe(request.collection)))

    async def Upsert(self, request, context):
        w = await self.indexer.upsert(request.collection, _documents(request.documents), deadline=deadline(context))
        _timed(w)
        return index_pb2.UpsertResponse(upserted=w.upserted, passages=w.passages, usage=usage(w.stats, w.seconds))

    async def UpsertStream(self, request_iterator, context):
        async def messages():
            async for msg in request_iterator:
                yield msg.collection, _documents(msg.documents)

        w = await self.indexer.upsert_stream(messages(), deadline=deadline(context))
        _timed(w)
        return index_pb2.UpsertStreamResponse(upserted=w.upserted, requests=w.requests, passages=w.passages,
                                              usage=usage(w.stats, w.seconds))

    async def Delete(self, request, context):
        return index_pb2.DeleteResponse(deleted=await self.indexer.delete(request.collection, list(request.ids)))

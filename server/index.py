"""tandem.v1.IndexService over gRPC: an adapter onto Engine.indexer."""

from __future__ import annotations

import asyncio

from tandem.server.access import readable
from tandem.server.engine import Engine
from tandem.server.engine.index import Collection, Document, Written
from tandem.server.engine.transfer import ImportOptions, Record, Row
from tandem.server.errors import invalid
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


def _record_pb(r: Record) -> index_pb2.CollectionRecord:
    return index_pb2.CollectionRecord(
        format_version=r.format_version, collection=r.collection, embedder=r.embedder, dimension=r.dimension,
        language=r.language, documents=r.documents, rows=r.rows,
        chunking=index_pb2.Chunking(max_tokens=r.chunking[0], overlap_tokens=r.chunking[1]) if r.chunking else None)


def _record(r: index_pb2.CollectionRecord) -> Record:
    c = r.chunking
    return Record(r.collection, r.embedder, r.dimension, r.language,
                  (c.max_tokens, c.overlap_tokens) if r.HasField("chunking") and c.max_tokens else None,
                  r.documents, r.rows, r.format_version)


def _rows_pb(page: list[Row]) -> index_pb2.ExportResponse:
    return index_pb2.ExportResponse(rows=[index_pb2.Row(id=r.id, text=r.text, metadata_json=r.metadata_json,
                                                        dense=r.dense, chunk=r.chunk, of=r.of, start=r.start)
                                          for r in page])


def _rows(msg: index_pb2.ImportRequest) -> list[Row]:
    return [Row(r.id, r.text, r.metadata_json, r.dense, r.chunk, r.of, r.start) for r in msg.rows]


def _timed(w: Written) -> None:
    call_timings().update(queue_seconds=w.stats.queue_seconds, inference_seconds=w.stats.inference_seconds)


class IndexService(index_pb2_grpc.IndexServiceServicer):
    def __init__(self, engine: Engine):
        self.indexer, self.transfer = engine.indexer, engine.transfer

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
        return index_pb2.ListCollectionsResponse(collections=readable(await self.indexer.list()))

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

    async def Export(self, request, context):
        record, pages = await self.transfer.export(request.collection, request.page_size)
        yield index_pb2.ExportResponse(record=_record_pb(record))
        async for page in pages:
            yield await asyncio.to_thread(_rows_pb, page)  # a page is thousands of fields: off the loop

    async def Import(self, request_iterator, context):
        messages = request_iterator.__aiter__()
        first = await anext(messages, None)
        if first is None or not first.HasField("record"):
            raise invalid("the first Import message must carry the record (CollectionRecord, as Export sends it)")
        c = first.chunking
        options = ImportOptions(first.collection, first.into_existing, first.re_embed, first.embedder, first.language,
                                (c.max_tokens, c.overlap_tokens) if first.HasField("chunking") else None)

        async def pages():
            yield _rows(first)
            async for msg in messages:
                yield _rows(msg)

        out = await self.transfer.load(_record(first.record), options, pages(), deadline=deadline(context))
        call_timings().update(queue_seconds=out.stats.queue_seconds, inference_seconds=out.stats.inference_seconds)
        return index_pb2.ImportResponse(rows=out.rows, documents=out.documents, requests=out.requests,
                                        re_embedded=out.re_embedded, usage=usage(out.stats, out.seconds))

"""tandem.v1.IndexService: collections and documents. The server embeds documents itself."""

from __future__ import annotations

import asyncio


from server import validation
from server.errors import invalid
from server.interceptors import call_timings
from server.messages import merge_usage, metadata_to_dict, usage
from server.runtime import Runtime
from server.storage import MAX_TEXT_CHARS, METRIC
from tandem.v1 import index_pb2, index_pb2_grpc
from workers import BatchStats


class IndexService(index_pb2_grpc.IndexServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _store(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    def _info(self, meta, rows: int) -> index_pb2.CollectionInfo:
        return index_pb2.CollectionInfo(
            collection=meta.name, row_count=rows, embedder=meta.embedder, dimension=meta.dimension,
            index_type=meta.index_type, metric_type=METRIC, index_params=meta.index_params, language=meta.language,
        )

    async def CreateCollection(self, request, context):
        name = validation.collection(request.collection)
        embedder = self.rt.embedder_batcher(request.embedder).backend
        meta = await self._store(self.rt.store.create, name, embedder.name, embedder.dimension, request.language)
        return index_pb2.CreateCollectionResponse(info=self._info(meta, 0))

    async def DropCollection(self, request, context):
        await self._store(self.rt.store.drop, validation.collection(request.collection))
        return index_pb2.DropCollectionResponse()

    async def ListCollections(self, request, context):
        return index_pb2.ListCollectionsResponse(collections=await self._store(self.rt.store.list))

    async def DescribeCollection(self, request, context):
        meta, rows = await self._store(self.rt.store.describe, validation.collection(request.collection))
        return index_pb2.DescribeCollectionResponse(info=self._info(meta, rows))

    async def _upsert(self, collection: str, documents, context, where: str = "documents"):
        """Validate, embed and store one batch; returns (count, stats). Durable when it returns."""
        rt, cfg = self.rt, self.rt.config
        name = validation.collection(collection)
        validation.count(where, len(documents), cfg.max_documents_per_request)
        max_bytes = min(cfg.max_text_bytes, MAX_TEXT_CHARS)
        seen: set[str] = set()
        rows = []
        for i, d in enumerate(documents):
            at = f"{where}[{i}]"
            validation.doc_id(d.id, at)
            if d.id in seen:
                raise invalid(f"{at}: id {d.id[:80]!r} appears more than once in this request")
            seen.add(d.id)
            validation.text(f"{at}.text", d.text, max_bytes)
            rows.append({"id": d.id, "text": d.text, "metadata": metadata_to_dict(d.metadata, at)})
        meta = rt.store.cached_meta(name) or await self._store(rt.store.meta, name)
        vectors, stats = await rt.collection_embedder(meta).submit(
            [r["text"] for r in rows], deadline=rt.deadline(context))
        for r, v in zip(rows, vectors):
            r["dense"] = v.tolist()
        return name, rows, stats

    async def Upsert(self, request, context):
        start = self.rt.clock()
        name, rows, stats = await self._upsert(request.collection, request.documents, context)
        n = await self._write(name, rows)
        call_timings().update(queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds)
        return index_pb2.UpsertResponse(upserted=n, usage=usage(stats, self.rt.clock() - start))

    async def _write(self, name: str, rows: list[dict]) -> int:
        """Store one acknowledged batch and tell the sealer."""
        n = await self._store(self.rt.store.upsert, name, rows)
        self.rt.wrote(name, n)
        return n

    async def UpsertStream(self, request_iterator, context):
        start = self.rt.clock()
        total, messages, collection = 0, 0, None
        stats = BatchStats(0, 0, 0, 0.0, 0.0)
        pending: asyncio.Task | None = None  # the previous message's store write
        try:
            async for msg in request_iterator:
                messages += 1
                if collection is None:
                    collection = msg.collection
                elif msg.collection and msg.collection != collection:
                    raise invalid(f"message {messages}: collection {msg.collection!r} differs from "
                                  f"{collection!r}; one stream writes one collection")
                if not msg.documents:
                    continue
                # Embed this message while the previous one is written.
                name, rows, s = await self._upsert(collection, msg.documents, context,
                                                   where=f"message {messages}: documents")
                stats = merge_usage(stats, s)
                if pending is not None:
                    total += await pending
                pending = asyncio.ensure_future(self._write(name, rows))
            if pending is not None:
                total += await pending
                pending = None
        finally:
            if pending is not None:
                # Let an in-progress write finish rather than abandoning it half-way.
                await asyncio.shield(pending)
        if messages == 0:
            raise invalid("the stream carried no messages")
        call_timings().update(queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds)
        return index_pb2.UpsertStreamResponse(upserted=total, requests=messages,
                                              usage=usage(stats, self.rt.clock() - start))

    async def Delete(self, request, context):
        name = validation.collection(request.collection)
        validation.count("ids", len(request.ids), self.rt.config.max_documents_per_request)
        ids = [validation.doc_id(x, f"ids[{i}]") for i, x in enumerate(request.ids)]
        await self._store(self.rt.store.meta, name)
        await self._store(self.rt.store.delete, name, ids)
        self.rt.wrote(name, len(ids))
        return index_pb2.DeleteResponse(deleted=len(ids))



"""tandem.v1.IndexService: collections and documents. The server embeds documents itself."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


from server import validation
from server.errors import invalid
from server.interceptors import call_timings
from server.messages import merge_usage, metadata_to_dict, usage
from server.runtime import Runtime
from server.storage import MAX_TEXT_CHARS, METRIC
from tandem.v1 import index_pb2, index_pb2_grpc
from workers import BatchStats


# Shortest passage a chunked collection may ask for: below this, passages lose their context.
MIN_PASSAGE_TOKENS = 16


@dataclass
class Batch:
    """One validated, embedded write: document rows, or documents with their passages (chunked)."""

    meta: object  # server.storage.CollectionMeta
    rows: list[dict]


class IndexService(index_pb2_grpc.IndexServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _store(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    def _info(self, meta, documents: int, rows: int) -> index_pb2.CollectionInfo:
        chunking = index_pb2.Chunking(max_tokens=meta.chunking[0], overlap_tokens=meta.chunking[1]) \
            if meta.chunking else None
        return index_pb2.CollectionInfo(
            collection=meta.name, row_count=rows, embedder=meta.embedder, dimension=meta.dimension,
            index_type=meta.index_type, metric_type=METRIC, index_params=meta.index_params, language=meta.language,
            chunking=chunking, documents=documents, passages=rows,
        )

    async def CreateCollection(self, request, context):
        name = validation.collection(request.collection)
        embedder = self.rt.embedder_batcher(request.embedder).backend
        chunking = None
        if request.HasField("chunking"):
            c = request.chunking
            # [CLS] and [SEP] take two places of the window; a passage longer than the rest would be cut.
            if not MIN_PASSAGE_TOKENS <= c.max_tokens <= embedder.max_length - 2:
                raise invalid(f"chunking.max_tokens is {c.max_tokens}; with embedder {embedder.name!r} it must be "
                              f"{MIN_PASSAGE_TOKENS} to {embedder.max_length - 2} (its window of "
                              f"{embedder.max_length} tokens less two special tokens)")
            if 2 * c.overlap_tokens >= c.max_tokens:
                raise invalid(f"chunking.overlap_tokens is {c.overlap_tokens}; it must be less than half of "
                              f"max_tokens ({c.max_tokens})")
            chunking = (c.max_tokens, c.overlap_tokens)
        meta = await self._store(self.rt.store.create, name, embedder.name, embedder.dimension, request.language,
                                 chunking)
        return index_pb2.CreateCollectionResponse(info=self._info(meta, 0, 0))

    async def DropCollection(self, request, context):
        await self._store(self.rt.store.drop, validation.collection(request.collection))
        return index_pb2.DropCollectionResponse()

    async def ListCollections(self, request, context):
        return index_pb2.ListCollectionsResponse(collections=await self._store(self.rt.store.list))

    async def DescribeCollection(self, request, context):
        meta, documents, rows = await self._store(self.rt.store.describe, validation.collection(request.collection))
        return index_pb2.DescribeCollectionResponse(info=self._info(meta, documents, rows))

    async def _upsert(self, collection: str, documents, context, where: str = "documents"):
        """Validate, embed and store one batch; returns (name, batch, stats). Durable once written."""
        rt, cfg = self.rt, self.rt.config
        name = validation.collection(collection)
        validation.count(where, len(documents), cfg.max_documents_per_request)
        meta = rt.store.cached_meta(name) or await self._store(rt.store.meta, name)
        # A chunked collection stores passages, so a document may exceed one text field.
        max_bytes = cfg.max_text_bytes if meta.chunking else min(cfg.max_text_bytes, MAX_TEXT_CHARS)
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
        embedder = rt.collection_embedder(meta)
        if not meta.chunking:
            vectors, stats = await embedder.submit([r["text"] for r in rows], deadline=rt.deadline(context))
            for r, v in zip(rows, vectors):
                r["dense"] = v.tolist()
            return name, Batch(meta, rows), stats
        splitter = rt.splitter(embedder)
        spans = await asyncio.to_thread(lambda: [splitter.split(r["text"], *meta.chunking) for r in rows])
        texts = [w.of(r["text"]) for r, ws in zip(rows, spans) for w in ws]
        vectors, stats = await embedder.submit(texts, deadline=rt.deadline(context))
        it = iter(zip(texts, vectors))
        docs = [{"id": r["id"], "metadata": r["metadata"],
                 "passages": [{"text": t, "start": w.start, "dense": v.tolist()} for w, (t, v) in zip(ws, it)]}
                for r, ws in zip(rows, spans)]
        return name, Batch(meta, docs), stats

    async def Upsert(self, request, context):
        start = self.rt.clock()
        name, batch, stats = await self._upsert(request.collection, request.documents, context)
        n, passages = await self._write(name, batch)
        call_timings().update(queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds)
        return index_pb2.UpsertResponse(upserted=n, passages=passages, usage=usage(stats, self.rt.clock() - start))

    async def _write(self, name: str, batch: "Batch") -> tuple[int, int]:
        """Store one acknowledged batch and tell the sealer; returns (documents, passages)."""
        if batch.meta.chunking:
            n, passages = await self._store(self.rt.store.upsert_documents, name, batch.rows)
        else:
            n = passages = await self._store(self.rt.store.upsert, name, batch.rows)
        self.rt.wrote(name, passages)
        return n, passages

    async def UpsertStream(self, request_iterator, context):
        start = self.rt.clock()
        total, passages, messages, collection = 0, 0, 0, None
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
                name, batch, s = await self._upsert(collection, msg.documents, context,
                                                    where=f"message {messages}: documents")
                stats = merge_usage(stats, s)
                if pending is not None:
                    n, p = await pending
                    total, passages = total + n, passages + p
                pending = asyncio.ensure_future(self._write(name, batch))
            if pending is not None:
                n, p = await pending
                total, passages = total + n, passages + p
                pending = None
        finally:
            if pending is not None:
                # Let an in-progress write finish rather than abandoning it half-way.
                await asyncio.shield(pending)
        if messages == 0:
            raise invalid("the stream carried no messages")
        call_timings().update(queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds)
        return index_pb2.UpsertStreamResponse(upserted=total, requests=messages, passages=passages,
                                              usage=usage(stats, self.rt.clock() - start))

    async def Delete(self, request, context):
        name = validation.collection(request.collection)
        validation.count("ids", len(request.ids), self.rt.config.max_documents_per_request)
        ids = [validation.doc_id(x, f"ids[{i}]") for i, x in enumerate(request.ids)]
        await self._store(self.rt.store.meta, name)
        await self._store(self.rt.store.delete, name, ids)
        self.rt.wrote(name, len(ids))
        return index_pb2.DeleteResponse(deleted=len(ids))



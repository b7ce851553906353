"""Index: collections and documents. The server embeds documents itself, and a write is durable once answered."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

from tandem.server import tracing, validation
from tandem.server.errors import invalid
from tandem.server.runtime import Runtime
from tandem.server.storage import MAX_TEXT_CHARS, CollectionMeta, StoreFailed
from tandem.workers import BatchStats

# Shortest passage a chunked collection may ask for: below this, passages lose their context.
MIN_PASSAGE_TOKENS = 16
NO_WORK = BatchStats(0, 0, 0, 0.0, 0.0)


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: dict


@dataclass(frozen=True)
class Collection:
    meta: CollectionMeta
    documents: int = 0
    rows: int = 0  # passages in a chunked collection, documents otherwise


@dataclass(frozen=True)
class Written:
    upserted: int  # documents
    passages: int  # rows written (documents, when not chunked)
    stats: BatchStats  # the embedder's work
    seconds: float
    requests: int = 1  # messages of a stream


@dataclass
class _Batch:
    """One validated, embedded write: document rows, or documents with their passages (chunked)."""

    name: str
    meta: CollectionMeta
    rows: list[dict]


def merge(a: BatchStats, b: BatchStats) -> BatchStats:
    return BatchStats(a.items + b.items, a.tokens + b.tokens, a.truncated + b.truncated,
                      max(a.queue_seconds, b.queue_seconds), a.inference_seconds + b.inference_seconds)


class Indexer:
    def __init__(self, rt: Runtime):
        self.rt = rt

    # -- collections -----------------------------------------------------------

    async def create(self, collection: str, *, embedder: str = "", language: str = "",
                     chunking: tuple[int, int] | None = None) -> Collection:
        """chunking: (max_tokens, overlap_tokens) to store passages, or None to store whole documents."""
        name = validation.collection(collection)
        model = self.rt.embedder_batcher(embedder).backend
        if chunking is not None:
            max_tokens, overlap = chunking
            # [CLS] and [SEP] take two places of the window; a passage longer than the rest would be cut.
            if not MIN_PASSAGE_TOKENS <= max_tokens <= model.max_length - 2:
                raise invalid(f"chunking.max_tokens is {max_tokens}; with embedder {model.name!r} it must be "
                              f"{MIN_PASSAGE_TOKENS} to {model.max_length - 2} (its window of "
                              f"{model.max_length} tokens less two special tokens)")
            if 2 * overlap >= max_tokens:
                raise invalid(f"chunking.overlap_tokens is {overlap}; it must be less than half of "
                              f"max_tokens ({max_tokens})")
        meta = await asyncio.to_thread(self.rt.store.create, name, model.name, model.dimension, language, chunking)
        return Collection(meta)

    async def drop(self, collection: str) -> None:
        await asyncio.to_thread(self.rt.store.drop, validation.collection(collection))

    async def list(self) -> list[str]:
        return await asyncio.to_thread(self.rt.store.list)

    async def describe(self, collection: str) -> Collection:
        meta, documents, rows = await asyncio.to_thread(self.rt.store.describe, validation.collection(collection))
        return Collection(meta, documents, rows)

    # -- documents -------------------------------------------------------------

    async def upsert(self, collection: str, documents: list[Document], *,
                     deadline: float | None = None) -> Written:
        start = self.rt.clock()
        batch, stats = await self._embed(collection, documents, deadline)
        n, passages = await self._write(batch)
        return Written(n, passages, stats, self.rt.clock() - start)

    async def upsert_stream(self, messages: AsyncIterator[tuple[str, list[Document]]], *,
                            deadline: float | None = None) -> Written:
        """Many batches into one collection: each message is embedded while the one before is written.
        Every message up to a failure is stored; the failure names its message."""
        start = self.rt.clock()
        total, passages, count, collection = 0, 0, 0, None
        stats = NO_WORK
        pending: asyncio.Task | None = None  # the previous message's store write
        try:
            async for name, documents in messages:
                count += 1
                if collection is None:
                    collection = name
                elif name and name != collection:
                    raise invalid(f"message {count}: collection {name!r} differs from "
                                  f"{collection!r}; one stream writes one collection")
                if not documents:
                    continue
                batch, s = await self._embed(collection, documents, deadline, where=f"message {count}: documents")
                stats = merge(stats, s)
                if pending is not None:
                    n, p = await pending
                    total, passages = total + n, passages + p
                pending = asyncio.ensure_future(self._write(batch))
            if pending is not None:
                n, p = await pending
                total, passages = total + n, passages + p
                pending = None
        finally:
            if pending is not None:
                # Let an in-progress write finish rather than abandoning it half-way.
                await asyncio.shield(pending)
        if count == 0:
            raise invalid("the stream carried no messages")
        return Written(total, passages, stats, self.rt.clock() - start, requests=count)

    async def delete(self, collection: str, ids: list[str]) -> int:
        name = validation.collection(collection)
        validation.count("ids", len(ids), self.rt.config.max_documents_per_request)
        ids = [validation.doc_id(x, f"ids[{i}]") for i, x in enumerate(ids)]
        await asyncio.to_thread(self.rt.store.current, name)
        await asyncio.to_thread(self.rt.store.delete, name, ids)
        self.rt.wrote(name, len(ids))
        return len(ids)

    async def _embed(self, collection: str, documents: list[Document], deadline: float | None,
                     where: str = "documents") -> tuple[_Batch, BatchStats]:
        """Validate and embed one batch."""
        rt, cfg = self.rt, self.rt.config
        with tracing.stage("validate"):
            name = validation.collection(collection)
            validation.count(where, len(documents), cfg.max_documents_per_request)
            meta = rt.store.cached_current(name) or await asyncio.to_thread(rt.store.current, name)
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
                validation.metadata(d.metadata, at)
                rows.append({"id": d.id, "text": d.text, "metadata": d.metadata})
        embedder = rt.collection_embedder(meta)
        attributes = {"tandem.collection": name, "tandem.model": embedder.backend.name, "tandem.texts": len(rows)}
        if not meta.chunking:
            with tracing.stage("embed", attributes):
                vectors, stats = await embedder.submit([r["text"] for r in rows], deadline=deadline)
            for r, v in zip(rows, vectors):
                r["dense"] = v.tolist()
            return _Batch(name, meta, rows), stats
        with tracing.stage("embed", attributes) as span:
            splitter = rt.splitter(embedder)
            spans = await asyncio.to_thread(lambda: [splitter.split(r["text"], *meta.chunking) for r in rows])
            texts = [w.of(r["text"]) for r, ws in zip(rows, spans) for w in ws]
            if span.is_recording():
                span.set_attribute("tandem.passages", len(texts))
            vectors, stats = await embedder.submit(texts, deadline=deadline)
        it = iter(zip(texts, vectors))
        docs = [{"id": r["id"], "metadata": r["metadata"],
                 "passages": [{"text": t, "start": w.start, "dense": v.tolist()} for w, (t, v) in zip(ws, it)]}
                for r, ws in zip(rows, spans)]
        return _Batch(name, meta, docs), stats

    async def _write(self, batch: _Batch) -> tuple[int, int]:
        """Store one acknowledged batch and tell the sealer; returns (documents, passages)."""
        store = self.rt.store
        with tracing.stage("write", {"db.system.name": "milvus", "db.operation.name": "upsert",
                                     "db.collection.name": batch.name, "tandem.documents": len(batch.rows)}):
            # Shared with other replicas (a Milvus server), the collection may have been created again while the
            # batch was embedded: never write rows made for the old one (its embedder, its schema).
            if not store.embedded:  # one process owns the embedded engine: nothing to check, no thread hop
                await asyncio.to_thread(store.check_same, batch.name, batch.meta)
            try:
                if batch.meta.chunking:
                    n, passages = await asyncio.to_thread(store.upsert_documents, batch.name, batch.rows)
                else:
                    n = passages = await asyncio.to_thread(store.upsert, batch.name, batch.rows)
            except StoreFailed:  # re-created between the check and the write: say so rather than INTERNAL
                await asyncio.to_thread(store.check_same, batch.name, batch.meta)
                raise
        self.rt.wrote(batch.name, passages)
        return n, passages

"""`tandem.AsyncClient`: the asyncio client (grpc.aio), with the same methods as `tandem.Client`."""

from __future__ import annotations

import asyncio
import time
from typing import Iterable

import grpc

from tandem import messages as m
from tandem.channel import Connection, Retry, aio_channel, pushback
from tandem.errors import TandemError
from tandem.v1 import index_pb2, info_pb2


class AsyncClient(Connection):
    def __init__(self, target: str = "127.0.0.1:50051", *, token: str | None = None, tls: bool = False,
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 timeout: float = 60.0, retry: Retry | None = None,
                 batch_size: int = 64):
        self._connect(aio_channel, target, token, tls, tls_ca, timeout, retry, batch_size, tls_cert, tls_key)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _call(self, rpc, request, *, idempotent: bool, timeout: float | None = None, name: str = ""):
        deadline = time.monotonic() + (timeout or self.timeout)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await rpc(request() if callable(request) else request, timeout=max(remaining, 0.001),
                                 metadata=self._md)
            except grpc.RpcError as exc:
                wait = self.retry.delay(exc.code(), idempotent, attempt, deadline - time.monotonic(),
                                        pushback(exc))
                if wait is None:
                    raise TandemError.from_rpc(exc, name) from None
                await asyncio.sleep(wait)
                attempt += 1

    async def create_collection(self, name: str, embedder: str | None = None, *, language: str | None = None,
                                chunk_tokens: int | None = None, chunk_overlap: int = 0,
                                timeout: float | None = None):
        req = m.create_collection(name, embedder, language, chunk_tokens, chunk_overlap)
        return (await self._call(self._index.CreateCollection, req, idempotent=False, timeout=timeout,
                                 name="CreateCollection")).info

    async def drop_collection(self, name: str, *, timeout: float | None = None) -> None:
        await self._call(self._index.DropCollection, index_pb2.DropCollectionRequest(collection=name),
                         idempotent=False, timeout=timeout, name="DropCollection")

    async def collections(self, *, timeout: float | None = None) -> list[str]:
        r = await self._call(self._index.ListCollections, index_pb2.ListCollectionsRequest(), idempotent=True,
                             timeout=timeout, name="ListCollections")
        return list(r.collections)

    async def describe(self, name: str, *, timeout: float | None = None):
        return (await self._call(self._index.DescribeCollection,
                                 index_pb2.DescribeCollectionRequest(collection=name), idempotent=True,
                                 timeout=timeout, name="DescribeCollection")).info

    async def upsert(self, collection: str, documents: Iterable, *, batch_size: int | None = None,
                     timeout: float | None = None) -> int:
        parts = list(m.batches(documents, batch_size or self.batch_size))
        if len(parts) <= 1:
            r = await self._call(self._index.Upsert, index_pb2.UpsertRequest(
                collection=collection, documents=parts[0] if parts else []), idempotent=True, timeout=timeout,
                name="Upsert")
            return r.upserted

        def stream():
            return iter([index_pb2.UpsertStreamRequest(collection=collection, documents=p) for p in parts])

        r = await self._call(self._index.UpsertStream, stream, idempotent=True, name="UpsertStream",
                             timeout=timeout or max(self.timeout, 600.0))
        return r.upserted

    async def delete(self, collection: str, ids: Iterable[str], *, timeout: float | None = None) -> int:
        r = await self._call(self._index.Delete, index_pb2.DeleteRequest(collection=collection, ids=list(ids)),
                             idempotent=True, timeout=timeout, name="Delete")
        return r.deleted

    async def search(self, collection: str, query: str, top_n: int = 10, mode: str = "dense", filter=None,
                     rerank=None, *, recall_k: int = 0, require_rerank: bool = False, exclude_text: bool = False,
                     rerank_depth: int = 0, max_tokens_per_doc: int = 0,
                     timeout: float | None = None) -> m.SearchResults:
        req = m.search(collection, query, top_n, mode, filter, rerank, recall_k, require_rerank, exclude_text,
                       rerank_depth, max_tokens_per_doc)
        return m.SearchResults(await self._call(self._search.Search, req, idempotent=True, timeout=timeout,
                                                name="Search"))

    async def rerank(self, query: str, documents: list[str], top_n: int = 0, model: str | None = None, *,
                     raw_scores: bool = False, chunk: bool = False, return_documents: bool = False,
                     timeout: float | None = None) -> m.RerankResults:
        req = m.rerank(query, documents, top_n, model, raw_scores, chunk, return_documents)
        return m.RerankResults(await self._call(self._rerank.Rerank, req, idempotent=True, timeout=timeout,
                                                 name="Rerank"))

    async def embed(self, texts: list[str], model: str | None = None, *,
                    timeout: float | None = None) -> list[list[float]]:
        return m.vectors(await self._call(self._embed.Embed, m.embed(texts, model), idempotent=True,
                                          timeout=timeout, name="Embed"))

    async def info(self, *, timeout: float | None = None):
        return await self._call(self._info.Info, info_pb2.InfoRequest(), idempotent=True, timeout=timeout,
                                name="Info")

"""`tandem.Client`: the blocking Python client.

    from tandem import Client, F
    with Client("localhost:50051") as c:
        c.create_collection("docs")
        c.upsert("docs", [{"id": "1", "text": "...", "metadata": {"year": 2024}}])
        for hit in c.search("docs", "query", top_n=5, filter=F("year") >= 2020):
            print(hit.id, hit.score, hit.text[:80])

Every call has a deadline (`timeout`, per call or from the constructor), is retried with backoff on
UNAVAILABLE (and on RESOURCE_EXHAUSTED when it is idempotent), and raises `TandemError` on failure.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable

import grpc

from tandem import messages as m
from tandem.channel import Connection, Retry, pushback, sync_channel
from tandem.errors import TandemError
from tandem.v1 import index_pb2, info_pb2


class Client(Connection):
    def __init__(self, target: str = "127.0.0.1:50051", *, token: str | None = None, tls: bool = False,
                 tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 timeout: float = 60.0, retry: Retry | None = None,
                 batch_size: int = 64):
        self._connect(sync_channel, target, token, tls, tls_ca, timeout, retry, batch_size, tls_cert, tls_key)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, rpc, request, *, idempotent: bool, timeout: float | None = None, name: str = ""):
        """One RPC with its deadline; `request` may be a function returning a fresh request iterator."""
        deadline = time.monotonic() + (timeout or self.timeout)
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                return rpc(request() if callable(request) else request, timeout=max(remaining, 0.001),
                           metadata=self._md)
            except grpc.RpcError as exc:
                wait = self.retry.delay(exc.code(), idempotent, attempt, deadline - time.monotonic(),
                                        pushback(exc))
                if wait is None:
                    raise TandemError.from_rpc(exc, name) from None
                time.sleep(wait)
                attempt += 1

    # -- collections -------------------------------------------------------------------------------------------

    def create_collection(self, name: str, embedder: str | None = None, *, language: str | None = None,
                          chunk_tokens: int | None = None, chunk_overlap: int = 0, timeout: float | None = None):
        """Returns the new collection's CollectionInfo. Not retried on overload: it is not idempotent."""
        req = m.create_collection(name, embedder, language, chunk_tokens, chunk_overlap)
        return self._call(self._index.CreateCollection, req, idempotent=False, timeout=timeout,
                          name="CreateCollection").info

    def drop_collection(self, name: str, *, timeout: float | None = None) -> None:
        self._call(self._index.DropCollection, index_pb2.DropCollectionRequest(collection=name), idempotent=False,
                   timeout=timeout, name="DropCollection")

    def collections(self, *, timeout: float | None = None) -> list[str]:
        return list(self._call(self._index.ListCollections, index_pb2.ListCollectionsRequest(), idempotent=True,
                               timeout=timeout, name="ListCollections").collections)

    def describe(self, name: str, *, timeout: float | None = None):
        return self._call(self._index.DescribeCollection, index_pb2.DescribeCollectionRequest(collection=name),
                          idempotent=True, timeout=timeout, name="DescribeCollection").info

    # -- documents ---------------------------------------------------------------------------------------------

    def upsert(self, collection: str, documents: Iterable, *, batch_size: int | None = None,
               progress: bool = False, timeout: float | None = None) -> int:
        """Insert or replace documents (dicts with id, text and metadata, or `Document`s); returns how many.
        One batch is one Upsert; more go over one UpsertStream (see `upsert_stream`)."""
        docs = list(documents)
        size = batch_size or self.batch_size
        if len(docs) <= size:
            req = index_pb2.UpsertRequest(collection=collection, documents=[m.document(d) for d in docs])
            return self._call(self._index.Upsert, req, idempotent=True, timeout=timeout, name="Upsert").upserted
        return self.upsert_stream(collection, lambda: docs, batch_size=size, progress=progress,
                                  total=len(docs), timeout=timeout).upserted

    def upsert_batch(self, collection: str, documents: Iterable, *, timeout: float | None = None):
        """One Upsert call, returned whole: the UpsertResponse counts the documents and passages stored."""
        req = index_pb2.UpsertRequest(collection=collection, documents=[m.document(d) for d in documents])
        return self._call(self._index.Upsert, req, idempotent=True, timeout=timeout, name="Upsert")

    def upsert_stream(self, collection: str, documents: Callable[[], Iterable], *, batch_size: int | None = None,
                      progress: bool = False, total: int | None = None, timeout: float | None = None):
        """Stream `documents()` in batches over UpsertStream; returns the UpsertStreamResponse (counts of
        documents, passages and messages). Upserts are idempotent by id, so when the stream breaks (server
        restarting) it is sent again whole: `documents` is a function so that it can be read again."""
        size = batch_size or self.batch_size

        def stream():
            from tqdm import tqdm

            with tqdm(total=total, unit="doc", disable=not progress, file=sys.stderr) as bar:
                for p in m.batches(documents(), size):
                    yield index_pb2.UpsertStreamRequest(collection=collection, documents=p)
                    bar.update(len(p))

        return self._call(self._index.UpsertStream, stream, idempotent=True, name="UpsertStream",
                          timeout=timeout or max(self.timeout, 24 * 3600.0))

    def delete(self, collection: str, ids: Iterable[str], *, timeout: float | None = None) -> int:
        return self._call(self._index.Delete, index_pb2.DeleteRequest(collection=collection, ids=list(ids)),
                          idempotent=True, timeout=timeout, name="Delete").deleted

    # -- export and import (files: tandem/transfer.py) ------------------------------------------------------------

    def export(self, collection: str, *, page_size: int = 0, timeout: float | None = None):
        """(CollectionRecord, iterator of pages of `Row`s) of the whole collection, vectors included. The
        stream is not retried once rows flow: read it to the end, or export again."""
        stream = self._index.Export(index_pb2.ExportRequest(collection=collection, page_size=page_size),
                                    timeout=timeout or max(self.timeout, 24 * 3600.0), metadata=self._md)
        try:
            first = next(stream)
        except grpc.RpcError as exc:
            raise TandemError.from_rpc(exc, "Export") from None

        def pages():
            try:
                for msg in stream:
                    yield msg.rows
            except grpc.RpcError as exc:
                raise TandemError.from_rpc(exc, "Export") from None
            finally:
                stream.cancel()  # a reader that stops early frees the server's iterator

        return first.record, pages()

    def import_rows(self, record, pages: Callable[[], Iterable], *, collection: str = "",
                    into_existing: bool = False, re_embed: bool = False, embedder: str = "", language: str = "",
                    chunking: tuple[int, int] | None = None, timeout: float | None = None):
        """One Import call: `record` (a CollectionRecord) then the rows of `pages()`, a function returning an
        iterable of lists of `Row`s, so that a broken stream can be sent again (writes are upserts by id).
        `chunking`: None keeps the recorded one, (0, 0) stores whole documents. Returns the ImportResponse."""
        head = dict(record=record, collection=collection, into_existing=into_existing, re_embed=re_embed,
                    embedder=embedder, language=language,
                    chunking=index_pb2.Chunking(max_tokens=chunking[0], overlap_tokens=chunking[1])
                    if chunking is not None else None)

        attempts = [0]

        def stream():
            # A retry (after UNAVAILABLE) may find the collection its first attempt made: write into it.
            attempts[0] += 1
            if attempts[0] > 1:
                head["into_existing"] = True
            first = True
            for rows in pages():
                yield index_pb2.ImportRequest(**head, rows=rows) if first else index_pb2.ImportRequest(rows=rows)
                first = False
            if first:
                yield index_pb2.ImportRequest(**head)

        return self._call(self._index.Import, stream, idempotent=True, name="Import",
                          timeout=timeout or max(self.timeout, 24 * 3600.0))

    # -- retrieval ---------------------------------------------------------------------------------------------

    def search(self, collection: str, query: str, top_n: int = 10, mode: str = "dense", filter=None, rerank=None,
               *, recall_k: int = 0, require_rerank: bool = False, exclude_text: bool = False,
               rerank_depth: int = 0, max_tokens_per_doc: int = 0,
               timeout: float | None = None) -> m.SearchResults:
        """Hits best first. `rerank`: None (server default: on), False, a reranker name, or a cascade
        [(model, keep), ...]. `filter`: built with `tandem.F`, or a {key: value} dict. `rerank_depth` and
        `max_tokens_per_doc`: how many candidates the reranker scores and how much of each it reads (0: the
        server's defaults, in `info().limits`)."""
        req = m.search(collection, query, top_n, mode, filter, rerank, recall_k, require_rerank, exclude_text,
                       rerank_depth, max_tokens_per_doc)
        return m.SearchResults(self._call(self._search.Search, req, idempotent=True, timeout=timeout,
                                          name="Search"))

    def rerank(self, query: str, documents: list[str], top_n: int = 0, model: str | None = None, *,
               raw_scores: bool = False, chunk: bool = False, return_documents: bool = False,
               timeout: float | None = None) -> m.RerankResults:
        """Results best first, each with the document's index in `documents`. `chunk`: score a long document by
        its best window instead of its opening."""
        req = m.rerank(query, documents, top_n, model, raw_scores, chunk, return_documents)
        return m.RerankResults(self._call(self._rerank.Rerank, req, idempotent=True, timeout=timeout,
                                           name="Rerank"))

    def embed(self, texts: list[str], model: str | None = None, *, timeout: float | None = None) -> list[list[float]]:
        return m.vectors(self._call(self._embed.Embed, m.embed(texts, model), idempotent=True, timeout=timeout,
                                    name="Embed"))

    def info(self, *, timeout: float | None = None):
        return self._call(self._info.Info, info_pb2.InfoRequest(), idempotent=True, timeout=timeout, name="Info")

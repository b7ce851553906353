"""tandem.v1.RerankService: score caller-supplied documents with the cross-encoder."""

from __future__ import annotations

import asyncio

from server import validation
from server.chunking import heads
from server.errors import invalid
from server.interceptors import call_timings
from server.messages import sigmoid, usage
from server.runtime import Runtime
from tandem.v1 import rerank_pb2, rerank_pb2_grpc


# Tokens a window overlaps the previous one by, so a sentence on a boundary is read whole in one of them.
WINDOW_OVERLAP = 32
MIN_WINDOW_TOKENS = 32


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
        if request.long_documents not in rerank_pb2.LongDocuments.values():
            raise invalid(f"long_documents {request.long_documents} is not a LongDocuments value; use "
                          "LONG_DOCUMENTS_TRUNCATE or LONG_DOCUMENTS_CHUNK")
        chunk = request.long_documents == rerank_pb2.LONG_DOCUMENTS_CHUNK
        docs = request.documents
        if request.max_tokens_per_doc:  # Cohere's max_tokens_per_doc: read only each document's opening
            docs = await asyncio.to_thread(heads, rt.splitter(batcher), list(docs), request.max_tokens_per_doc)
        if not chunk:
            logits, stats = await batcher.submit([(request.query, d) for d in docs], deadline=rt.deadline(context))
            windows = None
        else:
            spans = await self._windows(batcher, request.query, list(docs))
            pairs = [(request.query, w.of(d)) for d, ws in zip(docs, spans) for w in ws]
            scored, stats = await batcher.submit(pairs, deadline=rt.deadline(context))
            logits, windows, it = [], [], iter(scored)
            for ws in spans:  # each document's score is its best window's
                mine = [next(it) for _ in ws]
                k = max(range(len(ws)), key=mine.__getitem__)
                logits.append(mine[k])
                windows.append(ws[k])
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
        if windows is not None:
            for r in results:
                w = windows[r.index]
                r.window_offset, r.window_length = w.start, w.end - w.start
        u = usage(stats, 0.0)
        if chunk:
            u.windows = stats.items
        call_timings().update(queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds)
        u.total_seconds = rt.clock() - start
        return rerank_pb2.RerankResponse(results=results, model=batcher.backend.name, usage=u)

    async def _windows(self, batcher, query: str, docs: list[str]) -> list:
        """Each document as windows that fit beside the query in the model's window (LONG_DOCUMENTS_CHUNK)."""
        cfg, backend = self.rt.config, batcher.backend
        splitter = self.rt.splitter(batcher)

        def split():
            room = backend.max_length - splitter.count(query) - splitter.special_tokens(pair=True)
            if room < MIN_WINDOW_TOKENS:
                raise invalid(f"the query takes {backend.max_length - room} of the {backend.max_length} tokens "
                              f"that {backend.name!r} reads; chunking needs room for {MIN_WINDOW_TOKENS} document "
                              "tokens beside it. Shorten the query, or use LONG_DOCUMENTS_TRUNCATE.")
            out = [splitter.split(d, room, min(WINDOW_OVERLAP, room // 4)) for d in docs]
            for i, ws in enumerate(out):
                if len(ws) > cfg.max_windows_per_document:
                    raise invalid(f"documents[{i}] splits into {len(ws)} windows of at most {room} tokens beside "
                                  f"this query; the limit is {cfg.max_windows_per_document} per document "
                                  "(--max-windows-per-document). Send a shorter document, or split it yourself.")
            return out

        return await asyncio.to_thread(split)


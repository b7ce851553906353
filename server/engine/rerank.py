"""Rerank: score caller-supplied documents against a query with a cross-encoder, best first.

The engine owns what turns logits into an answer: long documents cut to their opening or split into windows
(each document scored by its best window), the sigmoid, the sort and `top_n`.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from tandem.server import tracing, validation
from tandem.server.chunking import Window, heads
from tandem.server.errors import invalid
from tandem.server.runtime import Runtime
from tandem.workers import Batcher, BatchStats

# Tokens a window overlaps the previous one by, so a sentence on a boundary is read whole in one of them.
WINDOW_OVERLAP = 32
MIN_WINDOW_TOKENS = 32


def sigmoid(x: float) -> float:
    """A logit as a relevance score in (0, 1), without overflow for large |x|."""
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class Scored:
    index: int  # the document's position in the request
    score: float  # sigmoid of the logit, or the logit itself when raw
    window: Window | None = None  # chunked: the span of the document that scored best


@dataclass(frozen=True)
class Ranking:
    results: list[Scored]  # best first, cut to top_n
    model: str
    stats: BatchStats
    windows: int  # pairs scored when chunking (0 otherwise)
    seconds: float


class Reranker:
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def score(self, query: str, documents: list[str], *, model: str = "", top_n: int = 0,
                    chunk: bool = False, raw: bool = False, max_tokens_per_doc: int = 0,
                    deadline: float | None = None) -> Ranking:
        """`documents` ranked by relevance to `query`. chunk: score every window of a long document (else
        truncate); max_tokens_per_doc: read only each document's opening; deadline: absolute loop time."""
        rt, cfg = self.rt, self.rt.config
        start = rt.clock()
        with tracing.stage("validate"):
            batcher = rt.reranker_batcher(model)
            validation.text("query", query, cfg.max_text_bytes)
            validation.count("documents", len(documents), cfg.max_documents_per_request)
            for i, d in enumerate(documents):
                validation.text(f"documents[{i}]", d, cfg.max_text_bytes, allow_empty=True)
            if top_n > cfg.max_documents_per_request:
                raise invalid(f"top_n is {top_n}; it can be at most {cfg.max_documents_per_request} "
                              "(0 returns every document)")
        with tracing.stage("rerank", {"tandem.model": batcher.backend.name, "tandem.documents": len(documents),
                                      "tandem.top_n": top_n, "tandem.chunk": chunk}) as span:
            docs = list(documents)
            if max_tokens_per_doc:  # Cohere's max_tokens_per_doc: read only each document's opening
                docs = await asyncio.to_thread(heads, rt.splitter(batcher), docs, max_tokens_per_doc)
            if chunk:
                logits, windows, stats = await self._best_windows(batcher, query, docs, deadline)
            else:
                logits, stats = await batcher.submit([(query, d) for d in docs], deadline=deadline)
                windows = None
            if span.is_recording():
                span.set_attributes({"tandem.pairs": stats.items, "tandem.tokens": stats.tokens})
        order = sorted(range(len(logits)), key=lambda i: -logits[i])
        if top_n:
            order = order[:top_n]
        results = [Scored(i, logits[i] if raw else sigmoid(logits[i]), windows[i] if windows else None)
                   for i in order]
        return Ranking(results, batcher.backend.name, stats, stats.items if chunk else 0, rt.clock() - start)

    async def _best_windows(self, batcher: Batcher, query: str, docs: list[str], deadline: float | None):
        """Every window of every document scored; each document's logit is its best window's."""
        spans = await self._windows(batcher, query, docs)
        pairs = [(query, w.of(d)) for d, ws in zip(docs, spans) for w in ws]
        scored, stats = await batcher.submit(pairs, deadline=deadline)
        logits, windows, it = [], [], iter(scored)
        for ws in spans:
            mine = [next(it) for _ in ws]
            k = max(range(len(ws)), key=mine.__getitem__)
            logits.append(mine[k])
            windows.append(ws[k])
        return logits, windows, stats

    async def _windows(self, batcher: Batcher, query: str, docs: list[str]) -> list[list[Window]]:
        """Each document as windows that fit beside the query in the model's window."""
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

"""Embeddings in TEI's `/embed` and OpenAI's `/v1/embeddings` dialects, over `Engine.embedder`."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from tandem.server.engine import Engine
from tandem.server.errors import invalid
from tandem.server.http import errors
from tandem.server.http.calls import call, json
from tandem.server.http.models import OpenAIEmbeddings, OpenAIEmbeddingsResponse, TeiEmbed
from tandem.server.http.routes import Route


class EmbedRoutes:
    def __init__(self, engine: Engine):
        self.engine = engine

    async def tei(self, request: Request, body: TeiEmbed):
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        out = await call(request, self.engine.embedder.embed(texts), errors.TEI)
        if isinstance(out, Response):  # the error, in the dialect's envelope
            return out
        return json(np.asarray(out.vectors, dtype=np.float32).tolist())

    async def openai(self, request: Request, body: OpenAIEmbeddings):
        out = await call(request, self._openai(body), errors.OPENAI)
        return json(out) if isinstance(out, dict) else out

    async def _openai(self, body: OpenAIEmbeddings) -> dict:
        x = body.input
        # Token ids are decoded with the tokenizer: a large batch of them would hold the event loop.
        ids = isinstance(x, list) and bool(x) and not isinstance(x[0], str)
        texts = await asyncio.to_thread(self._texts, body) if ids else self._texts(body)
        out = await self.engine.embedder.embed(texts, model=body.model)
        if body.dimensions is not None and body.dimensions != out.dimension:
            raise invalid(f"dimensions is {body.dimensions}; {out.model!r} makes {out.dimension}-dimensional "
                          "vectors and Tandem does not shorten them (leave dimensions out)")
        vectors = np.asarray(out.vectors, dtype=np.float32)
        if body.encoding_format == "base64":  # little-endian float32, as the openai SDK decodes it
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            data = vectors.tolist()
        return {"object": "list", "model": out.model,
                     "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(data)],
                     "usage": {"prompt_tokens": out.stats.tokens, "total_tokens": out.stats.tokens}}

    def _texts(self, body: OpenAIEmbeddings) -> list[str]:
        """`input` as texts. Token ids are the embedder's own (as TEI reads them), decoded with its tokenizer:
        ids from another tokenizer (tiktoken's) mean other words, so LangChain needs check_embedding_ctx_length=False."""
        x = body.input
        if isinstance(x, str):
            return [x]
        if not x:
            return []
        if isinstance(x[0], str):
            return list(x)
        tokenizer = self.engine.rt.embedder_batcher(body.model).backend.model.tokenizer
        rows = [x] if isinstance(x[0], int) else x
        vocab = len(tokenizer)
        for i, row in enumerate(rows):
            bad = next((t for t in row if not 0 <= t < vocab), None)
            if bad is not None:
                raise invalid(f"input[{i}] holds token id {bad}, outside the embedder's vocabulary of {vocab}; "
                              "send text (token ids are read with the embedder's own tokenizer)")
        return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]

    def routes(self) -> list[Route]:
        return [
            Route("/embed", self.tei, errors.TEI, "TEI embed: unit-length vectors as a bare array",
                  response=list[list[float]]),
            Route("/v1/embeddings", self.openai, errors.OPENAI, "OpenAI embeddings (float or base64)",
                  response=OpenAIEmbeddingsResponse),
        ]

"""Rerank in the dialects RAG frameworks call: Cohere v2, Cohere v1 / Jina, TEI, and the vLLM / Infinity `/rerank`.

Each adapts its body to `Engine.reranker.score` and the Ranking back to its own shape; the engine sorts, cuts
`top_n` and applies the sigmoid.
"""

from __future__ import annotations

from typing import Union

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tandem.server.engine import Engine
from tandem.server.http import errors
from tandem.server.http.calls import call, json, request_id
from tandem.server.http.errors import Failure
from tandem.server.http.models import (CohereV2Rerank, CohereV2RerankResponse, DocumentsRerank,
                                       DocumentsRerankResponse, TeiRank, TeiRerank)
from tandem.server.http.routes import Route, validation_failure


def _texts(documents) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in documents]


class RerankRoutes:
    def __init__(self, engine: Engine):
        self.engine = engine

    async def cohere_v2(self, request: Request, body: CohereV2Rerank):
        out = await call(request, self.engine.reranker.score(
            body.query, body.documents, model=body.model, top_n=body.top_n or 0,
            max_tokens_per_doc=body.max_tokens_per_doc or 0), errors.COHERE)
        if isinstance(out, Response):  # the error, in the dialect's envelope
            return out
        return json({"id": request_id(),
                     "results": [{"index": r.index, "relevance_score": r.score} for r in out.results],
                     "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1},
                              "tokens": {"input_tokens": out.stats.tokens, "output_tokens": 0}}})

    async def cohere_v1(self, request: Request, body: DocumentsRerank):
        return await self.documents(request, body, errors.COHERE)

    async def documents(self, request: Request, body: DocumentsRerank, dialect: errors.Dialect):
        texts = _texts(body.documents)
        out = await call(request, self.engine.reranker.score(
            body.query, texts, model=body.model, top_n=body.top_n or 0, raw=body.raw_scores,
            max_tokens_per_doc=body.max_tokens_per_doc or 0), dialect)
        if isinstance(out, Response):  # the error, in the dialect's envelope
            return out
        results = []
        for r in out.results:
            item = {"index": r.index, "relevance_score": r.score}
            if body.return_documents:  # left out otherwise: a null document breaks strict clients
                item["document"] = {"text": texts[r.index]}
            results.append(item)
        return json({"id": request_id(), "model": out.model, "usage": {"total_tokens": out.stats.tokens},
                     "results": results, "meta": {"billed_units": {"search_units": 1}}})

    async def tei(self, request: Request, body: TeiRerank):
        out = await call(request, self.engine.reranker.score(body.query, body.texts, raw=body.raw_scores),
                         errors.TEI)
        if isinstance(out, Response):  # the error, in the dialect's envelope
            return out
        if body.return_text:
            return json([{"index": r.index, "score": r.score, "text": body.texts[r.index]} for r in out.results])
        return json([{"index": r.index, "score": r.score} for r in out.results])

    async def shared(self, request: Request):
        """POST /rerank: TEI's body has `texts`, the vLLM / Infinity / RAGFlow body has `documents`."""
        raw = await request.body()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return errors.render(Failure(400, "invalid_argument", f"the body is not JSON: {exc}"), errors.OPENAI)
        tei = isinstance(data, dict) and "texts" in data and "documents" not in data
        model, dialect = (TeiRerank, errors.TEI) if tei else (DocumentsRerank, errors.OPENAI)
        try:
            body = model.model_validate(data)
        except ValidationError as exc:
            return errors.render(validation_failure(exc.errors()), dialect)
        return await (self.tei(request, body) if tei else self.documents(request, body, errors.OPENAI))

    def routes(self) -> list[Route]:
        return [
            Route("/v2/rerank", self.cohere_v2, errors.COHERE, "Cohere v2 rerank", response=CohereV2RerankResponse),
            Route("/v1/rerank", self.cohere_v1, errors.COHERE, "Cohere v1 / Jina rerank",
                  response=DocumentsRerankResponse),
            Route("/rerank", self.shared, errors.OPENAI,
                  "TEI rerank (a body with `texts`), or vLLM / Infinity rerank (a body with `documents`)",
                  body=(TeiRerank, DocumentsRerank), response=Union[list[TeiRank], DocumentsRerankResponse],
                  also_dialects=(errors.TEI,)),
        ]

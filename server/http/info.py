"""What HTTP clients ask a server about itself: TEI's `/info` and `/health`, and OpenAI's `/v1/models`."""

from __future__ import annotations

from typing import Callable

from starlette.requests import Request

from tandem.server.engine import Engine
from tandem.server.errors import Kind
from tandem.server.http import errors
from tandem.server.http.calls import json, set_code
from tandem.server.access import Rule
from tandem.server.http.routes import Route


HEALTH = {"type": "object", "required": ["status"], "properties": {"status": {"enum": ["ok", "not_serving"]}}}


class InfoRoutes:
    def __init__(self, engine: Engine, serving: Callable[[], bool]):
        self.engine = engine
        self.serving = serving  # False once shutdown has begun: a load balancer must stop sending

    async def tei_info(self, request: Request):
        """One model, as TEI describes itself: the default reranker when one is loaded, else the embedder.
        Dify reads `model_type` and `max_client_batch_size`."""
        i = self.engine.info()
        m = next((m for m in i.models if m.kind == "reranker"), None) or next(m for m in i.models)
        model_type = ({"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
                      if m.kind == "reranker" else {"embedding": {"pooling": "mean"}})
        return json({"model_id": m.name, "model_sha": None, "model_dtype": m.dtype, "model_type": model_type,
                     "max_concurrent_requests": i.limits.max_concurrent_requests,
                     "max_input_length": m.max_seq_length, "max_batch_tokens": i.limits.max_batch_tokens,
                     "max_batch_requests": i.limits.max_batch_size,
                     "max_client_batch_size": i.limits.max_documents_per_request, "auto_truncate": True,
                     "tokenization_workers": 1, "version": i.version, "sha": None, "docker_label": None,
                     "tandem": {"models": [{"name": x.name, "kind": x.kind, "backend": x.backend,
                                            "precision": x.precision} for x in i.models]}})

    async def health(self, request: Request):
        """200 while serving; 503 from the moment shutdown begins (through the drain delay), as gRPC health turns
        NOT_SERVING, so a load balancer stops sending before the port closes."""
        if self.serving():
            return json({"status": "ok"})
        set_code(request, "UNAVAILABLE")
        return json({"status": "not_serving"}, 503)

    async def models(self, request: Request):
        i = self.engine.info()
        return json({"object": "list", "data": [{"id": m.name, "object": "model", "owned_by": "tandem",
                                                 "created": 0} for m in i.models]})

    def routes(self) -> list[Route]:
        return [
            Route("/info", self.tei_info, errors.TEI, "TEI info: the default model and the limits", method="GET",
                  fails=(Kind.INTERNAL,)),
            Route("/health", self.health, errors.TEI, "200 while serving, 503 while not", method="GET", public=True,
                  rule=Rule(None), fails=(), also={503: HEALTH}),
            Route("/v1/models", self.models, errors.OPENAI, "OpenAI model list", method="GET",
                  fails=(Kind.INTERNAL,)),
        ]

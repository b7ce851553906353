"""Tandem's own contract over HTTP: every unary RPC at `POST /tandem.v1.<Service>/<Method>`, by the Connect
protocol's unary rules (proto3 JSON or binary protobuf, errors as `{code, message}` with the HTTP status the
Connect spec gives each code, `Connect-Timeout-Ms` as the deadline).

The gRPC servicers are already adapters between the contract's messages and the engine, so this calls them with
a context that carries only what they read (the time left); no engine logic lives here.
"""

from __future__ import annotations

import asyncio

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.requests import Request
from starlette.responses import Response

import orjson

from tandem.server.access import CALLER, RULES, Denied, Gate
from tandem.server.http import errors
from tandem.server.http.calls import call
from tandem.server.http.errors import Failure
from tandem.server.http.routes import Route

JSON, PROTO = "application/json", "application/proto"


class _Context:
    """The part of a grpc.aio context the servicers use."""

    def __init__(self, deadline: float | None):
        self._deadline = deadline

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - asyncio.get_running_loop().time()


def _deadline(request: Request) -> float | None:
    ms = request.headers.get("connect-timeout-ms")
    if ms is None:
        return None
    if not ms.isdigit() or len(ms) > 10:
        raise Failure(400, "invalid_argument", f"Connect-Timeout-Ms {ms[:20]!r} is not a positive whole number")
    return asyncio.get_running_loop().time() + int(ms) / 1000


class ConnectRoutes:
    def __init__(self, servicers: dict[str, object], services, gate: Gate):
        """servicers: full service name -> servicer; services: their ServiceDescriptors."""
        self.servicers = servicers
        self.services = services
        self.gate = gate

    def _endpoint(self, servicer, method):
        handler = getattr(servicer, method.name)
        request_class = _message_class(method.input_type)

        async def endpoint(request: Request):
            binary = request.headers.get("content-type", "").split(";")[0].strip() == PROTO
            raw = await request.body()
            try:
                deadline = _deadline(request)
                msg = request_class.FromString(raw) if binary else json_format.Parse(
                    raw or b"{}", request_class(), ignore_unknown_fields=True)
            except Failure as f:
                return _render(f)
            except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
                return _render(Failure(400, "invalid_argument",
                                       f"the body is not a {method.input_type.full_name}: {exc}"))
            try:
                self.gate.check(CALLER.get(), msg)  # the collections it names, as on gRPC (one rule table)
            except Denied as d:
                return _render(errors.failure(d))
            out = await call(request, handler(msg, _Context(deadline)), errors.CONNECT)
            if isinstance(out, Response):
                return out
            if binary:
                return Response(out.SerializeToString(), media_type=PROTO)
            return Response(orjson.dumps(json_format.MessageToDict(out)), media_type=JSON)

        return endpoint

    def routes(self) -> list[Route]:
        out = []
        for service in self.services:
            servicer = self.servicers[service.full_name]
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue  # Connect's unary rules only; UpsertStream stays on gRPC
                path = f"/{service.full_name}/{method.name}"
                out.append(Route(path, self._endpoint(servicer, method), errors.CONNECT,
                                 f"{service.name}.{method.name} (Connect unary; JSON or binary)",
                                 content_types=(JSON, PROTO), tags=("tandem.v1 (Connect)",), rule=RULES[path]))
        return out


def _render(f: Failure) -> Response:
    return errors.render(f, errors.CONNECT)


def _message_class(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)

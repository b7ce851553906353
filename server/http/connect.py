"""Tandem's own contract over HTTP: every unary RPC at `POST /tandem.v1.<Service>/<Method>`, by the Connect
protocol's unary rules (proto3 JSON or binary protobuf, errors as `{code, message}` with the HTTP status the
Connect spec gives each code, `Connect-Timeout-Ms` as the deadline), and each server-streaming RPC (Export) by
its streaming rules: enveloped messages (`application/connect+json` or `+proto`), the answer's messages one
envelope each, then an end-of-stream envelope that carries the error, if any.

The gRPC servicers are already adapters between the contract's messages and the engine, so this calls them with
a context that carries only what they read (the time left); no engine logic lives here.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

import orjson

from tandem.server.access import CALLER, RULES, Denied, Gate
from tandem.server.http import errors, protojson
from tandem.server.http.calls import call, set_code
from tandem.server.http.errors import Failure, internal
from tandem.server.http.routes import Route

JSON, PROTO = "application/json", "application/proto"
STREAM_JSON, STREAM_PROTO = "application/connect+json", "application/connect+proto"
END_STREAM, COMPRESSED = 0x02, 0x01  # envelope flags

log = logging.getLogger(__name__)


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
                msg = request_class.FromString(raw) if binary else _from_json(raw, request_class)
            except Failure as f:
                return _render(f)
            except (ValueError, json_format.ParseError, DecodeError) as exc:
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

    def _stream_endpoint(self, servicer, method):
        handler = getattr(servicer, method.name)
        request_class = _message_class(method.input_type)

        async def endpoint(request: Request):
            kind = request.headers.get("content-type", "").split(";")[0].strip()
            binary = kind == STREAM_PROTO

            def encode(msg) -> bytes:
                return msg.SerializeToString() if binary else orjson.dumps(json_format.MessageToDict(msg))

            raw = await request.body()
            try:
                deadline = _deadline(request)
                msg = _unenvelope(raw, request_class, binary, method.input_type.full_name)
                self.gate.check(CALLER.get(), msg)
            except Failure as f:
                return _end_only(request, f, kind)
            except Denied as d:
                return _end_only(request, errors.failure(d), kind)

            async def stream():
                try:
                    async for out in handler(msg, _Context(deadline)):
                        yield _envelope(0, encode(out))
                except Exception as exc:  # after the first bytes the status is sent: the error ends the stream
                    f = errors.failure(exc)
                    if f is None:
                        log.error("unhandled error in %s", request.url.path, exc_info=exc)
                        f = internal(exc)
                    set_code(request, f.kind.upper())
                    yield _end(f)
                    return
                yield _end(None)

            return StreamingResponse(stream(), media_type=kind)

        return endpoint

    def routes(self) -> list[Route]:
        out = []
        for service in self.services:
            servicer = self.servicers[service.full_name]
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                if method.client_streaming:
                    continue  # Connect over HTTP/1.1 has no client streams: UpsertStream and Import stay on gRPC
                if method.server_streaming:
                    out.append(Route(path, self._stream_endpoint(servicer, method), errors.CONNECT,
                                     f"{service.name}.{method.name} (Connect server stream; enveloped JSON or "
                                     "binary)", content_types=(STREAM_JSON, STREAM_PROTO),
                                     tags=("tandem.v1 (Connect)",), rule=RULES[path],
                                     answers=(STREAM_JSON, STREAM_PROTO),
                                     contract=(method.input_type, method.output_type)))
                    continue
                out.append(Route(path, self._endpoint(servicer, method), errors.CONNECT,
                                 f"{service.name}.{method.name} (Connect unary; JSON or binary)",
                                 content_types=(JSON, PROTO), tags=("tandem.v1 (Connect)",), rule=RULES[path],
                                 answers=(JSON, PROTO), contract=(method.input_type, method.output_type)))
        return out


def _envelope(flags: int, data: bytes) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def _end(f: Failure | None) -> bytes:
    """The end-of-stream envelope: `{}`, or the error as Connect's `{"error": {code, message}}`."""
    return _envelope(END_STREAM, orjson.dumps({} if f is None else {"error": {"code": f.kind, "message": f.message}}))


def _end_only(request: Request, f: Failure, kind: str) -> Response:
    """A stream that fails before its first message: HTTP 200 and the error in the end-of-stream envelope, as the
    Connect protocol answers a well-formed streaming call."""
    set_code(request, f.kind.upper())
    return Response(_end(f), media_type=kind)


def _unenvelope(raw: bytes, request_class, binary: bool, name: str):
    """The one request message of a server-streaming call, from its envelope."""
    if len(raw) < 5:
        raise Failure(400, "invalid_argument", f"the body is not an enveloped {name} (5-byte prefix, then the message)")
    flags, n = struct.unpack(">BI", raw[:5])
    if flags & COMPRESSED:
        raise Failure(400, "unimplemented", "compressed messages are not accepted: send Connect-Content-Encoding "
                      "identity")
    if n != len(raw) - 5:
        raise Failure(400, "invalid_argument", f"the envelope says {n} bytes but {len(raw) - 5} follow; send one "
                      f"{name}")
    try:
        body = raw[5:]
        return request_class.FromString(body) if binary else _from_json(body, request_class)
    except (ValueError, json_format.ParseError, DecodeError) as exc:
        raise Failure(400, "invalid_argument", f"the message is not a {name}: {exc}") from None


def _from_json(raw: bytes, request_class):
    """A message from its proto3 JSON, refusing the shapes json_format would read leniently (server/http/
    protojson.py). Unknown fields are ignored, as Connect servers do."""
    data = orjson.loads(raw or b"{}")
    protojson.check(request_class.DESCRIPTOR, data)
    return json_format.ParseDict(data, request_class(), ignore_unknown_fields=True)


def _render(f: Failure) -> Response:
    return errors.render(f, errors.CONNECT)


def _message_class(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)

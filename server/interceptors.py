"""One server interceptor for what every RPC shares: auth, the concurrency limit,
metrics, error-to-status mapping and timing trailers.

Services raise the engine's errors (a TandemError with its kind, or a worker error) and fill `call_timings()`;
the interceptor turns both into the status and trailing metadata the client sees. `to_status` is the one
mapping from an error's kind to a gRPC status.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time

import grpc

from tandem.server import metrics
from tandem.server.admission import Admission
from tandem.server.auth import HINT, Tokens
from tandem.server.errors import Kind, TandemError, classify, invalid

log = logging.getLogger(__name__)

# Methods a mesh must reach without credentials or capacity (when so configured).
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

STATUS = {kind: grpc.StatusCode[kind.name] for kind in Kind}


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) for a known failure, None for a bug."""
    known = classify(exc)
    return None if known is None else (STATUS[known[0]], known[1])


_timings: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tandem_timings", default=None)


def call_timings() -> dict:
    """Per-call dict a service fills with `queue_seconds` / `inference_seconds`; sent as trailers."""
    t = _timings.get()
    return t if t is not None else {}


class ServerInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission, tokens: Tokens = Tokens(), exempt_health: bool = True):
        self.admission = admission  # shared with the HTTP server: one limit for the process
        self.tokens = tokens
        self.exempt_health = exempt_health
        # The wrapped handler per method, built once: this runs on every RPC. Only methods the server
        # serves get an entry, so the set is closed.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._finished: dict[tuple[str, grpc.StatusCode], tuple] = {}

    async def intercept_service(self, continuation, details):
        method = details.method
        exempt = method.startswith(EXEMPT_PREFIXES)
        if self.tokens.required and not (exempt and self.exempt_health):
            if not self.tokens.accepts(_authorization(details.invocation_metadata)):
                handler = await continuation(details)
                if handler is None:
                    return None
                return _deny(handler, method, grpc.StatusCode.UNAUTHENTICATED, HINT)
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED, and no label is made
                return None
            wrapped = self._wrapped[method] = self._prepare(handler, method, exempt)
        return wrapped

    def _finish(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        children = self._finished.get((method, code))
        if children is None:
            children = self._finished[(method, code)] = (metrics.REQUESTS.labels(method, code.name),
                                                         metrics.REQUEST_SECONDS.labels(method, code.name))
        children[0].inc()
        children[1].observe(seconds)

    def _prepare(self, handler, method: str, exempt: bool):
        if handler.request_deserializer is not None:
            handler = handler._replace(request_deserializer=_lenient(handler.request_deserializer))
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap(handler.unary_unary, method, exempt))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._wrap(_checked_stream(handler.stream_unary), method, exempt))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._wrap_stream(handler.unary_stream, method))
        if handler.stream_stream:
            return handler._replace(stream_stream=self._wrap_stream(handler.stream_stream, method))
        return handler

    def _wrap(self, behavior, method: str, exempt: bool):
        in_flight = metrics.IN_FLIGHT.labels(method)

        async def wrapper(request, context):
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            token = _timings.set({})
            counted = not exempt
            admitted = self.admission.enter() if counted else True
            in_flight.inc()
            try:
                if isinstance(request, _Undecodable):
                    raise request.error()
                if not admitted:
                    code = grpc.StatusCode.RESOURCE_EXHAUSTED
                    await context.abort(code, self.admission.busy)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                code = context.code() or code
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                raise
            except Exception as exc:
                mapped = _answer(exc, method)
                code = mapped[0]
                _set_trailers(context, start)
                await context.abort(*mapped)
            finally:
                if counted:
                    self.admission.leave()
                in_flight.dec()
                if code == grpc.StatusCode.OK:
                    _set_trailers(context, start)
                self._finish(method, code, time.perf_counter() - start)
                _timings.reset(token)

        return wrapper

    def _wrap_stream(self, behavior, method: str):
        """Server-streaming calls (Export): the unary wrapper's accounting, with errors mapped as they are raised
        between messages."""
        in_flight = metrics.IN_FLIGHT.labels(method)

        async def wrapper(request, context):
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            admitted = self.admission.enter()
            in_flight.inc()
            try:
                if isinstance(request, _Undecodable):
                    raise request.error()
                if not admitted:
                    code = grpc.StatusCode.RESOURCE_EXHAUSTED
                    await context.abort(code, self.admission.busy)
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                mapped = _answer(exc, method)
                code = mapped[0]
                await context.abort(*mapped)
            finally:
                self.admission.leave()
                in_flight.dec()
                self._finish(method, code, time.perf_counter() - start)

        return wrapper


def _answer(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status a failure gets: its kind's, or INTERNAL (logged with its traceback) for a bug."""
    mapped = to_status(exc)
    if mapped is None:
        log.exception("unhandled error in %s", method)
        mapped = (grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    return mapped


def _authorization(md) -> str | None:
    for key, value in md or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return None


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the call can end INVALID_ARGUMENT
    (gRPC itself would answer UNKNOWN)."""

    def __init__(self, exc: Exception):
        self.exc = exc

    def error(self) -> TandemError:
        return invalid(f"request could not be decoded as the RPC's protobuf message: {self.exc}")


def _lenient(deserializer):
    def decode(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(exc)

    return decode


def _checked_stream(behavior):
    async def checked(request_iterator, context):
        async def messages():
            async for msg in request_iterator:
                if isinstance(msg, _Undecodable):
                    raise msg.error()
                yield msg

        return await behavior(messages(), context)

    return checked


def _set_trailers(context, start: float) -> None:
    t = call_timings()
    md = [("tandem-total-seconds", f"{time.perf_counter() - start:.6f}")]
    for key in ("queue_seconds", "inference_seconds"):
        if key in t:
            md.append(("tandem-" + key.replace("_", "-"), f"{t[key]:.6f}"))
    context.set_trailing_metadata(tuple(md))


def _deny(handler, method: str, code: grpc.StatusCode, message: str):
    async def unary(request, context):
        metrics.REQUESTS.labels(method, code.name).inc()
        await context.abort(code, message)

    async def streaming(request, context):
        metrics.REQUESTS.labels(method, code.name).inc()
        await context.abort(code, message)
        yield  # pragma: no cover

    if handler.unary_unary:
        return handler._replace(unary_unary=unary)
    if handler.stream_unary:
        return handler._replace(stream_unary=unary)
    if handler.unary_stream:
        return handler._replace(unary_stream=streaming)
    return handler._replace(stream_stream=streaming)

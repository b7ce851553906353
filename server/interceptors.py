"""One server interceptor for what every RPC shares: the access gate, the concurrency limit,
metrics, error-to-status mapping and timing trailers.

Services raise the engine's errors (a TandemError with its kind, or a worker error) and fill `call_timings()`;
the interceptor turns both into the status and trailing metadata the client sees. `to_status` is the one
mapping from an error's kind to a gRPC status.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time

import grpc

from tandem.server import metrics, tracing
from tandem.server.admission import Admission
from tandem.server.access import CALLER, Gate, grpc_identities
from tandem.server.errors import Kind, TandemError, classify, invalid

log = logging.getLogger(__name__)

# Methods a mesh must reach without capacity (and without credentials, unless auth_exempt_health is off).
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
    def __init__(self, admission: Admission, gate: Gate | None = None, stall_seconds: float = 30.0):
        self.admission = admission  # shared with the HTTP server: one limit for the process
        self.stall_seconds = stall_seconds
        self.gate = gate or Gate()  # shared too: one policy, one set of quotas
        # The wrapped handler per method, built once: this runs on every RPC. Only methods the server
        # serves get an entry, so the set is closed.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._finished: dict[tuple[str, grpc.StatusCode], tuple] = {}

    async def intercept_service(self, continuation, details):
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None:  # unknown method: gRPC answers UNIMPLEMENTED, and no label is made
                return None
            wrapped = self._wrapped[method] = self._prepare(handler, method, method.startswith(EXEMPT_PREFIXES))
        return wrapped

    def _open(self, method: str, context):
        """The gate's Call for this RPC (None when auth is off or the method is exempt), set as the caller."""
        if not self.gate.required:
            return None
        call = self.gate.open(method, "grpc", context.peer(), _authorization(context.invocation_metadata()),
                              lambda: grpc_identities(context))
        CALLER.set(call)
        return call

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
            checked = _checked_stream(handler.stream_unary, self.gate, self.stall_seconds)
            return handler._replace(stream_unary=self._wrap(checked, method, exempt, streaming=True))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._wrap_stream(handler.unary_stream, method))
        if handler.stream_stream:
            return handler._replace(stream_stream=self._wrap_stream(handler.stream_stream, method))
        return handler

    def _wrap(self, behavior, method: str, exempt: bool, streaming: bool = False):
        in_flight = metrics.IN_FLIGHT.labels(method)

        async def wrapper(request, context):
            start = time.perf_counter()
            code, message = grpc.StatusCode.OK, ""
            token = _timings.set({})
            call, entered = None, False
            in_flight.inc()
            # Health and reflection probes make no spans: a mesh polls them every few seconds.
            span = tracing.open_rpc(method, context.invocation_metadata(), context.peer()) \
                if tracing.ON and not exempt else None
            try:
                call = self._open(method, context)
                if isinstance(request, _Undecodable):
                    raise request.error()
                if not exempt:
                    entered = True
                    if not self.admission.enter():
                        code = grpc.StatusCode.RESOURCE_EXHAUSTED
                        await context.abort(code, self.admission.busy)
                # A client stream's messages are checked as they are read; its scope now.
                self.gate.check(call, None if streaming else request)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                code = context.code() or code
                message = context.details() or ""
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                raise
            except Exception as exc:
                code, message = mapped = _answer(exc, method)
                _set_trailers(context, start, exc)
                await context.abort(*mapped)
            finally:
                if entered:
                    self.admission.leave()
                in_flight.dec()
                if code == grpc.StatusCode.OK:
                    _set_trailers(context, start)
                self.gate.close(call, code.name)
                self._finish(method, code, time.perf_counter() - start)
                tracing.close_rpc(span, code.name, message)
                _timings.reset(token)

        return wrapper

    def _wrap_stream(self, behavior, method: str):
        """Server-streaming calls (Export): the unary wrapper's accounting, with errors mapped as they are raised
        between messages."""
        in_flight = metrics.IN_FLIGHT.labels(method)
        exempt = method.startswith(EXEMPT_PREFIXES)  # health's Watch, reflection: no spans

        async def wrapper(request, context):
            start = time.perf_counter()
            code, message = grpc.StatusCode.OK, ""
            call, entered = None, False
            in_flight.inc()
            span = tracing.open_rpc(method, context.invocation_metadata(), context.peer()) \
                if tracing.ON and not exempt else None
            try:
                call = self._open(method, context)
                if isinstance(request, _Undecodable):
                    raise request.error()
                if not exempt:  # a health Watch lasts as long as its client: it must not hold an admission slot
                    entered = True
                    if not self.admission.enter():
                        code = grpc.StatusCode.RESOURCE_EXHAUSTED
                        await context.abort(code, self.admission.busy)
                self.gate.check(call, request)
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for item in result:
                        yield item
                else:  # written with context.write() and awaited (grpc's health Watch, which balancers use)
                    await result
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                message = context.details() or ""
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                code, message = mapped = _answer(exc, method)
                _set_trailers(context, start, exc)
                await context.abort(*mapped)
            finally:
                if entered:
                    self.admission.leave()
                in_flight.dec()
                self.gate.close(call, code.name)
                self._finish(method, code, time.perf_counter() - start)
                tracing.close_rpc(span, code.name, message)

        return wrapper


def _answer(exc: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status a failure gets: its kind's, or INTERNAL (logged with its traceback) for a bug."""
    mapped = to_status(exc)
    if mapped is None:
        log.exception("unhandled error in %s", method)
        mapped = (grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
    return mapped


def _authorization(md) -> list[str]:
    """Every authorization value (gRPC lowercases metadata keys on the wire)."""
    return [value if isinstance(value, str) else "" for key, value in md or () if key == "authorization"]


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


def _checked_stream(behavior, gate: Gate, stall_seconds: float):
    """A client stream's messages, each checked by the gate; one that does not come within `stall_seconds` ends
    the call, so a client that opens UpsertStream and sends nothing holds an admission slot for no longer."""
    stalled = metrics.STALLED.labels("grpc")

    async def checked(request_iterator, context):
        call = CALLER.get()

        async def messages():
            it = request_iterator.__aiter__()
            while True:
                try:
                    msg = await asyncio.wait_for(it.__anext__(), stall_seconds)
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    stalled.inc()
                    raise TandemError(f"no message on this stream for {stall_seconds:g}s "
                                      "(--stall-timeout-seconds): send the next one sooner, or end the stream",
                                      Kind.DEADLINE_EXCEEDED) from None
                if isinstance(msg, _Undecodable):
                    raise msg.error()
                gate.check(call, msg)
                yield msg

        return await behavior(messages(), context)

    return checked


def _set_trailers(context, start: float, exc: Exception | None = None) -> None:
    t = call_timings()
    md = [("tandem-total-seconds", f"{time.perf_counter() - start:.6f}")]
    wait = getattr(exc, "retry_after", None)
    if wait:  # a quota says when the next call fits: gRPC's retry pushback, and the same as HTTP's Retry-After
        md += [("grpc-retry-pushback-ms", str(int(wait * 1000) + 1)), ("retry-after", str(max(1, math.ceil(wait))))]
    for key in ("queue_seconds", "inference_seconds"):
        if key in t:
            md.append(("tandem-" + key.replace("_", "-"), f"{t[key]:.6f}"))
    context.set_trailing_metadata(tuple(md))

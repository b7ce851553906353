"""OpenTelemetry tracing: the SDK set up from the config and the standard OTEL_* variables, and the spans the
transports and the engine open.

Off unless an OTLP endpoint is given (--otlp-endpoint, OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Off, no provider or exporter exists and every helper here returns at its
first line, so a call pays an attribute read or a context variable lookup. On, the SDK's tracer makes each call's
server span (the caller's W3C context, the sampler), and the spans of its work (tandem.workers.tracing) are
children of it when it records. All go to a BatchSpanProcessor (its queue and thread, the OTEL_BSP_* variables),
so an exporter that is slow or gone costs the calls nothing: a full queue drops spans.
"""

from __future__ import annotations

import logging
import os
from contextvars import ContextVar
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tandem.workers import tracing as work_spans
from tandem.workers.tracing import PARENT, Span

log = logging.getLogger(__name__)

ON = False  # set by setup(); read on every call
_tracer: trace.Tracer = trace.NoOpTracer()
_provider = None
CALL: ContextVar = ContextVar("tandem_call_span", default=None)  # the call's server span, when it records


class _Off:
    """What stage() gives an untraced call: a span that records nothing, reusable."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def is_recording(self) -> bool:
        return False

    def set_attribute(self, key, value) -> None:
        pass

    def set_attributes(self, attributes) -> None:
        pass


_OFF = _Off()

# gRPC status codes a server span marks as an error (OpenTelemetry's gRPC conventions): the server's faults.
# The caller's (INVALID_ARGUMENT, NOT_FOUND, ...) stay on rpc.response.status_code and the child that failed.
GRPC_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
                                "DATA_LOSS"})


def endpoint(flag: str, env=os.environ) -> str:
    """Where traces go: the flag, else the standard variables; "" leaves tracing off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or \
            env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return ""
    return flag or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def protocol(env=os.environ) -> str:
    value = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
    value = value.strip().lower()
    if value not in ("grpc", "http/protobuf"):
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL is {value!r}; Tandem exports traces over 'grpc' or "
                         "'http/protobuf'")
    return value


def _exporter(url: str, proto: str, from_flag: bool):
    if proto == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # host:port or a URL; http:// (or OTEL_EXPORTER_OTLP_INSECURE) means plaintext, as the exporter reads it
        return OTLPSpanExporter(endpoint=url)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # OTEL_EXPORTER_OTLP_ENDPOINT (and the flag, read the same way) is the collector's base URL: the exporter
    # posts to its /v1/traces. A URL with a path, or the TRACES variable, is used as it is.
    if from_flag or not os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        if urlsplit(url).path in ("", "/"):
            url = url.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=url)


def setup(flag_endpoint: str, version: str) -> bool:
    """Start the SDK when an endpoint is set: resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, default
    service.name "tandem"), sampler (OTEL_TRACES_SAMPLER, default parent-based always-on), W3C propagation
    (OTEL_PROPAGATORS), and the OTLP exporter. Once per process."""
    global ON, _tracer, _provider
    url = endpoint(flag_endpoint)
    if not url or ON:
        return ON
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    proto = protocol()
    resource = Resource.create({"service.version": version})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "tandem"}))
    _provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
    processor = BatchSpanProcessor(_exporter(url, proto, bool(flag_endpoint)))
    _provider.add_span_processor(processor)
    trace.set_tracer_provider(_provider)
    _tracer = _provider.get_tracer("tandem", version)
    work_spans.install(processor.on_end, resource, InstrumentationScope("tandem", version))
    ON = True
    log.info("tracing on: OTLP %s to %s (service %s)", proto, url, resource.attributes["service.name"])
    return True


def shutdown(timeout: float = 5.0) -> None:
    """Flush what is queued, waiting at most `timeout` (a collector that is gone must not hold up a stop)."""
    global ON
    if _provider is not None:
        ON = False
        work_spans.uninstall()
        _provider.force_flush(int(timeout * 1000))
        _provider.shutdown()


# -- server spans: one per call, in the caller's trace when it sent a traceparent ------------------------------

class _Metadata:
    """Reads W3C headers from gRPC metadata (a sequence of pairs) for the propagator."""

    @staticmethod
    def get(carrier, key):
        return [v for k, v in carrier if k == key and isinstance(v, str)] or None

    @staticmethod
    def keys(carrier):
        return [k for k, _ in carrier]


class _Headers:
    """The same, from an ASGI scope's header list (lower-case byte pairs)."""

    @staticmethod
    def get(carrier, key):
        want = key.encode("latin-1")
        return [v.decode("latin-1") for k, v in carrier if k == want] or None

    @staticmethod
    def keys(carrier):
        return [k.decode("latin-1") for k, _ in carrier]


def _open(name: str, parent, attributes: dict):
    """A server span in the caller's trace (or a new one), sampled by the SDK; its work's spans are children of it
    (PARENT) when it records. No OpenTelemetry context is attached: nothing inside a call reads one."""
    span = _tracer.start_span(name, parent, SpanKind.SERVER, attributes)
    recording = span.is_recording()
    return span, CALL.set(span if recording else None), PARENT.set(span.get_span_context() if recording else None)


def _close(opened):
    """The call's server span to finish, with the context variables set back; None once ended, when it was not
    sampled (nothing to add to it)."""
    if opened is None:
        return None
    span, call, parent = opened
    try:
        PARENT.reset(parent)
        CALL.reset(call)
    except ValueError:  # ended in another context (a stream's generator): nothing of ours is left set there
        pass
    if span.is_recording():
        return span
    span.end()
    return None


def open_rpc(method: str, metadata, peer: str):
    """The server span of a gRPC call; None when tracing is off."""
    if not ON:
        return None
    parent = propagate.extract(tuple(metadata or ()), getter=_Metadata)
    service, _, name = method.lstrip("/").partition("/")
    attributes = {"rpc.system.name": "grpc", "rpc.method": f"{service}/{name}"}
    if peer:
        attributes.update(_peer(peer))
    return _open(f"{service}/{name}", parent, attributes)


def close_rpc(opened, code: str, message: str = "") -> None:
    span = _close(opened)
    if span is None:
        return
    attributes = {"rpc.response.status_code": code}
    if code in GRPC_SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, message or code))
    elif code != "OK":
        attributes["error.type"] = code
    span.set_attributes(attributes)
    span.end()


def open_http(route: str, scope):
    """The server span of an HTTP request, named `METHOD route` as HTTP's conventions ask; None when off."""
    if not ON:
        return None
    headers = scope.get("headers") or ()
    parent = propagate.extract(headers, getter=_Headers)
    method = scope["method"]
    attributes = {"http.request.method": method, "http.route": route, "url.path": scope["path"],
                  "url.scheme": scope.get("scheme", "http"),
                  "network.protocol.version": scope.get("http_version", "1.1")}
    client, server = scope.get("client"), scope.get("server")
    if client:
        attributes["client.address"], attributes["client.port"] = client[0], client[1]
    if server:
        attributes["server.port"] = server[1]
    agent = next((v for k, v in headers if k == b"user-agent"), None)
    if agent:
        attributes["user_agent.original"] = agent.decode("latin-1")
    if route.startswith("/tandem.v1."):  # Connect: Tandem's contract over HTTP, named like its gRPC method
        attributes.update({"rpc.system.name": "connect_rpc", "rpc.method": route.lstrip("/")})
    return _open(f"{method} {route}", parent, attributes)


def close_http(opened, status: int, code: str) -> None:
    span = _close(opened)
    if span is None:
        return
    attributes = {"tandem.status": code}
    if status:
        attributes["http.response.status_code"] = status
    if status >= 500 or not status:
        span.set_status(Status(StatusCode.ERROR, code))
    if status >= 400 or not status:
        attributes["error.type"] = str(status) if status else code
    span.set_attributes(attributes)
    span.end()


def _peer(peer: str) -> dict:
    """gRPC's peer string (ipv4:1.2.3.4:5678, ipv6:[::1]:5678, unix:path) as client.* attributes."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        return {"client.address": host.strip("[]"), "client.port": int(port) if port.isdigit() else 0,
                "network.type": kind}
    return {"client.address": rest or peer}


# -- the engine's stages ----------------------------------------------------------------------------------------

def stage(name: str, attributes: dict | None = None):
    """A child span of the traced call (or stage) it runs in, for one stage: validate, embed, recall, rerank,
    write. A failure inside marks it ERROR with the failure's message. Untraced: a shared no-op."""
    parent = PARENT.get()
    if parent is None:
        return _OFF
    return Span(name, parent, attributes)


def note(**attributes) -> None:
    """Attributes on the call's server span, when it records."""
    span = CALL.get()
    if span is not None:
        span.set_attributes(attributes)


def flag(span, reason: str) -> None:
    """Mark a stage span as failed with `reason`, while the call goes on (a degraded Search)."""
    if span is not _OFF:
        span.fail(reason)

"""Real OTLP trace receivers for tests: the collector's gRPC TraceService and its http/protobuf endpoint, built from
the `opentelemetry-proto` messages, keeping every span they are sent."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.support.serverproc import free_port

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent: str  # "" for a root
    name: str
    kind: str
    attributes: dict
    links: list[tuple[str, str]]  # (trace_id, span_id)
    status: str
    message: str
    start_ns: int
    end_ns: int
    service: str
    events: list[str] = field(default_factory=list)


def _value(v):
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


class Receiver:
    """keep=False only counts the spans (`received`): a benchmark's receiver should cost its machine little."""

    def __init__(self, keep: bool = True):
        self.spans: list[Span] = []
        self.received = 0
        self.requests = 0
        self.keep = keep
        self._cond = threading.Condition()

    def take(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        if not self.keep:
            with self._cond:
                self.requests += 1
                self.received += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return
        got = []
        for rs in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(Span(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name,
                                    KINDS[s.kind], {kv.key: _value(kv.value) for kv in s.attributes},
                                    [(ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links],
                                    STATUS[s.status.code], s.status.message, s.start_time_unix_nano,
                                    s.end_time_unix_nano, str(resource.get("service.name", "")),
                                    [e.name for e in s.events]))
        with self._cond:
            self.requests += 1
            self.received += len(got)
            self.spans.extend(got)
            self._cond.notify_all()

    def wait(self, pred, timeout: float = 30.0, what: str = "spans") -> list[Span]:
        """The spans matching `pred`, once at least one has arrived."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [s for s in self.spans if pred(s)]
                if found:
                    return found
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} arrived in {timeout:.0f}s; received: "
                                         f"{sorted({s.name for s in self.spans})}")
                self._cond.wait(left)

    def trace(self, trace_id: str, until, timeout: float = 30.0) -> list[Span]:
        """Every span of one trace, once `until(spans)` holds."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                spans = [s for s in self.spans if s.trace_id == trace_id]
                if until(spans):
                    return spans
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"trace {trace_id} incomplete after {timeout:.0f}s: "
                                         f"{[(s.name, s.parent) for s in spans]}")
                self._cond.wait(left)


class GrpcReceiver(Receiver):
    """The OTLP/gRPC TraceService on a loopback port."""

    def __init__(self, keep: bool = True):
        super().__init__(keep)
        self.port = free_port()
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver.take(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0)


class HttpReceiver(Receiver):
    """OTLP/HTTP with protobuf bodies: POST /v1/traces."""

    def __init__(self):
        super().__init__()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404 if self.path != "/v1/traces" else 415)
                    self.end_headers()
                    return
                receiver.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.http.server_address[1]
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"

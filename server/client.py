"""Small client helpers shared by the CLI tools (health probe, ingest, eval)."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def channel(target: str, *, tls: bool = False, tls_ca: str = "", token: str = "") -> grpc.Channel:
    opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024)]
    if not tls:
        ch = grpc.insecure_channel(target, options=opts)
    else:
        ca = Path(tls_ca).read_bytes() if tls_ca else None
        ch = grpc.secure_channel(target, grpc.ssl_channel_credentials(ca), options=opts)
    if token:
        ch = grpc.intercept_channel(ch, _BearerAuth(token))
    return ch


class _BearerAuth(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self, token: str):
        self.md = ("authorization", f"Bearer {token}")

    def _add(self, details):
        md = list(details.metadata or []) + [self.md]
        return details._replace(metadata=md) if hasattr(details, "_replace") else _Details(details, md)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._add(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._add(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, d, metadata):
        self.method, self.timeout, self.metadata = d.method, d.timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = d.credentials, d.wait_for_ready, d.compression


def check_health(target: str, service: str = "", timeout: float = 3.0, *, tls_ca: str = "",
                 insecure: bool = True) -> str:
    with channel(target, tls=not insecure, tls_ca=tls_ca) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name}: {exc.details()})"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

"""gRPC channels to a Tandem server, sync and asyncio, with TLS and the retry rule both clients share."""

from __future__ import annotations

import ipaddress
import json
import random
import socket
from pathlib import Path

import grpc

MAX_MESSAGE = 64 * 1024 * 1024
_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


# Over several replicas: round_robin over every address, each one's gRPC health watched, so a replica that drains
# (NOT_SERVING at SIGTERM) or dies stops getting calls before its listener closes; what a mesh's sidecar does.
_BALANCED = json.dumps({"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}})


def resolve_target(target: str) -> tuple[str, list]:
    """The channel target and options for what a user names: one address as gRPC takes it (pick_first);
    `host:port,host:port,...` (resolved once, now) or a `dns:///name:port` with several records (a headless
    Service) balanced call by call over every healthy replica."""
    if target.startswith(("dns:", "ipv4:", "ipv6:")):
        return target, [("grpc.service_config", _BALANCED)]
    if "," not in target:
        return target, []
    v4, v6 = [], []
    for part in (p.strip() for p in target.split(",") if p.strip()):
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{part!r} in target {target!r} is not host:port")
        host = host.strip("[]")
        try:
            addrs = [ipaddress.ip_address(host)]
        except ValueError:
            addrs = [ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)]
        for a in dict.fromkeys(addrs):
            (v4 if a.version == 4 else v6).append(f"{a}:{port}" if a.version == 4 else f"[{a}]:{port}")
    if v4 and v6:  # one gRPC target holds one address family
        raise ValueError(f"target {target!r} mixes IPv4 and IPv6 addresses; name one family")
    return ("ipv4:" + ",".join(v4)) if v4 else ("ipv6:" + ",".join(v6)), [("grpc.service_config", _BALANCED)]


def _credentials(tls_ca: str | None, cert: tuple[str, str] | None) -> grpc.ChannelCredentials:
    """TLS, with a client certificate (cert file, key file) for a server that asks for one (mTLS)."""
    chain, key = (Path(cert[0]).read_bytes(), Path(cert[1]).read_bytes()) if cert else (None, None)
    return grpc.ssl_channel_credentials(Path(tls_ca).read_bytes() if tls_ca else None, key, chain)


def sync_channel(target: str, *, tls: bool = False, tls_ca: str | None = None,
                 cert: tuple[str, str] | None = None) -> grpc.Channel:
    target, extra = resolve_target(target)
    if tls or tls_ca or cert:
        return grpc.secure_channel(target, _credentials(tls_ca, cert), options=_OPTIONS + extra)
    return grpc.insecure_channel(target, options=_OPTIONS + extra)


def aio_channel(target: str, *, tls: bool = False, tls_ca: str | None = None,
                cert: tuple[str, str] | None = None) -> grpc.aio.Channel:
    target, extra = resolve_target(target)
    if tls or tls_ca or cert:
        return grpc.aio.secure_channel(target, _credentials(tls_ca, cert), options=_OPTIONS + extra)
    return grpc.aio.insecure_channel(target, options=_OPTIONS + extra)


def auth_metadata(token: str | None) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


class Retry:
    """Exponential backoff with jitter (0.1 s doubling to 2 s) until the call's deadline, or for at most
    `attempts` tries when that is set. Time, not a count, bounds it by default: a call with a 60 s deadline
    rides out a server restart or a busy spell of up to a minute, however fast the machine.

    UNAVAILABLE (server restarting, connection lost) is retried for every call: the request did not run, or
    it is one the server treats as idempotent. RESOURCE_EXHAUSTED (a full queue, too many calls in flight) is
    retried only for idempotent calls, whose repetition cannot change the outcome."""

    def __init__(self, attempts: int | None = None, base: float = 0.1, cap: float = 2.0):
        self.attempts, self.base, self.cap = attempts, base, cap

    def delay(self, code: grpc.StatusCode, idempotent: bool, attempt: int, remaining: float,
              pushback: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up. A server's pushback (a quota saying when
        the next call fits) is a floor on the wait."""
        if code != grpc.StatusCode.UNAVAILABLE and not (idempotent and code == grpc.StatusCode.RESOURCE_EXHAUSTED):
            return None
        if self.attempts is not None and attempt + 1 >= self.attempts:
            return None
        d = min(self.cap, self.base * 2 ** attempt) * random.uniform(0.5, 1.0)
        d = max(d, pushback or 0.0)
        return d if d < remaining else None


def pushback(exc: grpc.RpcError) -> float | None:
    """The server's `grpc-retry-pushback-ms` trailer, in seconds (sent with a per-principal quota's refusal)."""
    try:
        for key, value in exc.trailing_metadata() or ():
            if key == "grpc-retry-pushback-ms" and str(value).isdigit():
                return int(value) / 1000
    except (AttributeError, TypeError, ValueError):
        pass
    return None


class Connection:
    """What both clients hold: the target, default deadline, retry rule, auth metadata, channel and stubs."""

    def _connect(self, make_channel, target: str, token: str | None, tls: bool, tls_ca: str | None,
                 timeout: float, retry: "Retry | None", batch_size: int, tls_cert: str | None = None,
                 tls_key: str | None = None) -> None:
        from tandem.v1 import embed_pb2_grpc, index_pb2_grpc, info_pb2_grpc, rerank_pb2_grpc, search_pb2_grpc

        self.target, self.timeout, self.batch_size = target, timeout, batch_size
        self.retry = retry or Retry()
        self._md = auth_metadata(token)
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("a client certificate needs both tls_cert and tls_key")
        self.channel = make_channel(target, tls=tls, tls_ca=tls_ca, cert=(tls_cert, tls_key) if tls_cert else None)
        self._index = index_pb2_grpc.IndexServiceStub(self.channel)
        self._search = search_pb2_grpc.SearchServiceStub(self.channel)
        self._rerank = rerank_pb2_grpc.RerankServiceStub(self.channel)
        self._embed = embed_pb2_grpc.EmbedServiceStub(self.channel)
        self._info = info_pb2_grpc.InfoServiceStub(self.channel)

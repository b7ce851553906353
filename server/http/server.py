"""The HTTP server: uvicorn on the gRPC server's event loop, over the same engine, limits, access gate and
metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

from tandem.server.admission import Admission
from tandem.server.access import Gate, cert_identities
from tandem.server.config import Config
from tandem.server.engine import Engine
from tandem.server.engine.info import tandem_version
from tandem.server.http import routes
from tandem.server.http.connect import ConnectRoutes
from tandem.server.http.console import ConsoleRoutes
from tandem.server.http.embed import EmbedRoutes
from tandem.server.http.info import InfoRoutes
from tandem.server.http.rerank import RerankRoutes
from tandem.server.http.stalls import with_stall_timeout

log = logging.getLogger(__name__)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use fails start-up with what to do (uvicorn would
    log and exit the process)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen for HTTP on {host}:{port} ({exc.strerror}); choose another --http-port, "
                           "or --http-port 0 to turn HTTP off") from None
    sock.set_inheritable(True)
    return sock


class _Uvicorn(uvicorn.Server):
    """uvicorn as a task of an application that owns its signals: Tandem's shutdown stops both servers."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _with_peer_identities(base: type) -> type:
    """uvicorn's HTTP protocol, putting the client certificate's identities into each request's scope (uvicorn
    does not expose the peer certificate to the app). Read once per connection: the certificate cannot change."""

    class Protocol(base):
        def connection_made(self, transport):
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            identities = cert_identities(ssl_object.getpeercert()) if ssl_object is not None else []
            if identities:
                app = self.app

                async def with_identities(scope, receive, send):
                    scope.setdefault("extensions", {})[routes.PEER_IDENTITIES] = identities
                    return await app(scope, receive, send)

                self.app = with_identities

    return Protocol


class HttpServer:
    def __init__(self, engine: Engine, cfg: Config, gate: Gate, admission: Admission, servicers: dict,
                 services, ssl: dict | None = None):
        self.cfg = cfg
        self.ssl = ssl or {}
        self.serving = True
        table = [*RerankRoutes(engine).routes(), *EmbedRoutes(engine).routes(),
                 *InfoRoutes(engine, lambda: self.serving).routes(), *ConnectRoutes(servicers, services, gate).routes(),
                 *ConsoleRoutes().routes()]
        self.app = routes.build(table, gate, admission, cfg.max_message_bytes, cfg.auth_exempt_health,
                                tandem_version(), (cfg.max_documents_per_request, cfg.max_text_bytes,
                                                   cfg.max_recall_k))
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task | None = None
        self.port = 0

    async def start(self, sock: socket.socket) -> None:
        config = uvicorn.Config(self.app, host=self.cfg.http_host, port=self.cfg.http_port, lifespan="off",
                                log_level="warning", access_log=False, server_header=False,
                                timeout_graceful_shutdown=self.cfg.grace_seconds,
                                limit_concurrency=self.cfg.max_http_connections, backlog=2048, **self.ssl)
        config.load()
        config.http_protocol_class = with_stall_timeout(config.http_protocol_class, self.cfg.stall_timeout_seconds)
        if self.ssl.get("ssl_ca_certs"):  # mTLS: the gate may authenticate callers by their certificate
            config.http_protocol_class = _with_peer_identities(config.http_protocol_class)
        self.port = sock.getsockname()[1]
        self._server = _Uvicorn(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError(f"the HTTP server did not start on {self.cfg.http_host}:{self.port}")
            await asyncio.sleep(0.01)

    def not_serving(self) -> None:
        """From the start of shutdown: /health answers 503, while every route keeps serving through the drain."""
        self.serving = False

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the grace period), then close."""
        if self._server is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)

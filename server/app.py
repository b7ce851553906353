"""Assemble and run the server: models, batchers, store, gRPC services, health,
reflection, metrics endpoint, and graceful shutdown."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tandem.server import metrics, precision, tracing
from tandem.server.admission import Admission
from tandem.server.access import Gate
from tandem.server.config import Config, ModelSpec
from tandem.server.embed import EmbedService
from tandem.server.engine import Engine
from tandem.server.engine.info import tandem_version
from tandem.server.errors import TandemError
from tandem.server.index import IndexService
from tandem.server.info import InfoService
from tandem.server.interceptors import ServerInterceptor
from tandem.server.models import DEFAULT_RERANKER, ModelNotFound, load_embedder, load_reranker, pick_device, resolve
from tandem.server.rerank import RerankService
from tandem.server.runtime import Runtime
from tandem.server.search import SearchService
from tandem.server.storage import Store, StoreError
from tandem.server.storage.recycler import Recycler
from tandem.server.storage.sealer import Sealer
from tandem.v1 import (embed_pb2, embed_pb2_grpc, index_pb2, index_pb2_grpc, info_pb2, info_pb2_grpc,
                       rerank_pb2, rerank_pb2_grpc, search_pb2, search_pb2_grpc)
from tandem.workers import Batcher
from tandem.workers.compute import compute_pool, compute_team
from tandem.workers.recall import RecallBackend

log = logging.getLogger("tandem")

SERVICES = (rerank_pb2.DESCRIPTOR.services_by_name["RerankService"],
            search_pb2.DESCRIPTOR.services_by_name["SearchService"],
            index_pb2.DESCRIPTOR.services_by_name["IndexService"],
            embed_pb2.DESCRIPTOR.services_by_name["EmbedService"],
            info_pb2.DESCRIPTOR.services_by_name["InfoService"])
RERANK, SEARCH, INDEX, EMBED, INFO = (s.full_name for s in SERVICES)
STORE_SERVICES = (SEARCH, INDEX)
IDLE_CONNECTION_MS = 5 * 60 * 1000  # gRPC's GOAWAY to a connection with no call; clients reconnect on their next
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _ssl(cfg: Config) -> dict:
    """uvicorn's TLS settings, the same files (and client CA, for mTLS) as gRPC's."""
    if not cfg.tls_cert:
        return {}
    import ssl

    out = {"ssl_certfile": cfg.tls_cert, "ssl_keyfile": cfg.tls_key}
    if cfg.tls_client_ca:
        out.update(ssl_ca_certs=cfg.tls_client_ca, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return out


def _credentials(cfg: Config) -> grpc.ServerCredentials | None:
    if not cfg.tls_cert:
        return None
    key, chain = Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes()
    ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


def _team(backend, device):
    """torch's thread team is resized by measurement (workers/team.py); OpenVINO (TBB) and ONNX Runtime keep
    their own thread pools, which a busy core slows far less."""
    return compute_team(device) if backend.backend == "torch" else None


async def load_models(rt: Runtime) -> None:
    """Every --embedder and --reranker, in order, each with its own batcher on the device's compute thread."""
    cfg = rt.config
    device = rt.device = pick_device(cfg.device)
    # Both are checked before anything loads, so a bad combination fails at once with what to use.
    emb_prec = cfg.embedder_precision or cfg.precision
    rr_prec = cfg.reranker_precision or cfg.precision
    for p in (emb_prec, rr_prec):
        precision.plan(p, device, cfg.backend)
    pool = compute_pool(device)  # models load and run on their device's one compute thread (workers/compute.py)
    loop = asyncio.get_running_loop()

    def load(fn, spec: ModelSpec, prec):
        return loop.run_in_executor(pool, functools.partial(fn, spec.source, device, cfg.allow_download, prec,
                                                            cfg.backend, cfg.cache_dir, alias=spec.name))

    # Every model is found before any loads: a wrong path fails at once, not after the embedder's measurements.
    missing_default = None
    for spec in [*cfg.embedders, *cfg.rerankers]:
        try:
            await asyncio.to_thread(resolve, spec.source, cfg.allow_download)
        except ModelNotFound as exc:
            if spec.source != DEFAULT_RERANKER or spec not in cfg.rerankers:
                raise  # a model the user named must load
            missing_default = exc  # the built-in default (offline): serve without it
    for spec in cfg.embedders:
        emb = await load(load_embedder, spec, emb_prec)
        rt.embedders[spec.name] = Batcher(f"embedder {spec.name}", emb, cfg.embed_limits(emb.device.type),
                                          metrics.BatcherMetrics("embedder", spec.name, cfg.embed_queue_capacity),
                                          executor=pool, team=_team(emb, device))
    rt.default_embedder = cfg.embedders[0].name
    if not cfg.reranker_enabled:
        rt.reranker_missing = ("this server runs recall-only (--reranker none); "
                               "restart it with --reranker MODEL to serve Rerank")
        log.warning("RECALL-ONLY MODE: %s", rt.reranker_missing)
        return
    for spec in cfg.rerankers:
        if missing_default is not None and spec.source == DEFAULT_RERANKER:
            continue
        rr = await load(load_reranker, spec, rr_prec)
        rt.rerankers[spec.name] = Batcher(f"reranker {spec.name}", rr, cfg.rerank_limits(rr.device.type),
                                          metrics.BatcherMetrics("reranker", spec.name, cfg.queue_capacity),
                                          executor=pool, team=_team(rr, device))
    if missing_default is not None:
        rt.reranker_missing = (f"no reranker is loaded: the default {DEFAULT_RERANKER} could not be found. Restart "
                               "with --reranker /path/to/cross-encoder, or fill the Hugging Face cache")
        what = "RECALL-ONLY MODE" if not rt.rerankers else "SKIPPING THE DEFAULT RERANKER"
        log.warning("=" * 72 + "\n%s: %s\n%s\n" + "=" * 72, what, rt.reranker_missing, missing_default)
    if rt.rerankers:
        rt.default_reranker = next(iter(rt.rerankers))


async def assemble(rt: Runtime) -> Runtime:
    """Models, their batchers, the store and recall, started: what the engine runs on, whatever serves it."""
    cfg = rt.config
    await load_models(rt)
    rt.store = Store(cfg.milvus_uri, cfg.milvus_token, engine_nice=cfg.engine_nice,
                     min_free_bytes=cfg.min_free_disk_mb * 1_000_000)
    if rt.store.embedded and cfg.seal_quiet_seconds > 0:
        rt.sealer = Sealer(rt.store, cfg.seal_quiet_seconds, cfg.seal_max_rows)
        rt.sealer.start()
    if rt.store.engine is not None and cfg.engine_recycle_mb > 0:
        rt.recycler = Recycler(rt.store.conn, cfg.engine_recycle_mb, cfg.engine_recycle_check_seconds)
        rt.recycler.start()
    rt.recall = Batcher("recall", RecallBackend(rt.store), cfg.recall_limits,
                        metrics.BatcherMetrics("recall", "", cfg.recall_queue_capacity), passthrough=(TandemError,))
    for b in rt.batchers():
        b.start()
        m = b.backend
        if m.kind != "recall":
            metrics.MODEL_INFO.labels(m.name, m.kind, str(m.device), m.dtype, m.backend, m.precision).set(1)
    return rt


async def release(rt: Runtime) -> None:
    """Stop the batchers (failing what is still queued), the sealer and the store."""
    for b in rt.batchers():
        await b.stop(drain_seconds=0)
    if rt.sealer is not None:
        await rt.sealer.stop()
    if rt.recycler is not None:
        await rt.recycler.stop()
    if rt.store is not None:
        await asyncio.to_thread(rt.store.close)


class TandemServer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.rt = Runtime(cfg)
        self.server: grpc.aio.Server | None = None
        self.http = None  # tandem.server.http.server.HttpServer, when --http-port is set
        self.http_port = 0
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self._metrics_http = None
        self.gate = Gate()  # the access policy, read at start (a bad one fails start-up before any model loads)
        self._monitor: asyncio.Task | None = None
        self._policy_watch: asyncio.Task | None = None
        self._preload: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        self._hurry = asyncio.Event()  # a second signal: end the drain delay now

    async def start(self) -> None:
        cfg, rt = self.cfg, self.rt
        self.gate = Gate.from_config(cfg)
        tracing.setup(cfg.otlp_endpoint, tandem_version())
        if self.gate.policy is not None and self.gate.policy.uses_identities and not cfg.tls_client_ca:
            log.warning("the access policy names mTLS identities, but --tls-client-ca is not set: no client "
                        "presents a certificate, so those principals cannot authenticate")
        http_socket = None
        if cfg.http_port:  # bound first: a port in use fails start-up at once, before any model loads
            from tandem.server.http.server import bind

            http_socket = bind(cfg.http_host, cfg.http_port)
        await assemble(rt)
        if cfg.warmup:
            await self._warmup()

        admission = Admission(cfg.max_concurrent_requests)
        self.server = grpc.aio.server(
            interceptors=[ServerInterceptor(admission, self.gate, cfg.stall_timeout_seconds)],
            options=[("grpc.max_receive_message_length", cfg.max_message_bytes),
                     ("grpc.max_send_message_length", cfg.max_message_bytes),
                     ("grpc.so_reuseport", 0),
                     # Connections that hold resources without using them: a handshake that never finishes, more
                     # calls at once than a client needs, a connection with no call for minutes (a balancer's
                     # health Watch is a call, so a balanced client's connection is never idle).
                     ("grpc.server_handshake_timeout_ms", int(cfg.stall_timeout_seconds * 1000)),
                     ("grpc.max_concurrent_streams", cfg.max_streams_per_connection),
                     ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS)],
        )
        engine = Engine.over(rt)  # the one engine every transport adapts
        servicers = {RERANK: RerankService(engine), SEARCH: SearchService(engine), INDEX: IndexService(engine),
                     EMBED: EmbedService(engine), INFO: InfoService(engine)}
        rerank_pb2_grpc.add_RerankServiceServicer_to_server(servicers[RERANK], self.server)
        search_pb2_grpc.add_SearchServiceServicer_to_server(servicers[SEARCH], self.server)
        index_pb2_grpc.add_IndexServiceServicer_to_server(servicers[INDEX], self.server)
        embed_pb2_grpc.add_EmbedServiceServicer_to_server(servicers[EMBED], self.server)
        info_pb2_grpc.add_InfoServiceServicer_to_server(servicers[INFO], self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (RERANK, SEARCH, INDEX, EMBED, INFO, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)

        addr = f"{cfg.host}:{cfg.port}"
        creds = _credentials(cfg)
        self.port = self.server.add_secure_port(addr, creds) if creds else self.server.add_insecure_port(addr)
        if cfg.metrics_port >= 0:
            self._metrics_http, self.metrics_port = metrics.serve_metrics(cfg.metrics_host, cfg.metrics_port)
        # Every status is settled before the port opens (the servicer starts "" as SERVING).
        await self.health.set("", NOT_SERVING)
        await self.health.set(RERANK, SERVING if rt.rerankers else NOT_SERVING)
        for svc in (EMBED, INFO):
            await self.health.set(svc, SERVING)
        await self._check_store()
        await self.server.start()
        if http_socket is not None:
            from tandem.server.http.server import HttpServer  # FastAPI and uvicorn load only when HTTP is on

            self.http = HttpServer(engine, cfg, self.gate, admission, servicers, SERVICES, _ssl(cfg))
            await self.http.start(http_socket)
            self.http_port = self.http.port
        await self.health.set("", SERVING)
        self._monitor = asyncio.create_task(self._watch_store())
        if cfg.auth_policy:
            self._policy_watch = asyncio.create_task(self.gate.watch(), name="access-policy")
        # Open (load) every collection now, in the background: the engine loads one lazily on first access,
        # which takes about 19 s at 300k documents, and the first user query should not pay for it.
        self._preload = asyncio.create_task(asyncio.to_thread(self._load_collections))
        log.info("tandem serving gRPC on %s%s (HTTP %s, metrics :%s, storage %s, reranker %s, event loop %s)%s",
                 addr if cfg.port else f"{cfg.host}:{self.port}", " with TLS" if creds else "",
                 f"{cfg.http_host}:{self.http_port}" if self.http else "off", self.metrics_port, rt.store.kind,
                 ", ".join(rt.rerankers) or "NONE (recall-only)",
                 type(asyncio.get_running_loop()).__module__.split(".")[0],
                 f"; console {self.console_url()}" if self.http else "")

    def console_url(self) -> str:
        """The console's address as a browser on this machine reaches it."""
        host = self.cfg.http_host
        host = "localhost" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
        scheme = "https" if self.cfg.tls_cert else "http"
        return f"{scheme}://{host}:{self.http_port}/console"

    def _load_collections(self) -> None:
        try:
            names = self.rt.store.list()  # describing a collection loads it
            log.info("collections loaded: %s", ", ".join(names) or "none")
        except StoreError as exc:
            log.warning("loading collections at start failed (%s); they load on first use", exc.message)

    async def _warmup(self) -> None:
        for b in [*self.rt.rerankers.values(), *self.rt.embedders.values()]:
            item = ("warm up", "warm up") if b.backend.kind == "reranker" else "warm up"
            await b.submit([item])

    async def _check_store(self) -> bool:
        try:
            await asyncio.to_thread(self.rt.store.ping)
            ok = True
        except StoreError as exc:
            log.warning("store check failed: %s", exc.message)
            ok = False
        for svc in STORE_SERVICES:
            await self.health.set(svc, SERVING if ok else NOT_SERVING)
        return ok

    async def _watch_store(self, every: float = 2.0) -> None:
        # Health follows the store: NOT_SERVING while Milvus is unreachable, back on its own.
        while True:
            await asyncio.sleep(every)
            await self._check_store()

    async def stop(self, grace: float | None = None, delay: float | None = None) -> None:
        """Report NOT_SERVING at once and keep serving for the drain delay (a load balancer needs a few probes to
        notice), then refuse new calls and give in-flight ones the grace period; release everything."""
        grace = self.cfg.grace_seconds if grace is None else grace
        delay = self.cfg.drain_delay_seconds if delay is None else delay
        for task in (self._monitor, self._policy_watch):
            if task:
                task.cancel()
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.not_serving()
        try:
            await asyncio.wait_for(self._hurry.wait(), delay)
        except asyncio.TimeoutError:
            pass
        # Reranks still running shortly before the grace ends give up, so their Searches can answer with recall
        # results (degraded) instead of being cut off with UNAVAILABLE.
        loop = asyncio.get_running_loop()
        cutoff = loop.call_later(max(0.0, grace - min(1.0, grace / 4)), self.rt.draining.set)
        # Both transports stop accepting and drain their in-flight calls together, within the same grace.
        await asyncio.gather(*([self.server.stop(grace)] if self.server is not None else []),
                             *([self.http.stop()] if self.http is not None else []))
        cutoff.cancel()
        await release(self.rt)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        # The last spans, sent while the collector answers; one that is gone must not hold up the stop.
        flush = asyncio.ensure_future(asyncio.to_thread(tracing.shutdown))
        await asyncio.wait([flush], timeout=5.0)
        self._stopped.set()

    def hurry(self) -> bool:
        """End the drain delay now (in-flight calls keep their grace); False when it was already ended."""
        if self._hurry.is_set():
            return False
        self._hurry.set()
        return True

    async def wait(self) -> None:
        await self._stopped.wait()


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 x cores). With torch,
    tokenizer, gRPC and Milvus Lite threads all allocating variable-sized buffers, freed memory stays
    spread over many arenas and RSS creeps up for hours. Two arenas keep it flat; must run before
    those threads start."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_ARENA_MAX = -8
        libc.mallopt(M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


async def _trim_heap(every: float = 30.0) -> None:
    """Hand freed heap pages back to the OS now and then (glibc keeps them otherwise)."""
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    while True:
        await asyncio.sleep(every)
        await asyncio.to_thread(trim, 0)


async def serve(cfg: Config) -> None:
    srv = TandemServer(cfg)
    await srv.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []

    def on_signal(sig: signal.Signals) -> None:
        if not stopping:
            log.info("%s: NOT_SERVING now, serving %.1fs more, then draining for up to %.1fs (signal again to "
                     "end the delay now)", sig.name, cfg.drain_delay_seconds, cfg.grace_seconds)
            stopping.append(loop.create_task(srv.stop()))
        elif srv.hurry():  # an operator who means "now": in-flight calls still get the grace
            log.info("%s again: ending the drain delay now; draining for up to %.1fs", sig.name, cfg.grace_seconds)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, srv.gate.reload)  # the access policy; never stops the server
    trimmer = loop.create_task(_trim_heap())
    await srv.wait()
    trimmer.cancel()
    log.info("tandem stopped")

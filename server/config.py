"""Server configuration: one dataclass, filled from defaults, then TANDEM_* environment
variables, then command-line flags (highest precedence).

Every field is a flag (`--max-batch-pairs`) and an environment variable
(`TANDEM_MAX_BATCH_PAIRS`); the help text lives next to the field.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from tandem.server.models import DEFAULT_EMBEDDER, DEFAULT_RERANKER
from tandem.workers import BatchLimits


EVENT_LOOPS = ("auto", "uvloop", "asyncio")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ModelSpec:
    """One --reranker/--embedder value: the name clients use, and where the weights come from."""

    name: str
    source: str  # a local folder or a Hugging Face id

    @classmethod
    def parse(cls, value: str) -> "ModelSpec":
        value = value.strip()
        left, eq, right = value.partition("=")
        if eq and MODEL_NAME.fullmatch(left):
            if not right:
                raise ValueError(f"{value!r}: nothing after '='; use NAME=PATH_OR_HUB_ID")
            return cls(left, right)
        if not value:
            raise ValueError("an empty model name; use NAME=PATH_OR_HUB_ID or PATH_OR_HUB_ID")
        return cls(value, value)


def _f(default, help: str, secret: bool = False):
    return field(default=default, repr=not secret, metadata={"help": help, "secret": secret})


@dataclass
class Config:
    # transport
    host: str = _f("0.0.0.0", "gRPC bind address")
    port: int = _f(50051, "gRPC port (0 picks a free one)")
    metrics_host: str = _f("0.0.0.0", "bind address of the Prometheus /metrics endpoint")
    metrics_port: int = _f(9100, "Prometheus /metrics port (0 picks a free one, -1 disables)")
    http_host: str = _f("0.0.0.0", "HTTP bind address (the Cohere, Jina, TEI and OpenAI dialects, and Connect)")
    http_port: int = _f(8080, "HTTP port; 0 turns HTTP off")
    # models
    reranker: tuple = _f((DEFAULT_RERANKER,), "cross-encoder, as NAME=PATH_OR_HUB_ID or PATH_OR_HUB_ID (named "
                                               "after itself); repeat for several, the first is the default "
                                               "(env: comma-separated); 'none' = recall-only")
    embedder: tuple = _f((DEFAULT_EMBEDDER,), "bi-encoder for collections and Embed, in the same forms as "
                                               "--reranker; repeat for several, the first is the default")
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _f("auto", "auto | fp32 | bf16 | fp16 | int8 for both models; auto = fp16 on CUDA; on a CPU, "
                                "the fastest measured precision whose scores agree with fp32 (int8 only if it "
                                "passes that gate too)")
    reranker_precision: str = _f("", "the reranker's precision, when it differs from --precision")
    embedder_precision: str = _f("", "the embedder's precision, when it differs from --precision")
    backend: str = _f("auto", "auto | torch | openvino | onnxruntime; auto = torch on CUDA; on a CPU, each model is "
                              "timed on every backend at load and served by the fastest that passes the gate "
                              "(each measurement is cached); others force one backend (converted locally on first "
                              "load and cached)")
    cache_dir: str = _f("", "where converted models and backend choices are cached; default ~/.cache/tandem")
    allow_download: bool = _f(True, "download models from the Hugging Face Hub when not found locally")
    # storage
    milvus_uri: str = _f("./data/tandem.db", "embedded Milvus data file (*.db), or http://host:19530 for Milvus "
                                             "Standalone/Distributed")
    milvus_token: str = _f("", "Milvus token (user:password or API key)", secret=True)
    engine_nice: int = _f(10, "embedded Milvus: niceness added to its child process, so that on a saturated CPU "
                              "model work runs before search work (0 = same priority)")
    seal_quiet_seconds: float = _f(1.0, "embedded Milvus: seal a collection once its writes have been quiet this "
                                        "long (0 = never; a Milvus server seals by itself)")
    seal_max_rows: int = _f(10000, "embedded Milvus: seal at once when this many written rows are unsealed")
    engine_recycle_mb: int = _f(1024, "embedded Milvus: restart its child once its memory has grown this many MB "
                                      "since it started (milvus-lite keeps deleted and replaced rows in memory and "
                                      "cannot compact; a restart gives it back, losing nothing); 0 = never")
    engine_recycle_check_seconds: float = _f(30.0, "embedded Milvus: how often its child's memory is read")
    min_free_disk_mb: int = _f(256, "embedded Milvus: refuse writes (RESOURCE_EXHAUSTED) while the data disk has "
                                    "less free space than this, so the engine never runs out mid-write (0 = no floor)")
    # reranker batching
    max_batch_pairs: int = _f(32, "pairs per reranker batch")
    max_batch_tokens: int = _f(0, "padded tokens per reranker batch (longest pair x pairs); "
                                  "0 = auto: 1024 on CPU, 16384 on GPU")
    max_wait_ms: float = _f(0.0, "when the model is idle, wait up to this long for a batch to fill")
    queue_capacity: int = _f(4096, "pairs the reranker queue holds before refusing with RESOURCE_EXHAUSTED")
    split_by_length: bool = _f(True, "run a batch of mixed lengths as several forward passes of similar length "
                                     "when the padding saved outweighs a pass's fixed cost (both models; the "
                                     "costs are measured at load)")
    # embedder batching
    embed_max_batch: int = _f(64, "texts per embedder batch")
    embed_max_batch_tokens: int = _f(0, "padded tokens per embedder batch; 0 = auto: 1024 on CPU, 16384 on GPU")
    embed_queue_capacity: int = _f(16384, "texts the embedder queue holds")
    # recall batching
    recall_max_batch: int = _f(64, "query vectors per Milvus search call")
    recall_max_wait_ms: float = _f(0.0, "idle wait for more queries before a Milvus search")
    recall_queue_capacity: int = _f(1024, "searches the recall queue holds")
    # request limits
    max_documents_per_request: int = _f(1000, "documents per Rerank/Upsert call, texts per Embed call")
    max_text_bytes: int = _f(262144, "longest accepted text, in UTF-8 bytes")
    max_message_bytes: int = _f(64 * 1024 * 1024, "largest gRPC message accepted")
    max_recall_k: int = _f(1000, "largest recall_k a Search may ask for")
    rerank_depth: int = _f(0, "Search: recall candidates the reranker scores unless a request says (its "
                              "rerank_depth); the rest follow in recall order. 0 = auto: "
                              "50 on a CPU, every candidate on a GPU")
    max_tokens_per_doc: int = _f(0, "Search: tokens of each candidate the reranker reads unless a request says "
                                    "(its max_tokens_per_doc). 0 = auto: 128 on a CPU, the model's whole window on "
                                    "a GPU")
    max_windows_per_document: int = _f(64, "Rerank with LONG_DOCUMENTS_CHUNK: most windows one document may split "
                                           "into")
    max_concurrent_requests: int = _f(512, "RPCs in flight before new ones get RESOURCE_EXHAUSTED")
    stall_timeout_seconds: float = _f(30.0, "a request that stops arriving is ended after this long: HTTP headers "
                                            "not complete this long after the connection (or their first byte), or "
                                            "a body pausing this long, get 408 and the connection closes; a gRPC "
                                            "client stream (UpsertStream, Import) sending nothing this long ends "
                                            "DEADLINE_EXCEEDED; a gRPC connection that does not finish its "
                                            "handshake in this time is closed")
    max_http_connections: int = _f(1024, "HTTP connections (and requests) at once; beyond it each request gets 503 "
                                         "at once")
    max_streams_per_connection: int = _f(128, "gRPC calls at once on one HTTP/2 connection; a client queues the "
                                              "rest, or sees UNAVAILABLE (refused stream), which it may retry")
    # lifecycle
    event_loop: str = _f("auto", "auto | uvloop | asyncio: the server's event loop; auto = uvloop where it is "
                                 "installed (a dependency on Linux and macOS)")
    drain_delay_seconds: float = _f(5.0, "on SIGTERM, health reports NOT_SERVING at once but calls are still served "
                                         "this long, so load balancers stop sending before the listener closes")
    grace_seconds: float = _f(15.0, "after the drain delay, how long in-flight and queued work may take to finish; "
                                    "a Search whose rerank would outlast it returns its recall results, flagged "
                                    "degraded")
    warmup: bool = _f(True, "run one batch through each model at start")
    # security
    tls_cert: str = _f("", "PEM server certificate chain; enables TLS")
    tls_key: str = _f("", "PEM server private key")
    tls_client_ca: str = _f("", "PEM CA bundle; when set, clients must present a certificate it signed (mTLS)")
    auth_policy: str = _f("", "access policy file (TOML): principals, their tokens (hashed) or mTLS identities, scopes "
                              "per collection glob and quotas; reloaded on SIGHUP and when it changes. Enables auth")
    auth_tokens_file: str = _f("", "file with one accepted bearer token per line; enables auth (every scope on every "
                                   "collection)")
    auth_tokens: str = _f("", "comma-separated accepted bearer tokens; enables auth (every scope on every "
                              "collection)", secret=True)
    auth_exempt_health: bool = _f(True, "health and reflection stay reachable without a token")
    log_level: str = _f("INFO", "DEBUG | INFO | WARNING | ERROR")
    otlp_endpoint: str = _f("", "send OpenTelemetry traces to this OTLP collector (grpc: host:4317, or "
                                "http://host:4317 for plaintext; with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: "
                                "http://host:4318); default: OTEL_EXPORTER_OTLP_ENDPOINT, else tracing is off")

    def rerank_limits(self, device: str = "cpu") -> BatchLimits:
        return BatchLimits(self.max_batch_pairs, batch_tokens(self.max_batch_tokens, device), self.max_wait_ms,
                           self.queue_capacity, self.split_by_length)

    def embed_limits(self, device: str = "cpu") -> BatchLimits:
        return BatchLimits(self.embed_max_batch, batch_tokens(self.embed_max_batch_tokens, device),
                           self.max_wait_ms, self.embed_queue_capacity, self.split_by_length)

    @property
    def recall_limits(self) -> BatchLimits:
        return BatchLimits(self.recall_max_batch, 0, self.recall_max_wait_ms, self.recall_queue_capacity)

    @property
    def reranker_enabled(self) -> bool:
        return bool(self.rerankers)

    @property
    def rerankers(self) -> list[ModelSpec]:
        if [x.lower() for x in self.reranker] in ([], ["none"], [""]):
            return []
        return [ModelSpec.parse(x) for x in self.reranker]

    @property
    def embedders(self) -> list[ModelSpec]:
        return [ModelSpec.parse(x) for x in self.embedder]

    def validate(self) -> None:
        if not self.embedder:
            raise ValueError("at least one --embedder is needed")
        if len(self.reranker) > 1 and any(x.lower() == "none" for x in self.reranker):
            raise ValueError("--reranker none (recall-only) cannot be combined with other rerankers")
        for flag, specs in (("--reranker", self.rerankers), ("--embedder", self.embedders)):
            names = [m.name for m in specs]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise ValueError(f"{flag}: the name {twice[0]!r} is given more than once; give each model its own "
                                 f"name with NAME=PATH_OR_HUB_ID")
        if self.max_batch_tokens < 0 or self.embed_max_batch_tokens < 0:
            raise ValueError("max_batch_tokens and embed_max_batch_tokens must be 0 (auto) or positive")
        if self.rerank_depth < 0 or self.max_tokens_per_doc < 0:
            raise ValueError("rerank_depth and max_tokens_per_doc must be 0 (auto) or positive")
        positive = ["max_batch_pairs", "queue_capacity", "embed_max_batch", "embed_queue_capacity",
                    "recall_max_batch", "recall_queue_capacity", "max_documents_per_request",
                    "max_text_bytes", "max_message_bytes", "max_recall_k", "max_concurrent_requests", "max_windows_per_document",
                    "seal_max_rows", "stall_timeout_seconds", "max_http_connections", "max_streams_per_connection"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        from tandem.server.precision import BACKENDS, PRECISIONS

        for name in ("precision", "reranker_precision", "embedder_precision"):
            v = getattr(self, name)
            if v and v.lower() not in PRECISIONS:
                raise ValueError(f"{name} is {v!r}; use one of {', '.join(PRECISIONS)}")
        if self.event_loop not in EVENT_LOOPS:
            raise ValueError(f"event_loop is {self.event_loop!r}; use one of {', '.join(EVENT_LOOPS)}")
        if self.event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            raise ValueError("event_loop is 'uvloop', but uvloop is not installed: pip install uvloop, "
                             "or use --event-loop asyncio")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend is {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if "://" not in self.milvus_uri:
            name = Path(self.milvus_uri).name
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,36}", name):
                raise ValueError(f"milvus_uri: the embedded engine's data file name {name!r} must be 1-36 characters "
                                 "of letters, digits, '.', '_' and '-' (the folder may be any path)")
        if self.min_free_disk_mb < 0:
            raise ValueError("min_free_disk_mb must be 0 (no floor) or positive")
        if self.engine_recycle_mb < 0 or self.engine_recycle_check_seconds <= 0:
            raise ValueError("engine_recycle_mb must be 0 (never) or positive, engine_recycle_check_seconds positive")
        if self.seal_quiet_seconds < 0:
            raise ValueError("seal_quiet_seconds must be 0 (never) or positive")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        from tandem.server import tracing

        if tracing.endpoint(self.otlp_endpoint):
            tracing.protocol()  # a protocol Tandem cannot export by fails start-up, not the first span


# Search's rerank defaults on a CPU: a reranked Search over Cranfield answers in about a second on 2 cores
# (docs/benchmarks.md, scenario 17), and published cross-encoder results put most of the gain in the top few
# dozen candidates. A GPU reranks every candidate at full length within the same time.
AUTO_RERANK_DEPTH = {"cpu": 50, "cuda": 0}
AUTO_TOKENS_PER_DOC = {"cpu": 128, "cuda": 0}


def search_rerank_defaults(cfg: "Config", device: str) -> tuple[int, int]:
    """(rerank depth, tokens per document) for a Search that does not say; 0 means no limit."""
    key = "cuda" if str(device).startswith("cuda") else "cpu"
    return (cfg.rerank_depth or AUTO_RERANK_DEPTH[key], cfg.max_tokens_per_doc or AUTO_TOKENS_PER_DOC[key])


# On a CPU, a forward pass gets slower *per pair* once a batch holds more than ~1k padded tokens (attention
# and activations fall out of cache): MiniLM-L6 on 2 cores scores abstracts at 27 pairs/s in batches of 4 and
# 18 in batches of 32. A GPU wants large batches. See docs/benchmarks.md.
AUTO_BATCH_TOKENS = {"cpu": 1024, "cuda": 16384}


def batch_tokens(value: int, device: str) -> int:
    """The padded-token budget for a batcher on `device` ("cpu", "cuda", "cuda:1"); 0 means auto."""
    if value:
        return value
    return AUTO_BATCH_TOKENS["cuda" if str(device).startswith("cuda") else "cpu"]


def loop_runner(choice: str):
    """`run(coroutine)` on the chosen event loop (`auto`: uvloop when installed)."""
    if choice != "asyncio" and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.run
    import asyncio

    return asyncio.run


def _parse_bool(v: str) -> bool:
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def _parse_list(v: str) -> tuple:
    return tuple(x.strip() for x in v.split(",") if x.strip())


def env_name(field_name: str) -> str:
    return "TANDEM_" + field_name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field; defaults stay None so we can tell 'not given'."""
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kind = {"bool": _parse_bool, "int": int, "float": float}.get(str(f.type), str)
        env = env_name(f.name)
        if f.type == "tuple":  # repeatable
            parser.add_argument(flag, action="append", default=None, help=f"{f.metadata['help']} (default "
                                f"{','.join(f.default)}); env {env}")
            continue
        default = "" if f.metadata.get("secret") else f" (default {f.default!r})"
        help_ = f"{f.metadata['help']}{default}; env {env}"
        if kind is _parse_bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, default=None, help=help_)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_)


def from_sources(args: argparse.Namespace | None = None, environ: dict | None = None) -> Config:
    environ = os.environ if environ is None else environ
    values = {}
    for f in fields(Config):
        kind = {"bool": _parse_bool, "int": int, "float": float, "tuple": _parse_list}.get(str(f.type), str)
        raw = getattr(args, f.name, None) if args is not None else None
        if isinstance(raw, list):
            raw = tuple(raw)
        if raw is None and env_name(f.name) in environ:
            try:
                raw = kind(environ[env_name(f.name)])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f"{env_name(f.name)}: {exc}") from None
        if raw is not None:
            values[f.name] = raw
    cfg = Config(**values)
    cfg.validate()
    return cfg


def markdown_table() -> str:
    """The README's configuration table, from the fields above: `python -m tandem.server.config > table.md`."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for f in fields(Config):
        default = "" if f.metadata.get("secret") else f"`{f.default!r}`"
        if f.type == "tuple":
            default = f"`{','.join(f.default)!r}`"
        meaning = f.metadata["help"].replace("|", "\\|")
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{env_name(f.name)}` | {default} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())

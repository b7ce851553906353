"""What the server runs and enforces: its version, models, effective limits and storage."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from tandem.server.config import search_rerank_defaults
from tandem.server.runtime import Runtime


def tandem_version() -> str:
    try:
        return version("tandem-search")
    except PackageNotFoundError:
        return "dev"


@dataclass(frozen=True)
class Model:
    name: str
    kind: str  # reranker | embedder
    device: str
    max_seq_length: int
    source: str
    dimension: int  # embedders; 0 for rerankers
    dtype: str
    precision: str
    backend: str
    parameter_bytes: int
    choice: str = ""  # why this backend and precision
    trials: tuple[Trial, ...] = ()  # the options measured at load, when there was a choice


@dataclass(frozen=True)
class Trial:
    backend: str
    precision: str
    items_per_second: float
    judged: bool
    agrees: bool
    ndcg_mean: float
    ndcg_worst: float
    top_loss: float
    min_cosine: float
    chosen: bool
    error: str
    verdict: str


@dataclass(frozen=True)
class Limits:
    max_documents_per_request: int
    max_batch_size: int
    max_batch_tokens: int
    queue_capacity: int
    max_concurrent_requests: int
    max_text_bytes: int
    max_message_bytes: int
    max_recall_k: int
    max_wait_ms: float
    rerank_depth: int
    max_tokens_per_doc: int


@dataclass(frozen=True)
class ServerInfo:
    version: str
    models: list[Model]
    limits: Limits
    default_reranker: str
    default_embedder: str
    storage: str


def models(rt: Runtime) -> list[Model]:
    return [Model(m.name, m.kind, str(m.device), m.max_length, m.source, getattr(m, "dimension", 0), m.dtype,
                  m.precision, m.backend, getattr(m, "parameter_bytes", 0), getattr(m, "choice_reason", ""),
                  _trials(getattr(m, "choice", None)))
            for m in (b.backend for b in [*rt.rerankers.values(), *rt.embedders.values()])]


def _trials(choice) -> tuple[Trial, ...]:
    if choice is None:
        return ()
    return tuple(Trial(t.option.backend, t.option.precision, t.items_per_second, t.judged, t.agrees, t.ndcg_mean,
                       t.ndcg_worst, t.top_loss, t.min_cosine, t.option == choice.option, t.error, t.verdict())
                 for t in choice.trials)


def describe(rt: Runtime) -> ServerInfo:
    c = rt.config
    batcher = next(iter(rt.rerankers.values()), None)  # the effective limits, after "auto"
    depth, tokens = search_rerank_defaults(c, rt.device)
    return ServerInfo(
        version=tandem_version(),
        models=models(rt),
        limits=Limits(
            max_documents_per_request=c.max_documents_per_request,
            max_batch_size=batcher.limits.max_batch_size if batcher else c.max_batch_pairs,
            max_batch_tokens=batcher.limits.max_batch_tokens if batcher else 0,
            queue_capacity=c.queue_capacity,
            max_concurrent_requests=c.max_concurrent_requests,
            max_text_bytes=c.max_text_bytes,
            max_message_bytes=c.max_message_bytes,
            max_recall_k=c.max_recall_k,
            max_wait_ms=c.max_wait_ms,
            rerank_depth=depth,
            max_tokens_per_doc=tokens,
        ),
        default_reranker=rt.default_reranker,
        default_embedder=rt.default_embedder,
        storage=rt.store.kind if rt.store is not None else "",
    )

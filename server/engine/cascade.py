"""The rerank cascade of a Search: which stages run, each stage's scoring, and what a skipped stage says.

A stage that cannot run (overloaded, out of time, model failure, shutting down, recall-only server) is skipped
and the Search answers from what it has, saying why (`degraded_reason`), unless the caller set require_rerank.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tandem.server import metrics, tracing
from tandem.server.chunking import heads
from tandem.server.engine.rerank import sigmoid
from tandem.server.errors import invalid
from tandem.server.runtime import NoReranker, Runtime
from tandem.workers import BackendError, Batcher, DeadlineExceeded, Overloaded, WorkerStopped

log = logging.getLogger(__name__)

MAX_STAGES = 4
SKIPPABLE = (Overloaded, DeadlineExceeded, BackendError, WorkerStopped, NoReranker)


@dataclass(frozen=True)
class Stage:
    model: str  # "" for the default reranker
    keep: int = 0  # candidates passed on to the next stage; 0 keeps every one


@dataclass(frozen=True)
class StageTiming:
    model: str
    seconds: float
    scored: int
    skipped: bool


@dataclass(frozen=True)
class Planned:
    model: str  # the model's name, for timings and reasons
    batcher: Batcher | None  # None on a recall-only server: the stage degrades (or fails, with require_rerank)
    keep: int


def plan(rt: Runtime, rerank: bool | None, reranker: str, stages: tuple[Stage, ...], top_n: int) -> list[Planned]:
    """The stages asked for; [] when rerank is off. Unknown models are NOT_FOUND before any work.
    rerank None means "not said" (on)."""
    want = True if rerank is None else rerank
    if stages:
        if reranker:
            raise invalid("set either reranker (one stage) or rerank_stages (a cascade), not both")
        if not want:
            raise invalid("rerank is false but rerank_stages is set; drop one of them")
        if len(stages) > MAX_STAGES:
            raise invalid(f"{len(stages)} rerank stages; at most {MAX_STAGES} are allowed")
        asked = list(stages)
    elif want:
        asked = [Stage(reranker)]
    else:
        return []
    out = []
    configured = [m.name for m in rt.config.rerankers]  # recall-only: the model that is missing
    for k, s in enumerate(asked):
        if s.keep and s.keep < top_n:
            raise invalid(f"rerank_stages[{k}].keep is {s.keep}, below top_n ({top_n}); keep at least top_n, "
                          "or 0 to keep every candidate")
        batcher = rt.reranker_batcher(s.model) if rt.rerankers else None
        name = batcher.backend.name if batcher else s.model or (configured[0] if configured else "none")
        out.append(Planned(name, batcher, s.keep))
    return out


@dataclass
class Outcome:
    order: list[int]  # candidate positions, best first
    scores: dict[int, float]  # position -> relevance from the last stage that scored it
    reasons: list[str]  # why stages were skipped
    timings: list[StageTiming]


async def run(rt: Runtime, stages: list[Planned], query: str, texts: list[str], *, require: bool,
              deadline: float | None, max_tokens: int) -> Outcome:
    """Each stage reranks the candidates the previous one kept. A stage sorts stably, so ties keep the order
    of the stage before; a skipped stage leaves the order as it was."""
    out = Outcome(list(range(len(texts))), {}, [], [])
    for k, stage in enumerate(stages):
        ts = rt.clock()
        with tracing.stage("rerank", {"tandem.stage": k + 1, "tandem.model": stage.model,
                                      "tandem.documents": len(out.order), "tandem.keep": stage.keep}) as span:
            try:
                if stage.batcher is None:  # recall-only server
                    raise NoReranker(rt.reranker_missing)
                scores = await _score(rt, stage.batcher, query, [texts[i] for i in out.order], deadline,
                                      max_tokens)
                out.scores.update(zip(out.order, scores))
                out.order.sort(key=lambda i: -out.scores[i])
                scored = len(scores)
            except SKIPPABLE as exc:
                if require:
                    raise
                what = f"rerank stage {k + 1} ({stage.model})" if len(stages) > 1 else "rerank"
                code, words = _degraded(exc)
                detail = getattr(exc, "message", None) or str(exc)
                out.reasons.append(f"{what} skipped because {words}" + (
                    f" ({detail})" if code != "no_reranker" else f": {detail}"))
                metrics.DEGRADED.labels(code).inc()
                log.debug("search degraded: %s", out.reasons[-1])
                tracing.flag(span, out.reasons[-1])
                span.set_attribute("tandem.skipped", code)
                scored = 0
            if span.is_recording():
                span.set_attribute("tandem.pairs", scored)
        if stage.keep:
            del out.order[stage.keep:]
        out.timings.append(StageTiming(stage.model, rt.clock() - ts, scored, not scored))
    return out


def _reserve(remaining: float) -> float:
    """Time kept back from a rerank stage so a degraded answer still makes the deadline."""
    return max(0.005, min(0.05, 0.2 * remaining))


async def _score(rt: Runtime, batcher: Batcher, query: str, texts: list[str], deadline: float | None,
                 max_tokens: int) -> list[float]:
    budget = None if deadline is None else deadline - _reserve(deadline - rt.clock())
    if max_tokens:
        texts = await asyncio.to_thread(heads, rt.splitter(batcher), texts, max_tokens)
    if rt.draining.is_set():
        raise WorkerStopped("the server is shutting down")
    work = asyncio.ensure_future(batcher.submit([(query, t) for t in texts], deadline=budget))
    stop = asyncio.ensure_future(rt.draining.wait())
    try:
        await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
        if not work.done():
            work.cancel()  # drops its queued pairs
    if not work.done() or work.cancelled():
        raise WorkerStopped("the server is shutting down and the rerank would outlast its grace period")
    logits, _ = work.result()
    return [sigmoid(x) for x in logits]


def _degraded(exc: Exception) -> tuple[str, str]:
    """(metric reason, words for people) for a rerank stage that was skipped."""
    if isinstance(exc, Overloaded):
        return "overloaded", "the reranker is overloaded"
    if isinstance(exc, DeadlineExceeded):
        return "deadline_exceeded", "it could not finish before the call's deadline"
    if isinstance(exc, BackendError):
        return "model_error", "the model failed on this batch"
    if isinstance(exc, WorkerStopped):
        return "shutting_down", "the server is shutting down"
    return "no_reranker", "no reranker is loaded"

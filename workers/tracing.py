"""Spans for the work behind a traced call: its stages, its time queued and computing, and the batches it rode.

A batch serves many requests, each in its own trace, so a batch span starts a trace of its own and links to the
span of every traced request it served; each request gets `queue` and `compute` children that link back to the
batches it rode. One slow request leads to its batch, and from there to the requests that shared it.

These spans are children of a call whose server span the SDK's tracer made and sampled (server/tracing.py), so
they follow its decision, as the SDK's parent-based samplers do. They are built whole when they end, as the SDK's
ReadableSpan, and handed to its span processor (the batch processor and the OTLP exporter): about 1 us each on
this path, against about 30 us for a tracer's live span on the 2-core machines Tandem is measured on, where every
microsecond a call spends on tracing is taken from the model (benchmarks/tracing.py).

Off (nothing installed, or a call that is not sampled), `PARENT` is None and every function here returns at once.
"""

from __future__ import annotations

import random
import time
from contextvars import ContextVar
from typing import Any, Sequence

from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

# The span a traced call's work is a child of: the call's, then the stage it is in. None: not traced.
PARENT: ContextVar[SpanContext | None] = ContextVar("tandem_trace_parent", default=None)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_sink = None  # (span processor's on_end, resource, instrumentation scope) while tracing is on
_ReadableSpan = _Event = None


def install(on_end, resource, scope) -> None:
    """Send spans to an SDK span processor (server/tracing.py calls this when it sets up the SDK)."""
    global _sink, _ReadableSpan, _Event
    from opentelemetry.sdk.trace import Event, ReadableSpan

    _ReadableSpan, _Event = ReadableSpan, Event
    _sink = (on_end, resource, scope)


def uninstall() -> None:
    global _sink
    _sink = None


def request_context() -> SpanContext | None:
    """The span a batcher's items belong to, when their call is traced."""
    return PARENT.get() if _sink is not None else None


def _ns(perf: float) -> int:
    """A time.perf_counter() reading as the epoch nanoseconds spans use."""
    return time.time_ns() - time.perf_counter_ns() + int(perf * 1e9)


class Span:
    """A span of Tandem's own work, recorded when it ends. As a context manager it is the parent of what runs
    inside, and a failure that leaves it marks it ERROR with the failure's message."""

    __slots__ = ("name", "context", "parent", "attributes", "links", "start", "status", "events", "_token")

    def __init__(self, name: str, parent: SpanContext | None, attributes: dict | None = None,
                 links: Sequence[Link] = (), start: int | None = None):
        self.name = name
        self.parent = parent
        trace_id = parent.trace_id if parent is not None else random.getrandbits(128)  # no parent: a new trace
        self.context = SpanContext(trace_id, random.getrandbits(64), False, _SAMPLED,
                                   parent.trace_state if parent is not None else None)
        self.attributes = dict(attributes) if attributes else {}
        self.links = links
        self.start = time.time_ns() if start is None else start
        self.status = None
        self.events = ()
        self._token = None

    def is_recording(self) -> bool:
        return True

    def set_attribute(self, key: str, value) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: dict) -> None:
        self.attributes.update(attributes)

    def fail(self, message: str, exc: BaseException | None = None) -> None:
        self.status = Status(StatusCode.ERROR, message)
        if exc is not None and _Event is not None:
            self.events = (_Event("exception", {"exception.type": type(exc).__name__,
                                                "exception.message": str(exc)}),)

    def __enter__(self) -> "Span":
        self._token = PARENT.set(self.context)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        PARENT.reset(self._token)
        if exc is not None:
            self.fail(f"{type(exc).__name__}: {exc}" if isinstance(exc, Exception) else "cancelled", exc)
        self.end()

    def end(self, at: int | None = None) -> None:
        sink = _sink
        if sink is None:
            return
        on_end, resource, scope = sink
        on_end(_ReadableSpan(self.name, self.context, self.parent, resource, self.attributes, self.events,
                             self.links, SpanKind.INTERNAL, None, self.status or Status(StatusCode.UNSET),
                             self.start, time.time_ns() if at is None else at, scope))


class BatchTrace:
    """One batch's span, filled in as its passes finish on the compute thread and settle on the loop."""

    def __init__(self, span: Span, passes: int):
        self.span = span
        self.left = passes
        self.seconds = 0.0
        self.padded = 0
        self.failed = ""

    def settled(self, items: int, padded: int, seconds: float, error: BaseException | None) -> None:
        self.seconds += seconds
        self.padded += padded
        if error is not None and not self.failed:
            self.failed = f"{type(error).__name__}: {error}"
        self.left -= 1
        if self.left == 0:
            self.span.set_attributes({"tandem.batch.padded_tokens": self.padded,
                                      "tandem.batch.compute_seconds": round(self.seconds, 6)})
            if self.failed:
                self.span.fail(self.failed)
            self.span.end()


def open_batch(batcher: str, backend, entries: Sequence[Any], passes: int, start: float) -> BatchTrace | None:
    """The span of a batch that serves at least one traced request (None otherwise), linked to each of them.
    Sets every entry's `batch_span`, so its request can link back."""
    requests = {}
    for e in entries:
        if e.span is not None:
            requests.setdefault(e.span.span_id, e.span)
    if not requests or _sink is None:
        return None
    attributes = {"tandem.batcher": batcher, "tandem.model": backend.name, "tandem.batch.kind": backend.kind,
                  "tandem.batch.size": len(entries), "tandem.batch.traced_requests": len(requests),
                  "tandem.batch.passes": passes}
    extra = getattr(backend, "trace_attributes", None)  # e.g. recall's db.* attributes
    if extra is not None:
        attributes.update(extra(entries[0].payload))
    span = Span(f"{backend.kind} batch", None, attributes, [Link(c) for c in requests.values()], _ns(start))
    for e in entries:
        e.batch_span = span.context
    return BatchTrace(span, passes)


def request_spans(entries: Sequence[Any], submitted: float, resumed: float, stats) -> None:
    """`queue` (submit to the last item taken into a batch) and `compute` (from then until the results are back),
    children of the request's span, the compute one linked to each batch it rode."""
    parent = entries[0].span
    taken = max(e.dequeued for e in entries)
    batches = {}
    for e in entries:
        if e.batch_span is not None:
            batches.setdefault(e.batch_span.span_id, e.batch_span)
    Span("queue", parent, {"tandem.items": stats.items, "tandem.tokens": stats.tokens,
                           "tandem.queue_seconds": round(stats.queue_seconds, 6)}, (), _ns(submitted)).end(_ns(taken))
    Span("compute", parent, {"tandem.batches": len(batches), "tandem.compute_seconds": round(stats.inference_seconds, 6),
                             "tandem.truncated": stats.truncated}, [Link(c) for c in batches.values()],
         _ns(taken)).end(_ns(resumed))

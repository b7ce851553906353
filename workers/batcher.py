"""The dynamic batching loop.

Asyncio side: requests enqueue items with futures and await them; one loop task
cuts a batch whenever the model is free. Thread side: the backend's `measure`
(tokenisation) gets a dedicated thread and `run` (the model) goes to the compute
thread of the model's device (workers/compute.py), shared with the other models
there, so the event loop keeps accepting and cancelling while a batch computes,
and the cores are never oversubscribed by parallel model calls.

No time is spent waiting while the model is busy: whatever queued meanwhile is
the next batch. `max_wait_ms` applies only when the model sits idle, to let a
burst that is just arriving share one batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Hashable, Protocol, Sequence

from tandem.workers.errors import BackendError, DeadlineExceeded, Overloaded, WorkerStopped
from tandem.workers import passes, tracing
from tandem.workers.queue import BatchQueue, Entry
from tandem.workers.team import Team

log = logging.getLogger(__name__)


INLINE_MEASURE_CHARS = 2048


def _chars(payloads: Sequence[Any]) -> int:
    n = 0
    for p in payloads:
        n += sum(map(len, p)) if isinstance(p, tuple) else len(p) if isinstance(p, str) else 0
    return n


@dataclass(frozen=True)
class BatchLimits:
    max_batch_size: int = 32
    # Padded tokens per batch (longest x count); 0 = no token budget.
    max_batch_tokens: int = 16384
    max_wait_ms: float = 0.0
    queue_capacity: int = 4096
    # Run a batch of mixed lengths as several passes when that costs less (workers/passes.py).
    split_by_length: bool = True


@dataclass(frozen=True)
class BatchStats:
    """What one request learns about the batches its items went through."""

    items: int
    tokens: int
    truncated: int
    queue_seconds: float
    inference_seconds: float


class Backend(Protocol):
    """What a batcher feeds: the models (workers/backends.py, exported.py) and recall (workers/recall.py)."""

    name: str
    kind: str
    max_length: int  # tokens an item is capped at; 0: items are not measured in tokens
    pass_cost: "passes.PassCost | None"  # set by passes.calibrate; None: a batch runs as one pass

    def measure(self, payloads: Sequence[Any], inline: bool = False) -> list[int]:
        """Token length of each payload, capped at max_length + 1 (thread side, or the loop when inline)."""

    def run(self, payloads: Sequence[Any]) -> Sequence[Any]:
        """One result per payload, in order (thread side)."""


class Observer(Protocol):
    """Metrics hooks; every call is cheap and never blocks."""

    def queue_depth(self, items: int) -> None: ...
    def dequeued(self, wait_seconds: Sequence[float]) -> None: ...
    def batch(self, items: int, padded_tokens: int, seconds: float) -> None: ...
    def dropped(self, reason: str, items: int) -> None: ...


class _NullObserver:
    def queue_depth(self, items):  # noqa: D401
        pass

    def dequeued(self, wait_seconds):
        pass

    def batch(self, items, padded_tokens, seconds):
        pass

    def dropped(self, reason, items):
        pass


@dataclass
class _Done:
    result: Any
    batch_id: int
    queue_seconds: float
    batch_seconds: float


class Batcher:
    def __init__(self, name: str, backend: Backend, limits: BatchLimits, observer: Observer | None = None,
                 passthrough: tuple[type[Exception], ...] = (), executor: Executor | None = None,
                 team: Team | None = None):
        self.name = name
        # Backend exceptions that already say what went wrong (e.g. "store unreachable")
        # reach the caller as they are; any other failure becomes a BackendError.
        self.passthrough = passthrough
        self.backend = backend
        self.limits = limits
        self.observer = observer or _NullObserver()
        self.queue = BatchQueue(name, limits.queue_capacity, limits.max_batch_size, limits.max_batch_tokens)
        self._measure_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-measure")
        # Model calls run on `executor` (a device's shared compute thread) or, without one, a thread of our own.
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"{name}-model")
        # The device's thread team (workers/team.py), for a backend whose threads it sets (torch on a CPU).
        self.team = team
        self._cost_fit = passes.CostFit()  # keeps backend.pass_cost true to the passes actually run
        self._running: Future | None = None  # the latest batch handed to the compute thread
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._accepting = False
        self._batches = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._accepting = True
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Refuse new work, finish what is queued (up to drain_seconds), then stop."""
        self._accepting = False
        deadline = time.monotonic() + drain_seconds
        while (len(self.queue) or self._computing) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for e in self.queue.drain():
            if not e.future.done():
                e.future.set_exception(WorkerStopped(f"{self.name} worker stopped"))
        self._measure_pool.shutdown(wait=False, cancel_futures=True)
        if self._computing:  # a batch still on the compute thread: let it finish before we return
            await asyncio.wait([asyncio.wrap_future(self._running)])
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    @property
    def _computing(self) -> bool:
        return self._running is not None and not self._running.done()

    # -- request side ----------------------------------------------------------

    async def submit(
        self, payloads: Sequence[Any], *, key: Hashable = None, deadline: float | None = None
    ) -> tuple[list[Any], BatchStats]:
        """Queue payloads, wait for every result, return them in order.

        `deadline` is an absolute `loop.time()`. Raises Overloaded at once when
        the queue cannot take every payload, DeadlineExceeded when the deadline
        passes first. Cancelling the caller drops its queued items.
        """
        if not self._accepting:
            raise WorkerStopped(f"{self.name} worker is shutting down")
        if not payloads:
            return [], BatchStats(0, 0, 0, 0.0, 0.0)
        try:
            self.queue.check_room(len(payloads))  # before tokenising work we would throw away
        except Overloaded:
            self.observer.dropped("overload", len(payloads))
            raise
        loop = asyncio.get_running_loop()
        traced = tracing.request_context()  # None unless this request's span records
        submitted = time.perf_counter()
        if _chars(payloads) <= INLINE_MEASURE_CHARS:
            # A few short texts tokenise in tens of microseconds: cheaper here than a thread hop.
            lengths = self.backend.measure(payloads, inline=True)
        else:
            lengths = await loop.run_in_executor(self._measure_pool, self.backend.measure, payloads)
        cap = self.backend.max_length
        now = time.perf_counter()  # queue waits: loop.time() is only millisecond-exact on uvloop
        entries = [
            Entry(p, min(n, cap) if cap else n, key, loop.create_future(), now, deadline, span=traced)
            for p, n in zip(payloads, lengths)
        ]
        try:
            self.queue.put(entries)
        except Overloaded:
            self.observer.dropped("overload", len(entries))
            raise
        self.observer.queue_depth(len(self.queue))
        self._wakeup.set()
        futures = [e.future for e in entries]
        try:
            if deadline is None:
                done = await asyncio.gather(*futures)
            else:
                async with asyncio.timeout_at(deadline):
                    done = await asyncio.gather(*futures)
        except TimeoutError:
            raise DeadlineExceeded(f"deadline passed while waiting for the {self.name} worker") from None
        finally:
            for f in futures:
                if not f.done():
                    f.cancel()  # releases the item from the queue
            if any(f.cancelled() for f in futures):
                self.observer.dropped("cancelled", sum(f.cancelled() for f in futures))
                self.observer.queue_depth(len(self.queue))
        batch_seconds = {d.batch_id: d.batch_seconds for d in done}
        stats = BatchStats(
            items=len(done),
            tokens=sum(e.cost for e in entries),
            truncated=sum(1 for n in lengths if cap and n > cap),
            queue_seconds=max(d.queue_seconds for d in done),
            inference_seconds=sum(batch_seconds.values()),
        )
        if traced is not None:
            tracing.request_spans(entries, submitted, time.perf_counter(), stats)
        return [d.result for d in done], stats

    # -- loop side -------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not len(self.queue):
                self._wakeup.clear()
                await self._wakeup.wait()
                # The model was idle: optionally let a burst gather.
                if self.limits.max_wait_ms > 0:
                    end = loop.time() + self.limits.max_wait_ms / 1000
                    while len(self.queue) < self.limits.max_batch_size and loop.time() < end:
                        self._wakeup.clear()
                        try:
                            await asyncio.wait_for(self._wakeup.wait(), end - loop.time())
                        except TimeoutError:
                            break
            now = loop.time()
            batch, expired = self.queue.cut(now)
            for e in expired:
                if not e.future.done():
                    e.future.set_exception(DeadlineExceeded(f"deadline passed in the {self.name} queue"))
            if expired:
                self.observer.dropped("deadline", len(expired))
            self.observer.queue_depth(len(self.queue))
            if not batch:
                continue
            await self._run_batch(batch)

    def _passes(self, batch: list[Entry]) -> list[list[Entry]]:
        """The batch (sorted by length) as the forward passes that cost least (workers/passes.py)."""
        cost = self.backend.pass_cost
        if not self.limits.split_by_length or cost is None:
            return [batch]
        ends = passes.split([e.cost for e in batch], cost.overhead_tokens)
        return [batch[i:j] for i, j in zip([0, *ends], ends)]

    def _run_passes(self, groups: list[list[Entry]], settle) -> None:
        """Compute-thread side: the passes back to back, with no trip through the event loop between them.
        Each is timed here (a shared thread may first finish another model's batch), fails alone, and is
        handed to `settle` as soon as it is done, so its callers need not wait for the longer passes."""
        cost = self.backend.pass_cost
        team = self.team if cost is not None else None
        for i, group in enumerate(groups):
            size = team.pick() if team else 0
            t0 = time.perf_counter()
            try:
                result = self.backend.run([e.payload for e in group])
                if len(result) != len(group):
                    raise RuntimeError(f"backend returned {len(result)} results for {len(group)} inputs")
            except Exception as exc:
                result = exc
            seconds = time.perf_counter() - t0
            if cost is not None and not isinstance(result, Exception):
                padded = max(e.cost for e in group) * len(group)
                if team:
                    team.observe(size, seconds, cost.fixed_seconds + cost.token_seconds * padded)
                if not team or size == team.sizes[0]:  # the cost model is the full team's
                    refit = self._cost_fit.observe(padded, seconds)
                    if refit is not None:
                        self.backend.pass_cost = cost = refit
            settle(group, result, seconds, i == len(groups) - 1)

    def _settle(self, group: list[Entry], results: Sequence[Any] | Exception, seconds: float = 0.0,
                freed: asyncio.Future | None = None, traced: tracing.BatchTrace | None = None) -> None:
        """Loop side: one pass's results (or its failure) to its callers. After the last pass, `freed` wakes the
        batching loop first, so the next batch is cut and on the compute thread before the callers' responses
        are built and sent (those would otherwise leave the model idle)."""
        if freed is not None and not freed.done():
            freed.set_result(None)
        self._batches += 1
        padded = max(e.cost for e in group) * len(group)
        self.observer.batch(len(group), padded, seconds)
        if traced is not None:
            traced.settled(len(group), padded, seconds, results if isinstance(results, Exception) else None)
        if isinstance(results, Exception):  # the pass fails; the worker lives on
            log.error("%s batch of %d failed", self.name, len(group), exc_info=results)
            err = results if isinstance(results, self.passthrough) else BackendError(
                f"{self.name} failed on this batch: {type(results).__name__}: {results}")
            for e in group:
                if not e.future.done():
                    e.future.set_exception(err)
            return
        for e, r in zip(group, results):
            if not e.future.done():
                e.future.set_result(_Done(r, self._batches, e.dequeued - e.enqueued, seconds))

    async def _run_batch(self, batch: list[Entry]) -> None:
        now = time.perf_counter()
        for e in batch:
            e.dequeued = now
        self.observer.dequeued([now - e.enqueued for e in batch])
        loop = asyncio.get_running_loop()
        freed = loop.create_future()  # the compute thread is done with this batch
        groups = self._passes(batch)
        traced = tracing.open_batch(self.name, self.backend, batch, len(groups), now)

        def settle(group, results, seconds, last):  # compute thread -> loop, in the order the passes ran
            loop.call_soon_threadsafe(self._settle, group, results, seconds, freed if last else None, traced)

        try:
            self._running = self._executor.submit(self._run_passes, groups, settle)
        except RuntimeError as exc:  # the compute thread is shut down
            if traced is not None:
                traced.left = 1
            self._settle(batch, exc, traced=traced)
            return
        try:
            # shield: cancelling this loop (at stop) must not cancel a batch that the compute thread holds.
            # `_run_passes` catches every failure per pass, so the last pass always resolves `freed`.
            await asyncio.shield(freed)
        except asyncio.CancelledError:
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(WorkerStopped(f"{self.name} worker stopped"))
            raise

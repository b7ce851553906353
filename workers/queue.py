"""The batch queue: a bounded FIFO of items and the rule that cuts the next batch.

Runs on the event loop only. Items carry a cost (token length, or 1) and a key;
a batch holds items of one key, at most `max_items` of them, and at most
`max_tokens` padded tokens (longest item x item count), like TEI's queue.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

from tandem.workers.errors import Overloaded


@dataclass(eq=False)
class Entry:
    payload: Any
    cost: int
    key: Hashable
    future: asyncio.Future
    enqueued: float  # time.perf_counter(), for queue waits
    deadline: float | None = None  # loop.time(), like asyncio's own timeouts
    queued: bool = field(default=True, repr=False)
    dequeued: float = field(default=0.0, repr=False)  # when a batch took it (perf_counter)
    # Tracing (workers/tracing.py): the request's span context when it records, and the batch span it rode.
    span: Any = field(default=None, repr=False)
    batch_span: Any = field(default=None, repr=False)


class BatchQueue:
    def __init__(self, name: str, capacity: int, max_items: int, max_tokens: int = 0, window: int = 4):
        self.name = name
        self.capacity = capacity
        self.max_items = max_items
        self.max_tokens = max_tokens
        # Batches are chosen from the oldest `window x max_items` entries, sorted
        # by length, so similar lengths share a batch and padding stays small.
        self.window = max(1, window) * max_items
        self._entries: deque[Entry] = deque()
        self._live = 0

    def __len__(self) -> int:
        """Items waiting that still want an answer."""
        return self._live

    def check_room(self, n: int) -> None:
        if self._live + n > self.capacity:
            raise Overloaded(
                f"{self.name} queue full: {self._live} of {self.capacity} items waiting and this "
                f"request adds {n}; retry with backoff, or raise the {self.name} queue capacity"
            )

    def put(self, entries: list[Entry]) -> None:
        self.check_room(len(entries))
        for e in entries:
            e.future.add_done_callback(lambda _f, e=e: self._release(e))
        self._entries.extend(entries)
        self._live += len(entries)
        # Cancelled entries are released at once but removed lazily; compact
        # before their shells can outgrow the live queue.
        if len(self._entries) > 2 * self.capacity:
            self._entries = deque(e for e in self._entries if e.queued)

    def _release(self, entry: Entry) -> None:
        if entry.queued:
            entry.queued = False
            self._live -= 1

    def cut(self, now: float) -> tuple[list[Entry], list[Entry]]:
        """Remove and return (batch, expired). Cancelled entries are discarded."""
        expired: list[Entry] = []
        window: list[Entry] = []
        head_key = None
        for e in self._entries:
            if not e.queued:
                continue
            if e.deadline is not None and e.deadline <= now:
                expired.append(e)
                continue
            if head_key is None:
                head_key = e.key
            if e.key == head_key:
                window.append(e)
                if len(window) >= self.window:
                    break
        batch = self._choose(window) if window else []
        for e in expired:
            self._release(e)
        for e in batch:
            self._release(e)
        if batch or expired:
            self._entries = deque(e for e in self._entries if e.queued)
        return batch, expired

    def drain(self) -> list[Entry]:
        """Remove and return every entry still waiting, with or without a deadline (for shutdown)."""
        out = [e for e in self._entries if e.queued]
        for e in out:
            self._release(e)
        self._entries.clear()
        return out

    def _choose(self, window: list[Entry]) -> list[Entry]:
        """Grow a batch around the oldest entry, taking the nearest lengths first."""
        ranked = sorted(window, key=lambda e: e.cost)
        lo, hi = grow([e.cost for e in ranked], ranked.index(window[0]), self.max_items, self.max_tokens)
        # Sorted by length; the backend pads to the longest.
        return ranked[lo:hi]


def grow(costs: Sequence[int], head: int, max_items: int, max_tokens: int) -> tuple[int, int]:
    """The rule that cuts a batch: over `costs` sorted ascending, the slice [lo, hi) grown around `head` by the
    nearest lengths first, at most `max_items` long and `max_tokens` padded tokens (longest x count)."""
    lo, hi = head, head + 1
    longest = costs[head]
    while hi - lo < max_items:
        below = costs[lo - 1] if lo > 0 else None
        above = costs[hi] if hi < len(costs) else None
        if below is None and above is None:
            break
        take_above = below is None or (above is not None and above - costs[head] <= costs[head] - below)
        new_longest = max(longest, above if take_above else below)
        if max_tokens and new_longest * (hi - lo + 1) > max_tokens:
            if take_above and below is not None and longest * (hi - lo + 1) <= max_tokens:
                lo -= 1  # a shorter entry still fits
                continue
            break
        longest = new_longest
        if take_above:
            hi += 1
        else:
            lo -= 1
    return lo, hi


def cut_all(costs: Sequence[int], max_items: int, max_tokens: int, window: int = 4) -> list[list[int]]:
    """Indices of items queued together, in the batches BatchQueue would cut them into (for the backend choice's
    calibration, which must run what the server runs)."""
    waiting = list(range(len(costs)))
    batches = []
    while waiting:
        ranked = sorted(waiting[:max(1, window) * max_items], key=lambda i: costs[i])
        lo, hi = grow([costs[i] for i in ranked], ranked.index(waiting[0]), max_items, max_tokens)
        batches.append(ranked[lo:hi])
        taken = set(ranked[lo:hi])
        waiting = [i for i in waiting if i not in taken]
    return batches

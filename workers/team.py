"""How many threads a torch forward pass uses, chosen pass by pass from how fast passes actually run.

torch on a CPU runs each op on an OpenMP team with static work shares: an op ends when its slowest thread ends.
When a neighbour process holds one of the two cores, the team's thread on that core gets a fraction of it, and
every op waits for it: MiniLM-L6 bf16 on the 2-core dev VM ran at 0.28x of its idle speed with two threads
beside a spinning process, and at 0.72x with one (docs/benchmarks.md). A neighbour comes and goes, so the team
size cannot be fixed at load either. `Team` keeps, per size, a moving average of how much slower than the load-time
cost model (workers/passes.py) passes ran, uses the size that is faster now, and every `explore_every` passes
runs one pass at the other size to notice when the neighbour has gone (a few percent of passes, at worst one
slow pass each).
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence


class Team:
    def __init__(self, sizes: Sequence[int], set_threads: Callable[[int], None], explore_every: int = 16,
                 alpha: float = 0.3):
        self.sizes = tuple(dict.fromkeys(sizes))  # the full team first: the size used until others are measured
        self._set = set_threads
        self.explore_every = explore_every
        self.alpha = alpha
        self.slowdown: dict[int, float | None] = {s: None for s in self.sizes}
        self._current = None  # the size the threads are set to
        self._passes = 0
        self._lock = threading.Lock()  # one compute thread calls in, but metrics may read

    def best(self) -> int:
        known = {s: v for s, v in self.slowdown.items() if v is not None}
        return min(known, key=known.get) if known else self.sizes[0]

    def pick(self) -> int:
        """The size for the next pass (and sets it)."""
        with self._lock:
            self._passes += 1
            size = self.best()
            if len(self.sizes) > 1 and self._passes % self.explore_every == 0:
                others = [s for s in self.sizes if s != size]
                size = others[(self._passes // self.explore_every) % len(others)]
            if size != self._current:
                self._set(size)
                self._current = size
            return size

    def observe(self, size: int, seconds: float, expected_seconds: float) -> None:
        """A pass at `size` took `seconds`; the load-time cost model expected `expected_seconds` (full team)."""
        if expected_seconds <= 0 or seconds <= 0:
            return
        ratio = seconds / expected_seconds
        with self._lock:
            prev = self.slowdown[size]
            self.slowdown[size] = ratio if prev is None else prev + self.alpha * (ratio - prev)


def torch_team() -> Team | None:
    """The team for torch's CPU ops on the calling process: sizes (all threads, one); None on one thread."""
    import torch

    n = torch.get_num_threads()
    return Team((n, 1), torch.set_num_threads) if n > 1 else None

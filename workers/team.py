"""How many threads a torch forward pass uses, chosen pass by pass from how fast passes actually run.

torch on a CPU runs each op on an OpenMP team with static work shares: an op ends when its slowest thread ends.
When a neighbour process holds one of the two cores, the team's thread on that core gets a fraction of it, and
every op waits for it: MiniLM-L6 bf16 on the 2-core dev VM ran at 0.28x of its idle speed with two threads
beside a spinning process, and at 0.72x with one (docs/benchmarks.md). A neighbour comes and goes, so the team
size cannot be fixed at load either. `Team` keeps, per size, a moving average of how much slower than the load-time
cost model (workers/passes.py) passes ran, and uses the size that is faster now.

It learns the other sizes by probing them, one pass at a time, and a probe at the wrong size costs a slow pass:
probing a smaller team every 16th pass cost 7% of an idle server's throughput. So a probe is made only where it
can change the choice:
- on a smaller team, the full team is probed every `explore_every` passes, to notice that the neighbour left;
- on the full team, a smaller size is probed (every `explore_every` passes) only while the full team runs
  slower than that size has ever run. A neighbour can only slow a team down, so a size's best-ever slowdown is
  a floor on what it would do now: while the full team beats every floor, as on an idle machine, it never
  probes. Each size is probed `learn` times at first, to learn its floor.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence


class Team:
    def __init__(self, sizes: Sequence[int], set_threads: Callable[[int], None], explore_every: int = 16,
                 alpha: float = 0.3, learn: int = 3):
        self.sizes = tuple(dict.fromkeys(sizes))  # the full team first: the size used until others are measured
        self._set = set_threads
        self.explore_every = explore_every
        self.alpha = alpha
        self.learn = learn
        self.slowdown: dict[int, float | None] = {s: None for s in self.sizes}
        self.floor: dict[int, float] = {s: float("inf") for s in self.sizes}  # the best slowdown each size had
        self.observed: dict[int, int] = {s: 0 for s in self.sizes}
        self.probes = 0
        self._current = None  # the size the threads are set to
        self._passes = 0
        self._lock = threading.Lock()  # one compute thread calls in, but metrics may read

    @property
    def current(self) -> int:
        """The size the threads are set to (the full team before the first pass)."""
        return self._current or self.sizes[0]

    def best(self) -> int:
        known = {s: v for s, v in self.slowdown.items() if v is not None}
        return min(known, key=known.get) if known else self.sizes[0]

    def _worth_probing(self, size: int, best: int) -> bool:
        if best != self.sizes[0] or self.observed[size] < self.learn:
            return True  # the full team, or a size not learnt yet
        now = self.slowdown[best]
        return now is not None and now > self.floor[size]

    def pick(self) -> int:
        """The size for the next pass (and sets it)."""
        with self._lock:
            self._passes += 1
            size = self.best()
            if len(self.sizes) > 1 and self._passes % self.explore_every == 0:
                others = [s for s in self.sizes if s != size and self._worth_probing(s, size)]
                if others:
                    size = others[(self._passes // self.explore_every) % len(others)]
                    self.probes += 1
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
            self.slowdown[size] = now = ratio if prev is None else prev + self.alpha * (ratio - prev)
            self.observed[size] += 1
            self.floor[size] = min(self.floor[size], now)


def torch_team() -> Team | None:
    """The team for torch's CPU ops on the calling process: sizes (all threads, one); None on one thread."""
    import torch

    n = torch.get_num_threads()
    return Team((n, 1), torch.set_num_threads) if n > 1 else None

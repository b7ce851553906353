"""How a cut batch runs: as one forward pass, or as several passes of similar length.

A forward pass costs a fixed part (framework dispatch and the thread team's fork/join, per op) plus a part per
padded token. A batch pads every item to its longest, so when a few long items share a batch with many short
ones, two passes can cost less than one. `split` finds the passes that cost least, and `calibrate` learns the two
costs from the model itself at load: on a CPU the fixed part is worth tens of tokens (MiniLM-L6 in bf16 on the
2-core dev VM: about 4 ms + 0.045 ms per padded token), so splitting pays on mixed lengths; on a GPU the
per-token part is near zero until the device is full, so a batch stays whole.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassCost:
    """Seconds of one forward pass: fixed_seconds + token_seconds x padded tokens."""

    fixed_seconds: float
    token_seconds: float

    @property
    def overhead_tokens(self) -> float:
        """The fixed part in padded tokens: what padding must exceed before another pass pays."""
        if self.token_seconds <= 0:
            return math.inf
        return self.fixed_seconds / self.token_seconds


def split(lengths: Sequence[int], overhead_tokens: float) -> list[int]:
    """End index of each pass over `lengths` (ascending), minimising sum(overhead + items x longest). Every pass
    is part of one cut, so it keeps within the cut's token budget.

    An O(n^2) dynamic programme over the split points; n is at most one batch (tens of items)."""
    n = len(lengths)
    if n < 2 or overhead_tokens >= n * lengths[-1] - sum(lengths):  # the whole batch's padding is worth less
        return [n] if n else []                                     # than one more pass (always, on a GPU)
    best = [0.0] * (n + 1)
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[j - 1]
        best[j], start[j] = min((best[i] + overhead_tokens + (j - i) * longest, i) for i in range(j))
    ends, j = [], n
    while j > 0:
        ends.append(j)
        j = start[j]
    return ends[::-1]


def calibrate(backend, repeats: int = 9, cache_file: Path | None = None) -> tuple[PassCost, bool]:
    """Time the backend's two calibration shapes (`calibration_batches`) and set its `pass_cost`; also whether it
    was measured now. With `cache_file` (one per model, backend, precision and machine), a cost measured before
    is read back and each shape only runs once, as a warm-up: a restart skips the 20 timed passes, and the
    batcher refits the cost from the passes it runs anyway (CostFit). A cache that cannot be written is skipped."""
    shapes = backend.calibration_batches()
    cached = _read_cost(cache_file)
    if cached is not None:
        for b in shapes:
            backend.run(b)
        backend.pass_cost = cached
        return cached, False
    backend.pass_cost = fit_pass_cost(backend.run, backend.measure, *shapes, repeats=repeats)
    if cache_file is not None:
        tmp = cache_file.with_name(f"{cache_file.stem}.{os.getpid()}.tmp")
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(asdict(backend.pass_cost)))
            tmp.rename(cache_file)
        except OSError as exc:  # a read-only or full disk: serve, and measure again at the next start
            log.warning("could not cache the pass cost in %s (%s); it is measured again at the next start",
                        cache_file, exc.strerror or exc)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
    return backend.pass_cost, True


def _read_cost(cache_file: Path | None) -> PassCost | None:
    if cache_file is None:
        return None
    try:
        cost = PassCost(**json.loads(cache_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in asdict(cost).values())
    return cost if ok and cost.fixed_seconds > 0 else None


def fit_pass_cost(run, measure_lengths, small: list[Any], large: list[Any], repeats: int = 9) -> PassCost:
    """Fit PassCost from two batch shapes (one short item; many longer ones), run back to back `repeats` times.

    The split needs only the ratio of the two parts, and that comes from the median ratio of a large pass to
    the small pass just before it: a neighbour that is busy for a while slows both alike, and a preempted run
    moves a median little. The fastest small pass then scales it to seconds. Each shape runs once first as a
    warm-up (kernel selection)."""
    shapes = (small, large)
    tokens = [max(n := measure_lengths(b)) * len(n) for b in shapes]
    for b in shapes:
        run(b)
    ratios, fastest = [], math.inf
    for _ in range(repeats):
        times = []
        for b in shapes:
            t = time.perf_counter()
            run(b)
            times.append(time.perf_counter() - t)
        fastest = min(fastest, times[0])
        ratios.append(times[1] / times[0])
    r = statistics.median(ratios)
    if r <= 1:  # a larger pass costs no more (a GPU with room to spare): never split
        return PassCost(fastest, 0.0)
    # t = fixed + per_token x T for both shapes, so fixed / per_token = (T1 - r T0) / (r - 1).
    overhead = max(0.0, (tokens[1] - r * tokens[0]) / (r - 1))
    per_token = fastest / (overhead + tokens[0])
    return PassCost(per_token * overhead, per_token)


class CostFit:
    """PassCost refitted from the passes a server actually runs, so the load-time measurement (which a busy
    neighbour at that moment can skew) does not fix the batching plan for good. Every `every` passes, a least
    squares line through the last `window` (padded tokens, seconds) pairs replaces the cost, when the passes
    were of different enough sizes to tell the two parts apart and both come out positive."""

    def __init__(self, window: int = 128, every: int = 64):
        self.window, self.every = window, every
        self._obs: list[tuple[int, float]] = []
        self._seen = 0

    def observe(self, tokens: int, seconds: float) -> PassCost | None:
        """Record one pass; a new PassCost when it is time to refit and the fit is sound, else None."""
        self._obs.append((tokens, seconds))
        del self._obs[:-self.window]
        self._seen += 1
        if self._seen % self.every or len(self._obs) < self.every:
            return None
        xs = [t for t, _ in self._obs]
        if max(xs) < 2 * min(xs):
            return None  # all passes alike: the two parts cannot be told apart
        n, mx = len(xs), sum(xs) / len(xs)
        my = sum(s for _, s in self._obs) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (s - my) for x, s in self._obs) / sxx
        fixed = my - slope * mx
        return PassCost(fixed, slope) if slope > 0 and fixed > 0 else None

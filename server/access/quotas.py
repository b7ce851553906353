"""Per-principal quotas: a token bucket for requests per second and a count of calls in progress.

Everything runs on the event loop (both transports admit calls there), so there are no locks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from tandem.server.access.policy import Principal, Quota


@dataclass
class _State:
    tokens: float
    stamp: float
    in_flight: int = 0


class OverQuota(Exception):
    def __init__(self, quota: str, message: str, retry_after: float):
        super().__init__(message)
        self.quota, self.message, self.retry_after = quota, message, retry_after


class Quotas:
    def __init__(self):
        # By principal name, so a reload that keeps a principal keeps its bucket and its in-flight count.
        self._state: dict[str, _State] = {}

    def enter(self, p: Principal) -> bool:
        """Count a call in, or raise OverQuota naming the quota. True when the call must `leave` later."""
        q: Quota = p.quota
        if q.rps is None and q.max_in_flight is None:
            return False
        s = self._state.get(p.name)
        now = time.monotonic()
        if s is None:
            s = self._state[p.name] = _State(float(q.burst), now)
        if q.max_in_flight is not None and s.in_flight >= q.max_in_flight:
            raise OverQuota("max_in_flight", f"principal {p.name!r} has {s.in_flight} calls in progress, its limit "
                            "(max_in_flight in the access policy); retry when one finishes", 1.0)
        if q.rps is not None:
            s.tokens = min(float(q.burst), s.tokens + (now - s.stamp) * q.rps)
            s.stamp = now
            if s.tokens < 1.0:
                wait = (1.0 - s.tokens) / q.rps
                raise OverQuota("rps", f"principal {p.name!r} is over its rate of {q.rps:g} requests per second "
                                f"(rps in the access policy); retry in {wait:.2f} s", wait)
            s.tokens -= 1.0
        s.in_flight += 1
        return True

    def leave(self, p: Principal) -> None:
        s = self._state.get(p.name)
        if s is not None:
            s.in_flight -= 1


def retry_after_seconds(e: OverQuota) -> int:
    """Retry-After is whole seconds: round up, at least 1."""
    return max(1, math.ceil(e.retry_after))

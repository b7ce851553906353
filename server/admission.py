"""The server-wide limit on requests in flight, shared by every transport."""

from __future__ import annotations


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> bool:
        """Count a request in; False when that puts the server over its limit (it must still `leave`)."""
        self.in_flight += 1
        return self.in_flight <= self.limit

    def leave(self) -> None:
        self.in_flight -= 1

    @property
    def busy(self) -> str:
        return (f"server busy: {self.limit} requests in flight (max_concurrent_requests); retry with backoff")

"""What went wrong, as a status *kind* every transport maps in one place of its own.

The engine, the store and the workers raise these (or a worker error); none of them knows a wire status. The
kinds are named after gRPC's codes, whose meanings are the clearest shared vocabulary (HTTP maps them too).
"""

from __future__ import annotations

import enum

from tandem.workers import BackendError, DeadlineExceeded, Overloaded, WorkerStopped


class Kind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"


class TandemError(Exception):
    """A failure a caller can act on: its kind, and a message that says what to do."""

    kind = Kind.INTERNAL

    def __init__(self, message: str, kind: Kind | None = None):
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind


def invalid(message: str) -> TandemError:
    return TandemError(message, Kind.INVALID_ARGUMENT)


def not_found(message: str) -> TandemError:
    return TandemError(message, Kind.NOT_FOUND)


def precondition(message: str) -> TandemError:
    return TandemError(message, Kind.FAILED_PRECONDITION)


_WORKER = {
    Overloaded: Kind.RESOURCE_EXHAUSTED,
    DeadlineExceeded: Kind.DEADLINE_EXCEEDED,
    BackendError: Kind.INTERNAL,
    WorkerStopped: Kind.UNAVAILABLE,
}


def classify(exc: BaseException) -> tuple[Kind, str] | None:
    """(kind, message) for a known failure, None for a bug."""
    if isinstance(exc, TandemError):
        return exc.kind, exc.message
    for cls, kind in _WORKER.items():
        if isinstance(exc, cls):
            return kind, str(exc)
    return None

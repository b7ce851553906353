"""The one mapping from what went wrong to a gRPC status a client can act on."""

from __future__ import annotations

import grpc

from workers import BackendError, DeadlineExceeded, Overloaded, WorkerStopped


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


_WORKER = {
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    BackendError: grpc.StatusCode.INTERNAL,
    WorkerStopped: grpc.StatusCode.UNAVAILABLE,
}


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """(code, message) for a known failure, None for a bug."""
    if isinstance(exc, ServiceError):
        return exc.code, exc.message
    for kind, code in _WORKER.items():
        if isinstance(exc, kind):
            return code, str(exc)
    return None

"""Why a queued item did not get a result. The server maps each to a gRPC status."""


class WorkerError(Exception):
    """Base class for worker failures."""


class Overloaded(WorkerError):
    """The queue is full; nothing was enqueued."""


class DeadlineExceeded(WorkerError):
    """The caller's deadline passed before the item was computed."""


class BackendError(WorkerError):
    """The model failed on the batch this item was part of (OOM, NaN, ...)."""


class WorkerStopped(WorkerError):
    """The worker is shutting down and takes no new work."""

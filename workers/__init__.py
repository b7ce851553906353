"""Async model workers: a bounded queue, a dynamic batching loop, and the backends it feeds.

- `queue`: the FIFO and the rule that cuts a batch from it (asyncio side, no threads).
- `batcher`: the loop that owns the queue and runs batches on a compute thread.
- `compute`: one compute thread per device, shared by the models on it.
- `backends`: the model code that runs on that thread (cross-encoder, bi-encoder).
- `tracing`: the spans of a traced request's work, and batch spans linked to the requests they served.
"""

from tandem.workers.batcher import Batcher, BatchLimits, BatchStats
from tandem.workers.errors import BackendError, DeadlineExceeded, Overloaded, WorkerStopped

__all__ = [
    "Batcher",
    "BatchLimits",
    "BatchStats",
    "BackendError",
    "DeadlineExceeded",
    "Overloaded",
    "WorkerStopped",
]

"""Every Prometheus metric Tandem exports, in one place.

Names follow Prometheus conventions: `tandem_` prefix, base units (seconds),
`_total` counters. Labels are closed sets (gRPC method, status code, stage,
worker, reason, and `model`: the names of the models loaded at start, empty
for the recall worker): no user-supplied string ever becomes a label.
"""

from __future__ import annotations

from typing import Sequence

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# From sub-millisecond queue waits to multi-second CPU reranks.
SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
           0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
POW2_ITEMS = tuple(float(2**i) for i in range(0, 11))           # 1 .. 1024
POW2_TOKENS = tuple(float(2**i) for i in range(4, 18))          # 16 .. 131072

REQUESTS = Counter("tandem_requests", "RPCs finished, by method and gRPC status code", ["method", "code"])
REQUEST_SECONDS = Histogram("tandem_request_duration_seconds", "RPC latency, by method and gRPC status code",
                            ["method", "code"], buckets=SECONDS)
IN_FLIGHT = Gauge("tandem_requests_in_flight", "RPCs being served now", ["method"])
STAGE_SECONDS = Histogram("tandem_search_stage_duration_seconds", "Search latency per stage (rerank: all "
                          "rerank stages of a cascade together)", ["stage"], buckets=SECONDS)
DEGRADED = Counter("tandem_search_degraded", "Searches answered recall-only although rerank was asked for",
                   ["reason"])
DEGRADE_REASONS = ("overloaded", "deadline_exceeded", "model_error", "shutting_down", "no_reranker")  # server/search.py
for _r in DEGRADE_REASONS:  # export zeros from the start, so rate() and dashboards see the series
    DEGRADED.labels(_r)

STALLED = Counter("tandem_stalled_connections", "Connections closed because a request (HTTP) or a client stream "
                  "(gRPC) stopped arriving for longer than --stall-timeout-seconds", ["transport"])
QUEUE_DEPTH = Gauge("tandem_queue_depth", "Items waiting in a worker queue", ["worker", "model"])
QUEUE_CAPACITY = Gauge("tandem_queue_capacity", "Items a worker queue holds before refusing work", ["worker", "model"])
QUEUE_WAIT = Histogram("tandem_queue_wait_seconds", "Time an item waited in a worker queue",
                       ["worker", "model"], buckets=SECONDS)
BATCH_SIZE = Histogram("tandem_batch_size", "Items per model/backend batch (per forward pass, when a batch is "
                       "split by length)", ["worker", "model"], buckets=POW2_ITEMS)
BATCH_TOKENS = Histogram("tandem_batch_tokens", "Padded tokens per forward pass (longest item x items)",
                         ["worker", "model"], buckets=POW2_TOKENS)
BATCH_SECONDS = Histogram("tandem_batch_compute_seconds", "Model/backend time per forward pass",
                          ["worker", "model"], buckets=SECONDS)
DROPPED = Counter("tandem_dropped_items", "Items dropped before compute, by reason", ["worker", "model", "reason"])
STORE_FLUSH_SECONDS = Histogram("tandem_store_flush_seconds", "Background seals (flushes) of embedded collections",
                                buckets=SECONDS)
STORE_UNSEALED_ROWS = Gauge("tandem_store_unsealed_rows", "Acknowledged rows written since their collection's last seal")
STORE_ENGINE_RESTARTS = Counter("tandem_store_engine_restarts", "Times the embedded Milvus child was restarted")
STORE_ENGINE_RECYCLES = Counter("tandem_store_engine_recycles", "Times the embedded Milvus child was restarted on "
                                "purpose, to give back the memory it keeps (--engine-recycle-mb)")
STORE_ENGINE_RSS = Gauge("tandem_store_engine_resident_bytes", "Resident memory of the embedded Milvus child, as "
                         "last read (every --engine-recycle-check-seconds)")
RECALL_FILTER = Counter("tandem_recall_filtered_queries", "Filtered recall queries, by where the filter ran: "
                        "post (Tandem, over oversampled candidates) or engine", ["path"])
for _p in ("post", "engine"):
    RECALL_FILTER.labels(_p)
AUTH_DENIED = Counter("tandem_auth_denied", "Calls refused by the access policy, by reason", ["reason"])
DENY_REASONS = ("no_credentials", "malformed", "unknown_token", "unknown_identity", "scope", "collection", "no_rule")
for _r in DENY_REASONS:
    AUTH_DENIED.labels(_r)
# Principal names come from the operator's policy file, not from requests: a closed set.
QUOTA_REJECTED = Counter("tandem_quota_rejected", "Calls refused because their principal was over a quota",
                         ["principal", "quota"])
POLICY_RELOADS = Counter("tandem_auth_policy_reloads", "Access policy reloads, by outcome (loaded or rejected)",
                         ["outcome"])
for _o in ("loaded", "rejected"):
    POLICY_RELOADS.labels(_o)
MODEL_INFO = Gauge("tandem_model_info", "Loaded models (value is always 1)",
                   ["model", "kind", "device", "dtype", "backend", "precision"])


class BatcherMetrics:
    """The batcher's observer: label children are bound once, so each hook is one call."""

    def __init__(self, worker: str, model: str, capacity: int):
        self._depth = QUEUE_DEPTH.labels(worker, model)
        self._wait = QUEUE_WAIT.labels(worker, model)
        self._size = BATCH_SIZE.labels(worker, model)
        self._tokens = BATCH_TOKENS.labels(worker, model)
        self._seconds = BATCH_SECONDS.labels(worker, model)
        self._dropped = {r: DROPPED.labels(worker, model, r) for r in ("cancelled", "deadline", "overload")}
        QUEUE_CAPACITY.labels(worker, model).set(capacity)
        self._depth.set(0)

    def queue_depth(self, items: int) -> None:
        self._depth.set(items)

    def dequeued(self, wait_seconds: Sequence[float]) -> None:
        for w in wait_seconds:
            self._wait.observe(w)

    def batch(self, items: int, padded_tokens: int, seconds: float) -> None:
        self._size.observe(items)
        self._tokens.observe(padded_tokens)
        self._seconds.observe(seconds)

    def dropped(self, reason: str, items: int) -> None:
        self._dropped[reason].inc(items)


def serve_metrics(host: str, port: int):
    """Start the /metrics HTTP endpoint on its own thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return server, server.server_port

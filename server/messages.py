"""Conversions between worker/store values and tandem.v1 messages."""

from __future__ import annotations

import json
import math

from google.protobuf import json_format, struct_pb2

from server.errors import invalid
from tandem.v1 import common_pb2
from workers import BatchStats

MAX_METADATA_BYTES = 65536
MAX_METADATA_DEPTH = 8


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def usage(stats: BatchStats, total: float) -> common_pb2.Usage:
    return common_pb2.Usage(
        pairs=stats.items, tokens=stats.tokens, truncated=stats.truncated,
        queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds, total_seconds=total,
    )


def merge_usage(a: BatchStats, b: BatchStats) -> BatchStats:
    return BatchStats(a.items + b.items, a.tokens + b.tokens, a.truncated + b.truncated,
                      max(a.queue_seconds, b.queue_seconds), a.inference_seconds + b.inference_seconds)


def _depth(v, d: int = 0) -> int:
    if isinstance(v, dict):
        return max([_depth(x, d + 1) for x in v.values()], default=d + 1)
    if isinstance(v, list):
        return max([_depth(x, d + 1) for x in v], default=d + 1)
    return d


def metadata_to_dict(s: struct_pb2.Struct, where: str) -> dict:
    d = json_format.MessageToDict(s)
    size = len(json.dumps(d, ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise invalid(f"{where}: metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    depth = _depth(d)
    if depth > MAX_METADATA_DEPTH:
        raise invalid(f"{where}: metadata nests {depth} levels deep; the limit is {MAX_METADATA_DEPTH}")
    return d


def dict_to_struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s

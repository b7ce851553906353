"""Conversions between the engine's plain values and tandem.v1 messages (the gRPC transport's side)."""

from __future__ import annotations

import asyncio

from google.protobuf import json_format, struct_pb2

from tandem.v1 import common_pb2
from tandem.workers import BatchStats


def usage(stats: BatchStats, total: float) -> common_pb2.Usage:
    return common_pb2.Usage(
        pairs=stats.items, tokens=stats.tokens, truncated=stats.truncated,
        queue_seconds=stats.queue_seconds, inference_seconds=stats.inference_seconds, total_seconds=total,
    )


def struct_to_dict(s: struct_pb2.Struct) -> dict:
    return json_format.MessageToDict(s)


def dict_to_struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if d:
        s.update(d)
    return s


def deadline(context) -> float | None:
    """The call's deadline as an absolute loop time (the engine's clock), or None."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining

"""Request pieces the tests build often: filter conditions and metadata structs."""

from __future__ import annotations

from google.protobuf import struct_pb2

from tandem.v1 import filter_pb2


def struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def cond(field, op, value=None):
    c = filter_pb2.Condition(field=field, op=op)
    if value is not None:
        c.value.CopyFrom(struct_pb2.Value())
        if isinstance(value, list):
            c.value.list_value.extend(value)
        elif isinstance(value, bool):
            c.value.bool_value = value
        elif isinstance(value, (int, float)):
            c.value.number_value = value
        else:
            c.value.string_value = value
    return c

"""Compile a structured tandem.v1.Filter into a Milvus boolean expression.

The client never writes expression text. Field paths are checked against a
strict identifier grammar and only ever address keys inside the `metadata` JSON
field; literals are typed and escaped here. So a filter can narrow results
within its collection, but cannot name other fields, call functions, or widen
a query. Limits keep compiled expressions small.
"""

from __future__ import annotations

import json
import math
import re

from server.errors import invalid
from tandem.v1 import filter_pb2

SEGMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_CONDITIONS = 32
MAX_LIST = 256
MAX_DEPTH = 8
MAX_STRING_BYTES = 1024

Op = filter_pb2.Operator
_CMP = {Op.OPERATOR_EQ: "==", Op.OPERATOR_NE: "!=", Op.OPERATOR_LT: "<", Op.OPERATOR_LTE: "<=",
        Op.OPERATOR_GT: ">", Op.OPERATOR_GTE: ">="}


def _path(field: str, where: str) -> str:
    parts = field.split(".")
    if not field or len(parts) > MAX_DEPTH or not all(SEGMENT.match(p) for p in parts):
        raise invalid(
            f"{where}.field {field[:80]!r} is not a metadata key path: use dot-separated keys of letters, "
            f"digits and '_' (each at most 64 characters, at most {MAX_DEPTH} levels)"
        )
    return "metadata" + "".join(f'["{p}"]' for p in parts)


def _literal(v, where: str) -> str:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        s = v.string_value
        if len(s.encode()) > MAX_STRING_BYTES:
            raise invalid(f"{where}: string value longer than {MAX_STRING_BYTES} bytes")
        if any(ord(ch) < 0x20 for ch in s):
            raise invalid(f"{where}: string value contains control characters")
        # Only \" and \\ need escaping once control characters are excluded.
        return json.dumps(s, ensure_ascii=False)
    if kind == "number_value":
        x = v.number_value
        if not math.isfinite(x):
            raise invalid(f"{where}: number value must be finite")
        return repr(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x)
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    raise invalid(f"{where}: value must be a string, number or bool (got {kind or 'nothing'})")


def _condition(c: filter_pb2.Condition, where: str) -> str:
    path = _path(c.field, where)
    if c.op in _CMP:
        if c.value.WhichOneof("kind") == "list_value":
            raise invalid(f"{where}: {Op.Name(c.op)} takes a single value; use OPERATOR_IN for a list")
        return f"{path} {_CMP[c.op]} {_literal(c.value, where + '.value')}"
    if c.op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN):
        if c.value.WhichOneof("kind") != "list_value" or not c.value.list_value.values:
            raise invalid(f"{where}: {Op.Name(c.op)} needs a non-empty list value")
        items = c.value.list_value.values
        if len(items) > MAX_LIST:
            raise invalid(f"{where}: list has {len(items)} values; the limit is {MAX_LIST}")
        # Milvus Lite has no `in` over JSON paths; an OR of equalities means the same everywhere.
        ors = " or ".join(f"{path} == {_literal(x, f'{where}.value[{i}]')}" for i, x in enumerate(items))
        return f"not ({ors})" if c.op == Op.OPERATOR_NOT_IN else f"({ors})"
    if c.op == Op.OPERATOR_EXISTS:
        return f"{path} is not null"
    raise invalid(f"{where}.op: unknown operator {c.op}; use one of {', '.join(Op.keys()[1:])}")


def compile_filter(f: filter_pb2.Filter | None) -> str:
    """'' for no filter; otherwise an expression over `metadata` only."""
    if f is None:
        return ""
    n = len(f.all) + len(f.any) + len(f.none)
    if n > MAX_CONDITIONS:
        raise invalid(f"filter has {n} conditions; the limit is {MAX_CONDITIONS}")
    parts = [f"({_condition(c, f'filter.all[{i}]')})" for i, c in enumerate(f.all)]
    if f.any:
        parts.append("(" + " or ".join(f"({_condition(c, f'filter.any[{i}]')})" for i, c in enumerate(f.any)) + ")")
    if f.none:
        parts.append("not (" + " or ".join(f"({_condition(c, f'filter.none[{i}]')})" for i, c in enumerate(f.none)) + ")")
    return " and ".join(parts)

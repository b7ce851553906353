"""Compile a structured tandem.v1.Filter into a Milvus boolean expression.

The client never writes expression text. Field paths are checked against a
strict identifier grammar and only ever address keys inside the `metadata` JSON
field; literals are typed and escaped here. So a filter can narrow results
within its collection, but cannot name other fields, call functions, or widen
a query. Limits keep compiled expressions small.

Expressions never use `not`: milvus-lite 2.5's segcore rejects it ("unsupported expr proto node"), and
has no null test on JSON paths. Negation (`none`) is pushed down to the conditions instead, and what
only `not` could say ("the key is absent", "the value is not a number") is asked of the `present` field,
which records each metadata key path's type (schema.py). Collections made before that field
existed (v0.1, on a Milvus server) keep the `not` forms, which servers accept.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Callable

from tandem.server.errors import invalid
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


_NEGATED = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
TYPES = ("string", "number", "bool", "list", "object")


def _type(v) -> str:
    return {"string_value": "string", "number_value": "number", "bool_value": "bool"}[v.WhichOneof("kind")]


def _present(field: str, types) -> str:
    return f"present[{json.dumps(field)}] in [{', '.join(json.dumps(t) for t in types)}]"


def _absent(field: str, types) -> str:
    return f"present[{json.dumps(field)}] not in [{', '.join(json.dumps(t) for t in types)}]"


def _condition(c: filter_pb2.Condition, where: str, negate: bool = False, presence: bool = True) -> str:
    """The condition, or its negation, as an expression without `not` (with `presence`)."""
    if negate and not presence:
        return f"not ({_condition(c, where)})"
    path = _path(c.field, where)
    if c.op in _CMP:
        if c.value.WhichOneof("kind") == "list_value":
            raise invalid(f"{where}: {Op.Name(c.op)} takes a single value; use OPERATOR_IN for a list")
        op, lit = _CMP[c.op], _literal(c.value, where + ".value")
        if not negate:
            return f"{path} {op} {lit}"
        if op in ("==", "!="):  # `!=` also holds where the key is absent or of another type
            return f"{path} {_NEGATED[op]} {lit}"
        # not (x < 3): x >= 3, or x is absent or not a number.
        return f"({path} {_NEGATED[op]} {lit} or {_absent(c.field, [_type(c.value)])})"
    if c.op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN):
        if c.value.WhichOneof("kind") != "list_value" or not c.value.list_value.values:
            raise invalid(f"{where}: {Op.Name(c.op)} needs a non-empty list value")
        items = c.value.list_value.values
        if len(items) > MAX_LIST:
            raise invalid(f"{where}: list has {len(items)} values; the limit is {MAX_LIST}")
        # An OR of equalities (or an AND of inequalities) works on every engine, and with mixed-type lists,
        # where `in [...]` does not.
        lits = [_literal(x, f"{where}.value[{i}]") for i, x in enumerate(items)]
        if (c.op == Op.OPERATOR_IN) != negate:
            return "(" + " or ".join(f"{path} == {x}" for x in lits) + ")"
        if not presence:
            return "not (" + " or ".join(f"{path} == {x}" for x in lits) + ")"
        return "(" + " and ".join(f"{path} != {x}" for x in lits) + ")"
    if c.op == Op.OPERATOR_EXISTS:
        if not presence:
            return f"{path} is not null"
        return _absent(c.field, TYPES) if negate else _present(c.field, TYPES)
    raise invalid(f"{where}.op: unknown operator {c.op}; use one of {', '.join(Op.keys()[1:])}")


def with_text(f: filter_pb2.Filter | None, text: str) -> filter_pb2.Filter | None:
    """`f` and the conditions of `text`, in the CLI's filter words (SearchRequest.filter_text): one per line or
    separated by ';', all of which must hold."""
    from tandem.filters import parse

    parts = [p.strip() for p in re.split(r"[;\n]", text) if p.strip()]
    if not parts:
        return f
    out = filter_pb2.Filter()
    if f is not None:
        out.CopyFrom(f)
    for i, p in enumerate(parts):
        try:
            c = parse(p)
        except ValueError as exc:
            raise invalid(f"filter_text condition {i + 1}: {exc}") from None
        out.all.append(c.proto())
    return out


def compile_filter(f: filter_pb2.Filter | None, presence: bool = True) -> str:
    """'' for no filter; otherwise an expression over `metadata` (and `present`) only."""
    if f is None:
        return ""
    n = len(f.all) + len(f.any) + len(f.none)
    if n > MAX_CONDITIONS:
        raise invalid(f"filter has {n} conditions; the limit is {MAX_CONDITIONS}")
    parts = [f"({_condition(c, f'filter.all[{i}]', presence=presence)})" for i, c in enumerate(f.all)]
    if f.any:
        parts.append("(" + " or ".join(f"({_condition(c, f'filter.any[{i}]', presence=presence)})"
                                       for i, c in enumerate(f.any)) + ")")
    # none of them holds = each one's negation holds
    parts += [f"({_condition(c, f'filter.none[{i}]', True, presence)})" for i, c in enumerate(f.none)]
    return " and ".join(parts)


# -- the same filter as a Python predicate over a hit's metadata ----------------------------------------------
# The embedded engine evaluates JSON filters by parsing every row (about 15 ms per condition per 100k rows), so
# the store may instead ask for more unfiltered candidates and keep those this predicate accepts (see
# recall.py). It mirrors the expressions above exactly; tests/test_store.py checks both against the same
# documents. Conditions whose engine semantics are not pinned down by those tests (ordering against a bool)
# get no predicate, and the engine filters as before.

_ABSENT = object()
_ORDER = {Op.OPERATOR_LT: lambda a, b: a < b, Op.OPERATOR_LTE: lambda a, b: a <= b,
          Op.OPERATOR_GT: lambda a, b: a > b, Op.OPERATOR_GTE: lambda a, b: a >= b}


def _kind(x) -> str:
    if isinstance(x, bool):
        return "bool"
    if isinstance(x, (int, float)):
        return "number"
    return "string" if isinstance(x, str) else "other"


def _py(v):
    kind = v.WhichOneof("kind")
    return {"string_value": v.string_value, "number_value": v.number_value, "bool_value": v.bool_value}[kind]


def _lookup(metadata: dict, parts: list[str]):
    for p in parts:
        if not isinstance(metadata, dict) or p not in metadata:
            return _ABSENT
        metadata = metadata[p]
    return metadata


def _eq(x, lit) -> bool:
    return x is not _ABSENT and _kind(x) == _kind(lit) and x == lit


def _test(c: filter_pb2.Condition):
    """A function metadata -> bool for a condition that compile_filter accepted, or None."""
    parts = c.field.split(".")
    if c.op == Op.OPERATOR_EXISTS:
        return lambda m: _lookup(m, parts) not in (_ABSENT, None)
    if c.op in (Op.OPERATOR_IN, Op.OPERATOR_NOT_IN):
        lits = [_py(x) for x in c.value.list_value.values]
        hit = lambda m: any(_eq(_lookup(m, parts), lit) for lit in lits)  # noqa: E731
        return hit if c.op == Op.OPERATOR_IN else (lambda m: not hit(m))
    lit = _py(c.value)
    if c.op == Op.OPERATOR_EQ:
        return lambda m: _eq(_lookup(m, parts), lit)
    if c.op == Op.OPERATOR_NE:
        return lambda m: not _eq(_lookup(m, parts), lit)
    if _kind(lit) == "bool":
        return None
    order = _ORDER[c.op]
    return lambda m: _kind(x := _lookup(m, parts)) == _kind(lit) and order(x, lit)


def compile_predicate(f: filter_pb2.Filter):
    """The filter as metadata -> bool, or None where only the engine should decide. Call after compile_filter."""
    tests = {}
    for group in ("all", "any", "none"):
        tests[group] = [_test(c) for c in getattr(f, group)]
        if any(t is None for t in tests[group]):
            return None
    all_, any_, none_ = tests["all"], tests["any"], tests["none"]

    def predicate(m: dict) -> bool:
        return (all(t(m) for t in all_) and (not any_ or any(t(m) for t in any_))
                and not any(t(m) for t in none_))

    return predicate


@dataclass(frozen=True)
class CompiledFilter:
    """A filter as the engine expression for one schema version, and as a predicate over metadata."""

    source: filter_pb2.Filter | None
    expr: str = ""
    predicate: Callable[[dict], bool] | None = None
    presence: bool = True  # compiled for collections that have the `present` field

    def for_collection(self, meta) -> "CompiledFilter":
        """The same filter in the form this collection's schema version takes (v0.1 collections lack `present`)."""
        if not self.expr or meta.has_presence == self.presence:
            return self
        return compile(self.source, meta.has_presence)


NO_FILTER = CompiledFilter(None)


def compile(f: filter_pb2.Filter | None, presence: bool = True) -> CompiledFilter:
    """Checks the filter (INVALID_ARGUMENT names the condition at fault) and compiles both forms."""
    expr = compile_filter(f, presence)
    if not expr:
        return NO_FILTER
    return CompiledFilter(f, expr, compile_predicate(f), presence)

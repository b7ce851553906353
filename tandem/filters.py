"""A readable way to build metadata filters, so callers never assemble protobuf Values by hand.

    from tandem import F
    f = (F("year") >= 1990) & F("tag").isin(["a", "b"]) & ~F("draft").exists()
    client.search("docs", "query", filter=f)

A document matches when every `&`-joined condition holds, at least one of the `|`-joined ones holds, and none
of the `~`-negated ones holds: exactly the server's Filter{all, any, none}. A plain dict means equality on
every key: `filter={"lang": "en", "year": 2024}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import struct_pb2

from tandem.v1 import filter_pb2

Op = filter_pb2.Operator


def _value(v) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, (list, tuple, set)):
        out.list_value.extend(list(v))
    elif isinstance(v, bool):
        out.bool_value = v
    elif isinstance(v, (int, float)):
        out.number_value = v
    elif isinstance(v, str):
        out.string_value = v
    else:
        raise TypeError(f"a filter value is a string, number, bool or a list of them, not {type(v).__name__}")
    return out


@dataclass(frozen=True)
class Condition:
    field: str
    op: int
    value: object = None

    def proto(self) -> filter_pb2.Condition:
        c = filter_pb2.Condition(field=self.field, op=self.op)
        if self.op != Op.OPERATOR_EXISTS:
            c.value.CopyFrom(_value(self.value))
        return c

    def __and__(self, other) -> "Filter":
        return Filter(all=[self]) & other

    def __or__(self, other) -> "Filter":
        if not isinstance(other, Condition):
            raise ValueError("`|` joins single conditions: (a | b | c); combine the result with `&`")
        return Filter(any=[self, other])

    def __invert__(self) -> "Filter":
        return Filter(none=[self])


@dataclass
class Filter:
    all: list[Condition] = field(default_factory=list)
    any: list[Condition] = field(default_factory=list)
    none: list[Condition] = field(default_factory=list)

    def __and__(self, other) -> "Filter":
        other = Filter(all=[other]) if isinstance(other, Condition) else other
        if self.any and other.any:
            raise ValueError("two `|` groups cannot be joined with `&`: the server's filter holds one any-group")
        return Filter(self.all + other.all, self.any or other.any, self.none + other.none)

    def __or__(self, other) -> "Filter":
        if self.all or self.none or not isinstance(other, Condition):
            raise ValueError("`|` joins single conditions: (a | b | c); combine the result with `&`")
        return Filter(any=self.any + [other])

    def proto(self) -> filter_pb2.Filter:
        return filter_pb2.Filter(all=[c.proto() for c in self.all], any=[c.proto() for c in self.any],
                                 none=[c.proto() for c in self.none])


class F:
    """A metadata key (or dotted path, "author.name") to compare."""

    def __init__(self, name: str):
        self.name = name

    def __eq__(self, v) -> Condition:  # type: ignore[override]
        return Condition(self.name, Op.OPERATOR_EQ, v)

    def __ne__(self, v) -> Condition:  # type: ignore[override]
        return Condition(self.name, Op.OPERATOR_NE, v)

    def __lt__(self, v) -> Condition:
        return Condition(self.name, Op.OPERATOR_LT, v)

    def __le__(self, v) -> Condition:
        return Condition(self.name, Op.OPERATOR_LTE, v)

    def __gt__(self, v) -> Condition:
        return Condition(self.name, Op.OPERATOR_GT, v)

    def __ge__(self, v) -> Condition:
        return Condition(self.name, Op.OPERATOR_GTE, v)

    def isin(self, values) -> Condition:
        return Condition(self.name, Op.OPERATOR_IN, list(values))

    def notin(self, values) -> Condition:
        return Condition(self.name, Op.OPERATOR_NOT_IN, list(values))

    def exists(self) -> Condition:
        return Condition(self.name, Op.OPERATOR_EXISTS)

    __hash__ = object.__hash__


def to_proto(f) -> filter_pb2.Filter | None:
    """A Filter, Condition, {key: value} dict (equality) or filter_pb2.Filter as the wire message."""
    if f is None:
        return None
    if isinstance(f, filter_pb2.Filter):
        return f
    if isinstance(f, Condition):
        return Filter(all=[f]).proto()
    if isinstance(f, Filter):
        return f.proto()
    if isinstance(f, dict):
        return Filter(all=[Condition(k, Op.OPERATOR_EQ, v) for k, v in f.items()]).proto()
    raise TypeError(f"filter must be built with tandem.F, or be a dict or a tandem.v1 Filter, not {type(f).__name__}")


_OPS = {"=": Op.OPERATOR_EQ, "==": Op.OPERATOR_EQ, "!=": Op.OPERATOR_NE, "<": Op.OPERATOR_LT,
        "<=": Op.OPERATOR_LTE, ">": Op.OPERATOR_GT, ">=": Op.OPERATOR_GTE}


def parse(text: str) -> Condition:
    """One condition in the CLI's words: `year>=1990`, `tag in a,b`, `tag not_in a,b`, `draft exists`.
    Values read as JSON where they parse (numbers, true/false), else as strings."""
    import json
    import re

    def value(s: str):
        s = s.strip()
        try:
            return json.loads(s)
        except ValueError:
            return s

    t = text.strip()
    m = re.fullmatch(r"([A-Za-z_][\w.]*)\s+exists", t)
    if m:
        return Condition(m.group(1), Op.OPERATOR_EXISTS)
    m = re.fullmatch(r"([A-Za-z_][\w.]*)\s+(in|not_in)\s+(.+)", t)
    if m:
        items = [value(x) for x in m.group(3).split(",") if x.strip()]
        return Condition(m.group(1), Op.OPERATOR_IN if m.group(2) == "in" else Op.OPERATOR_NOT_IN, items)
    m = re.fullmatch(r"([A-Za-z_][\w.]*)\s*(==|!=|<=|>=|=|<|>)\s*(.+)", t)
    if m:
        return Condition(m.group(1), _OPS[m.group(2)], value(m.group(3)))
    raise ValueError(f"cannot read filter {text!r}; write FIELD OP VALUE (OP: = != < <= > >=), "
                     "'FIELD in A,B', 'FIELD not_in A,B' or 'FIELD exists'")

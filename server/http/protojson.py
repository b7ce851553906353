"""The contract's messages in proto3's JSON form: their JSON Schemas (for the OpenAPI document) and the shape check
the Connect routes run before google.protobuf.json_format reads a body.

Both come from the message descriptors, so neither can drift from proto/. The check exists because json_format
is more lenient than proto3 JSON: it reads a float or a boolean as an enum value (`2.5` -> 2, `true` -> 1) and
any JSON string as an empty message. What it refuses here is what proto3 JSON does not allow; what the engine
checks of the values (empty, too long, out of range) it leaves to the engine, whose messages name the limit.
"""

from __future__ import annotations

import functools
import re

from google.protobuf.descriptor import Descriptor, FieldDescriptor as F

_INTS = {F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1), F.TYPE_SFIXED32: (-2**31, 2**31 - 1),
         F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1), F.TYPE_INT64: (-2**63, 2**63 - 1),
         F.TYPE_SINT64: (-2**63, 2**63 - 1), F.TYPE_SFIXED64: (-2**63, 2**63 - 1), F.TYPE_UINT64: (0, 2**64 - 1),
         F.TYPE_FIXED64: (0, 2**64 - 1)}
_FLOAT_MAX = 3.4028234663852886e38
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|NaN|-?Infinity")
_WELL_KNOWN = {"google.protobuf.Struct": {"type": "object"}, "google.protobuf.Value": {},
               "google.protobuf.ListValue": {"type": "array"}}
DESCRIPTION = ("proto3 JSON: fields by their lowerCamel names (the .proto names are read too); null, or a missing "
               "field, is unset")


# -- JSON Schema ------------------------------------------------------------------------------------------------

def schemas(roots: list[Descriptor], rules: dict[str, dict], ref: str = "#/components/schemas/{}") -> dict[str, dict]:
    """Schemas for the messages reachable from roots, by full name. rules: field full name -> JSON Schema
    keywords the engine enforces on it; `required` there means the engine refuses the field unset, so it must be
    sent and cannot be null."""
    out: dict[str, dict] = {}

    def visit(d: Descriptor) -> str:
        if d.full_name not in out:
            out[d.full_name] = schema = {"type": "object", "properties": {}, "description": DESCRIPTION}
            for f in d.fields:
                rule = dict(rules.get(f.full_name, {}))
                required = rule.pop("required", False)
                if _is_map(f):
                    s = {"type": "object", "additionalProperties": field(f.message_type.fields_by_name["value"], {})}
                elif f.is_repeated:
                    counts = {k: rule.pop(k) for k in ("minItems", "maxItems") if k in rule}
                    s = {"type": "array", "items": field(f, rule), **counts}
                else:
                    s = field(f, rule)
                if required:
                    schema.setdefault("required", []).append(f.json_name)
                schema["properties"][f.json_name] = s if required else {"anyOf": [s, {"type": "null"}]}
        return d.full_name

    def field(f, rule: dict) -> dict:
        if f.message_type is None:
            return _scalar(f, rule)
        if f.message_type.full_name in _WELL_KNOWN:
            return {**_WELL_KNOWN[f.message_type.full_name], **rule}
        return {"$ref": ref.format(visit(f.message_type))}

    for d in roots:
        visit(d)
    return out


def _scalar(f, rule: dict) -> dict:
    t = f.type
    if t in _INTS:
        lo, hi = _INTS[t]
        lo, hi = rule.get("minimum", lo), rule.get("maximum", hi)
        number = {"type": "integer", "minimum": lo, "maximum": hi}
        if (lo, hi) != _INTS[t]:  # a narrower range than the type's: the number form only
            return number
        # 64-bit values are strings in proto3 JSON, and every integer may be one; documented up to the digits that
        # always fit.
        digits = 9 if hi < 2**32 else 18
        return {"anyOf": [number, {"type": "string", "pattern": f"^{'-?' if lo < 0 else ''}[0-9]{{1,{digits}}}$"}]}
    if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        number = {"type": "number"} if t == F.TYPE_DOUBLE else {"type": "number", "minimum": -_FLOAT_MAX,
                                                                  "maximum": _FLOAT_MAX}
        return {"anyOf": [number, {"type": "string", "pattern": f"^({_NUMBER_TEXT.pattern})$"}]}
    if t == F.TYPE_BOOL:
        return {"type": "boolean"}
    if t == F.TYPE_STRING:
        return {"type": "string", **rule}
    if t == F.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/_-]*={0,2}$"}
    if t == F.TYPE_ENUM:
        values = f.enum_type.values
        return {"anyOf": [{"type": "string", "enum": [v.name for v in values]},
                          {"type": "integer", "enum": [v.number for v in values]}]}
    raise ValueError(f"no JSON form for {f.full_name}")


def _is_map(f) -> bool:
    return f.message_type is not None and f.message_type.GetOptions().map_entry


# -- the shape check --------------------------------------------------------------------------------------------

class ShapeError(ValueError):
    """A JSON value proto3 JSON does not allow. Its path is filled in as the error unwinds, so a body that passes
    (nearly all) builds no path strings."""

    def __init__(self, expected: str, got):
        super().__init__(expected)
        self.path: list[str] = []
        self.expected, self.got = expected, _kind(got)

    def __str__(self) -> str:
        return f"{''.join(self.path).lstrip('.') or 'the body'}: expected {self.expected}, got {self.got}"


@functools.cache
def _fields(d: Descriptor) -> dict:
    return {**{f.name: f for f in d.fields}, **{f.json_name: f for f in d.fields}}


def check(d: Descriptor, value) -> None:
    """Raise ShapeError naming the first field whose JSON value proto3 JSON does not allow."""
    if not isinstance(value, dict):
        raise ShapeError(f"a JSON object ({d.full_name})", value)
    fields = _fields(d)
    for key, v in value.items():
        f = fields.get(key)
        if f is None or v is None:  # unknown fields are ignored; null is unset
            continue
        try:
            if _is_map(f):
                if not isinstance(v, dict):
                    raise ShapeError("an object", v)
                _each(f.message_type.fields_by_name["value"], v.items(), ".{}")
            elif f.is_repeated:
                if not isinstance(v, list):
                    raise ShapeError("an array", v)
                _each(f, enumerate(v), "[{}]")
            else:
                _value(f, v)
        except ShapeError as e:
            e.path.insert(0, f".{key}")
            raise


def _each(f, items, segment: str) -> None:
    for k, item in items:
        try:
            _value(f, item)
        except ShapeError as e:
            e.path.insert(0, segment.format(k))
            raise


def _value(f, v) -> None:
    t = f.type
    if f.message_type is not None:
        known = _WELL_KNOWN.get(f.message_type.full_name)
        if known is None:
            check(f.message_type, v)
        elif known.get("type") == "object" and not isinstance(v, dict):
            raise ShapeError("an object", v)
        elif known.get("type") == "array" and not isinstance(v, list):
            raise ShapeError("an array", v)
        return
    if t in _INTS:
        lo, hi = _INTS[t]
        n = v if isinstance(v, int) and not isinstance(v, bool) else \
            int(v) if isinstance(v, float) and v.is_integer() else \
            int(v) if isinstance(v, str) and _INTEGER_TEXT.fullmatch(v) else None
        if n is None or not lo <= n <= hi:
            raise ShapeError(f"an integer from {lo} to {hi}", v)
    elif t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) or isinstance(v, str)
                and _NUMBER_TEXT.fullmatch(v)):
            raise ShapeError("a number", v)
    elif t == F.TYPE_BOOL:
        if not isinstance(v, bool):
            raise ShapeError("true or false", v)
    elif t in (F.TYPE_STRING, F.TYPE_BYTES):
        if not isinstance(v, str):
            raise ShapeError("a string", v)
    elif t == F.TYPE_ENUM:
        e = f.enum_type
        if not (isinstance(v, str) and v in e.values_by_name or isinstance(v, int)
                and not isinstance(v, bool) and v in e.values_by_number):
            raise ShapeError(f"one of {', '.join(x.name for x in e.values)}", v)


def _kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"[:60]
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    return "an array" if isinstance(v, list) else "an object"

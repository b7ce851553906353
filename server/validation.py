"""Request checks the engine makes, whatever the transport. Each failure names the field and the limit."""

from __future__ import annotations

import json
import re

from tandem.server.errors import invalid

COLLECTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
MAX_ID_BYTES = 512
MAX_METADATA_BYTES = 65536
MAX_METADATA_DEPTH = 8


def text(field: str, value: str, max_bytes: int, *, allow_empty: bool = False) -> str:
    if not allow_empty and not value.strip():
        raise invalid(f"{field} is empty")
    if "\x00" in value:
        raise invalid(f"{field} contains a NUL character")
    n = len(_utf8(field, value))
    if n > max_bytes:
        raise invalid(f"{field} is {n} bytes; the limit is {max_bytes} (max_text_bytes)")
    return value


def _utf8(field: str, value: str) -> bytes:
    """The text as UTF-8. JSON may escape half of a surrogate pair alone (`"\\ud800"`), which is no character:
    a tokenizer fails on it, so it is refused here, by position."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(f"{field} holds an unpaired surrogate (U+{ord(value[exc.start]):04X} at character "
                      f"{exc.start}), which is not text; send each character whole") from None


def count(field: str, n: int, limit: int, *, minimum: int = 1) -> None:
    if n < minimum:
        raise invalid(f"{field} is empty: send at least {minimum}")
    if n > limit:
        raise invalid(f"{field} has {n} entries; the limit is {limit} per request (max_documents_per_request)")


def collection(name: str) -> str:
    if not COLLECTION_RE.match(name):
        raise invalid(
            f"collection {name[:80]!r} is not a valid name: use letters, digits and '_', "
            "starting with a letter or '_', at most 255 characters"
        )
    return name


def doc_id(value: str, where: str) -> str:
    if not value:
        raise invalid(f"{where}: id is empty")
    if "\x00" in value:
        raise invalid(f"{where}: id contains a NUL character")
    n = len(_utf8(f"{where}: id", value))
    if n > MAX_ID_BYTES:
        raise invalid(f"{where}: id is {n} bytes; the limit is {MAX_ID_BYTES}")
    return value


def metadata(value: dict, where: str) -> dict:
    size = len(json.dumps(value, ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise invalid(f"{where}: metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    depth = _depth(value)
    if depth > MAX_METADATA_DEPTH:
        raise invalid(f"{where}: metadata nests {depth} levels deep; the limit is {MAX_METADATA_DEPTH}")
    return value


def _depth(v, d: int = 0) -> int:
    if isinstance(v, dict):
        return max([_depth(x, d + 1) for x in v.values()], default=d + 1)
    if isinstance(v, list):
        return max([_depth(x, d + 1) for x in v], default=d + 1)
    return d

"""Plain HTTP calls for the tests: the status, headers and parsed body, whatever the status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass
class Reply:
    status: int
    headers: dict
    body: object  # parsed JSON, or the raw bytes when it is not JSON

    @property
    def text(self) -> str:
        return self.body if isinstance(self.body, str) else json.dumps(self.body)


def call(url: str, body=None, *, method: str | None = None, token: str | None = None, raw: bytes | None = None,
         content_type: str | None = "application/json", headers: dict | None = None, timeout: float = 60) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = dict(headers or {})
    if data is not None and content_type:
        h["content-type"] = content_type
    if token:
        h["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=h, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, _parse(r.read()))
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, _parse(e.read()))


def _parse(b: bytes):
    try:
        return json.loads(b)
    except ValueError:
        return b

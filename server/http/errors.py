"""HTTP statuses and each dialect's error envelope: the one place the HTTP side maps what went wrong.

Every failure reaches a client as `Failure(status, kind, message)` rendered in the envelope of the route it
called: Cohere `{"message"}`, OpenAI (and the vLLM/Infinity `/rerank`) `{"error": {...}}`, TEI
`{"error", "error_type"}`, Connect `{"code", "message"}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import orjson
from starlette.responses import Response

from tandem.server.errors import Kind, classify
from tandem.server.runtime import NoReranker

STATUS = {
    Kind.INVALID_ARGUMENT: 400,
    Kind.NOT_FOUND: 404,
    Kind.ALREADY_EXISTS: 409,
    Kind.FAILED_PRECONDITION: 400,
    Kind.RESOURCE_EXHAUSTED: 429,
    Kind.DEADLINE_EXCEEDED: 504,
    Kind.UNAVAILABLE: 503,
    Kind.INTERNAL: 500,
    Kind.UNAUTHENTICATED: 401,
    Kind.PERMISSION_DENIED: 403,
}
RETRY_AFTER_SECONDS = 1  # what a 429 or 503 asks a client to wait: the queue turns over in well under that


class Failure(Exception):
    """A request that ends in an error: the HTTP status, the kind (for metrics and Connect), and what to do."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}


def failure(exc: BaseException) -> Failure | None:
    """The Failure for an engine error (None for a bug). A recall-only server cannot rerank: 503, as while
    draining, so a client's retry policy treats it as "not here now"."""
    if isinstance(exc, Failure):
        return exc
    known = classify(exc)
    if known is None:
        return None
    kind, message = known
    status = 503 if isinstance(exc, NoReranker) else STATUS[kind]
    # A quota says when its next request fits; the queue and a drain turn over within RETRY_AFTER_SECONDS.
    wait = getattr(exc, "retry_after", None)
    headers = {"retry-after": str(max(1, math.ceil(wait)) if wait else RETRY_AFTER_SECONDS)} \
        if status in (429, 503) else {}
    return Failure(status, kind.value, message, headers)


def internal(exc: BaseException) -> Failure:
    return Failure(500, Kind.INTERNAL.value, f"internal error: {type(exc).__name__}: {exc}")


# -- envelopes, one per dialect -----------------------------------------------------------------------------

_TEI_TYPES = {429: "Overloaded", 503: "Unhealthy", 504: "Overloaded", 500: "Backend"}
_OPENAI_TYPES = {404: "not_found_error", 401: "authentication_error", 403: "permission_error", 429: "rate_limit_error",
                 503: "service_unavailable", 504: "timeout", 500: "server_error"}
# Connect gives each code its own HTTP status (connectrpc.com/docs/protocol, "Error Codes"): a recall-only
# server's FAILED_PRECONDITION stays 400 there, as gRPC clients of the same contract see that code.
CONNECT_STATUS = {"invalid_argument": 400, "failed_precondition": 400, "not_found": 404, "already_exists": 409,
                  "resource_exhausted": 429, "deadline_exceeded": 504, "unavailable": 503, "internal": 500,
                  "unauthenticated": 401, "permission_denied": 403}


@dataclass(frozen=True)
class Dialect:
    """How one family of clients reads an error: the body, and the HTTP status (the failure's own by default)."""

    name: str
    body: Callable[[Failure], dict]
    status: Callable[[Failure], int] = lambda f: f.status


COHERE = Dialect("cohere", lambda f: {"message": f.message})
OPENAI = Dialect("openai", lambda f: {"error": {"message": f.message, "type": _OPENAI_TYPES.get(
    f.status, "invalid_request_error"), "param": None, "code": f.kind}})
TEI = Dialect("tei", lambda f: {"error": f.message, "error_type": _TEI_TYPES.get(f.status, "Validation")})
CONNECT = Dialect("connect", lambda f: {"code": f.kind, "message": f.message},
                  lambda f: CONNECT_STATUS.get(f.kind, f.status))


def render(f: Failure, dialect: Dialect) -> Response:
    return Response(orjson.dumps(dialect.body(f)), status_code=dialect.status(f), headers=f.headers,
                    media_type="application/json")

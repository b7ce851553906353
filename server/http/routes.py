"""The route table and what every route gets from it, before its own code runs: auth, the shared concurrency
limit, content type and body size checks, metrics, and errors in the route's own envelope.

Every check is looked up by the exact route (method and path) in the table, never by a path prefix, so a route
is protected because it is listed, and a route added without a decision cannot be reached.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from tandem.server import metrics, tracing
from tandem.server.admission import Admission
from tandem.server.access import CALLER, Denied, Gate, Rule
from tandem.server.access.policy import READ
from tandem.server.errors import Kind
from tandem.server.http import errors, openapi
from tandem.server.http.errors import RETRY_AFTER_SECONDS, Dialect, Failure

log = logging.getLogger(__name__)

JSON = "application/json"
# A refused request's body is read (and dropped) up to this many times the limit, for this long: see Guard._drain.
DRAIN_FACTOR, DRAIN_SECONDS = 4, 5.0
# Status kinds as the request metrics name them (gRPC's code names, so one dashboard reads both transports).
CODE_OF_STATUS = {200: "OK", 400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ALREADY_EXISTS", 413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT",
                  429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 503: "UNAVAILABLE",
                  504: "DEADLINE_EXCEEDED"}


# What a route that calls the engine can fail with (server/errors.py); the access kinds are the Guard's.
ENGINE_FAILURES = tuple(k for k in Kind if k not in (Kind.UNAUTHENTICATED, Kind.PERMISSION_DENIED))


@dataclass(frozen=True)
class Route:
    path: str
    endpoint: Callable
    dialect: Dialect
    summary: str
    method: str = "POST"
    public: bool = False  # reachable without a token and outside the concurrency limit (health)
    static: bool = False  # a file of the console: no data, so always reachable without a token (server/http/console.py)
    rule: Rule = Rule(READ)  # what the access policy asks of a caller (server/access/rules.py)
    body: tuple = ()  # body models to document, for a route that parses its body itself
    response: object = None  # the response model, for the OpenAPI document only (routes return bodies as built)
    content_types: tuple[str, ...] = (JSON,)
    tags: tuple[str, ...] = field(default=("dialects",))
    # For the OpenAPI document (server/http/openapi.py): what the route's own code can fail with (the Guard's
    # refusals are added there), other envelopes, the media types of its 200, other answers that are not errors
    # (health's 503), and, for a Connect route, its request and response message descriptors.
    fails: tuple[Kind, ...] = ENGINE_FAILURES
    also_dialects: tuple[Dialect, ...] = ()  # other envelopes its errors may come in (/rerank answers TEI's to TEI)
    answers: tuple[str, ...] = (JSON,)
    also: dict = field(default_factory=dict)
    contract: tuple | None = None


def validation_failure(problems: list[dict]) -> Failure:
    """A body that did not parse (400) or did not fit the dialect's schema (422), naming the fields."""
    if any(p.get("type") == "json_invalid" for p in problems):
        return Failure(400, Kind.INVALID_ARGUMENT.value, "the body is not valid JSON")
    words = []
    for p in problems[:5]:
        where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
        words.append(f"{where}: {p.get('msg', 'invalid')}")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return Failure(422, Kind.INVALID_ARGUMENT.value, "; ".join(words) + more)


# Where the HTTP server puts the client certificate's identities (server/http/server.py) for the gate.
PEER_IDENTITIES = "tandem.peer_identities"


class Guard:
    """ASGI middleware: the checks every listed route shares, in this order: the access gate (401, 403, and 429
    for a principal's quota), the concurrency limit (429 with Retry-After), content type (415), body size (413);
    then the route; metrics throughout."""

    def __init__(self, app, table: dict[tuple[str, str], Route], gate: Gate, admission: Admission,
                 max_body_bytes: int, exempt_public: bool):
        self.app, self.table, self.gate, self.admission = app, table, gate, admission
        self.max_body_bytes, self.exempt_public = max_body_bytes, exempt_public
        self._metrics: dict[tuple[str, str], tuple] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = self.table.get((scope["method"], scope["path"]))
        if route is None:  # only listed routes are served; no metric label is made for anything else
            allowed = sorted(method for method, path in self.table if path == scope["path"])
            f = Failure(405, "invalid_argument", f"{scope['method']} is not allowed on {scope['path']}; use "
                        f"{' or '.join(allowed)}", {"allow": ", ".join(allowed)}) if allowed \
                else Failure(404, "not_found", f"no route {scope['path']}; see /openapi.json")
            return await errors.render(f, errors.OPENAI)(scope, receive, send)
        start = time.perf_counter()
        state = scope.setdefault("tandem", {})
        status = [0]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        gauge = metrics.IN_FLIGHT.labels(route.path)
        gauge.inc()
        counted = not (route.static or route.public and self.exempt_public)
        entered, call = False, None
        span = tracing.open_http(route.path, scope) if tracing.ON and not (route.public or route.static) else None
        try:
            problem = None
            if counted and self.gate.required:
                try:
                    call = self._open(route, scope)
                    if route.rule.needs is None:  # else the route checks once it has read the body (Connect)
                        self.gate.check(call)
                except Denied as d:
                    problem = errors.failure(d)
            problem = problem or self._check(route, scope)
            if problem is None and counted:
                entered = True
                if not self.admission.enter():
                    problem = Failure(429, Kind.RESOURCE_EXHAUSTED.value, self.admission.busy,
                                      {"retry-after": str(RETRY_AFTER_SECONDS)})
            if problem is not None:
                state["code"] = problem.kind.upper()
                if route.method == "POST":
                    await self._drain(receive, _declared(scope))
                return await errors.render(problem, route.dialect)(scope, receive, sending)
            CALLER.set(call)
            try:
                await self.app(scope, self._limited(receive), sending)
            except Failure as f:  # the body outgrew the limit while it was read
                if status[0]:
                    raise
                state["code"] = f.kind.upper()
                await self._drain(receive, None)
                await errors.render(f, route.dialect)(scope, receive, sending)
        finally:
            if entered:
                self.admission.leave()
            gauge.dec()
            code = state.get("code") or CODE_OF_STATUS.get(status[0], "UNKNOWN")
            self.gate.close(call, code)
            self._finish(route.path, code, time.perf_counter() - start)
            tracing.close_http(span, status[0], code)

    def _open(self, route: Route, scope):
        authorization = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        client = scope.get("client")
        return self.gate.open(route.path, "http", f"{client[0]}:{client[1]}" if client else "", authorization,
                              lambda: scope.get("extensions", {}).get(PEER_IDENTITIES, []), route.rule)

    def _check(self, route: Route, scope) -> Failure | None:
        if route.method != "POST":
            return None
        headers = {k: v for k, v in scope["headers"] if k in (b"content-type", b"content-length")}
        kind = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if kind not in route.content_types:
            return Failure(415, Kind.INVALID_ARGUMENT.value,
                           f"content-type {kind or 'missing'!r}: send {' or '.join(route.content_types)}")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large(int(length))
        return None

    async def _drain(self, receive, declared: int | None) -> None:
        """Read and drop the rest of a refused request's body before answering. uvicorn closes the connection
        after the answer; closing on unread input makes the kernel reset it, and a client still sending (any
        client that sends the whole body before reading) gets a broken pipe instead of the answer. Bounded:
        DRAIN_FACTOR x the body limit, for DRAIN_SECONDS; a larger declared body is not read at all."""
        cap = DRAIN_FACTOR * self.max_body_bytes
        if declared is not None and declared > cap:
            return
        seen = 0
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                while seen <= cap:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    seen += len(message.get("body", b""))
                    if not message.get("more_body"):
                        return
        except TimeoutError:
            pass

    def _too_large(self, n: int) -> Failure:
        return Failure(413, Kind.RESOURCE_EXHAUSTED.value, f"the body is {n} bytes or more; the limit is "
                       f"{self.max_body_bytes} (max_message_bytes)")

    def _limited(self, receive):
        """receive, counting body bytes: a body without Content-Length (chunked) is held to the same limit."""
        seen = [0]

        async def counting():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body_bytes:
                    raise self._too_large(seen[0])
            return message

        return counting

    def _finish(self, path: str, code: str, seconds: float) -> None:
        children = self._metrics.get((path, code))
        if children is None:
            children = self._metrics[(path, code)] = (metrics.REQUESTS.labels(path, code),
                                                      metrics.REQUEST_SECONDS.labels(path, code))
        children[0].inc()
        children[1].observe(seconds)


def _declared(scope) -> int | None:
    for k, v in scope["headers"]:
        if k == b"content-length" and v.isdigit():
            return int(v)
    return None


def build(routes: list[Route], gate: Gate, admission: Admission, max_body_bytes: int, exempt_public: bool,
          version: str, limits: tuple[int, int, int] = (1000, 262144, 1000)) -> FastAPI:
    """The ASGI app: the routes, their guard, and an OpenAPI document at /openapi.json (no docs page: its assets
    would come from a CDN, which an offline deployment cannot reach)."""
    app = FastAPI(title="Tandem HTTP API", version=version, docs_url=None, redoc_url=None,
                  description="Rerank and embeddings in the dialects RAG frameworks call (Cohere, Jina, TEI, "
                              "OpenAI, vLLM/Infinity), and Tandem's own contract by the Connect protocol.",
                  **_no_native_telemetry())
    # The OpenAPI document is FastAPI's own route; listed here so that it is behind the token like the rest.
    table = {("GET", "/openapi.json"): Route("/openapi.json", app.openapi, errors.OPENAI, "OpenAPI", method="GET",
                                             rule=Rule(None), fails=())}
    for r in routes:
        extra = None
        if r.body:
            extra = {"requestBody": {"required": True, "content": {JSON: {"schema": {"oneOf": [
                {"$ref": f"#/components/schemas/{m.__name__}"} for m in r.body]}}}}}
        app.add_api_route(r.path, r.endpoint, methods=[r.method], summary=r.summary, tags=list(r.tags),
                          openapi_extra=extra, response_model=r.response, include_in_schema=not r.static)
        table[(r.method, r.path)] = r

    def dialect(request: Request) -> Dialect:
        route = table.get((request.method, request.url.path))
        return route.dialect if route else errors.OPENAI

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        f = validation_failure(list(exc.errors()))
        request.scope.setdefault("tandem", {})["code"] = f.kind.upper()
        return errors.render(f, dialect(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """The router's 404 and 405, and FastAPI's own body errors (a body over the limit while it was read
        arrives here as the cause of FastAPI's 400), in the route's envelope."""
        f = exc.__cause__ if isinstance(exc.__cause__, Failure) else Failure(
            exc.status_code, CODE_OF_STATUS.get(exc.status_code, "INVALID_ARGUMENT").lower(), str(exc.detail))
        request.scope.setdefault("tandem", {})["code"] = f.kind.upper()
        return errors.render(f, dialect(request))

    openapi.document(app, table, exempt_public, limits, gate.required)
    app.add_middleware(Guard, table=table, gate=gate, admission=admission, max_body_bytes=max_body_bytes,
                       exempt_public=exempt_public)
    return app


def _no_native_telemetry() -> dict:
    """Newer FastAPI traces every request itself once a tracer provider is set. The Guard's span is the one a call
    gets (as on gRPC, and it covers the refusals made before the app runs), so FastAPI's own spans, metrics and
    logs are off where FastAPI has them."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False,
                          "auto_configure": False}}

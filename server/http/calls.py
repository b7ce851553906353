"""What every HTTP route shares once its body has parsed: the engine call, cut short when the client goes away,
and the engine's errors rendered in the route's envelope."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tandem.server.http.errors import Dialect, failure, internal, render

log = logging.getLogger(__name__)

CLIENT_GONE = 499  # nginx's "client closed request": logged and counted, never sent


def set_code(request: Request, code: str) -> None:
    """The outcome's status kind, for the metrics the middleware records."""
    request.scope.setdefault("tandem", {})["code"] = code


async def _gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def call(request: Request, work: Awaitable, dialect: Dialect):
    """The engine's result, or a Response carrying its error. A client that disconnects first cancels the work,
    which drops its queued items, as a cancelled RPC does."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_gone(request))
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        set_code(request, "CANCELLED")
        return Response(status_code=CLIENT_GONE)
    exc = task.exception()
    if exc is None:
        return task.result()
    f = failure(exc)
    if f is None:
        log.error("unhandled error in %s", request.url.path, exc_info=exc)
        f = internal(exc)
    set_code(request, f.kind.upper())
    return render(f, dialect)


def json(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def request_id() -> str:
    return uuid.uuid4().hex

"""One pymilvus client, made on first use and made again after Milvus (or the embedded child) went away.

Every store call goes through `Connection.call`, which loads a released collection once and retries, and turns
pymilvus's many failure types into the store's errors.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

from pymilvus import MilvusClient
from pymilvus.exceptions import MilvusException

from tandem.server.storage.embedded import EmbeddedMilvus, child_engine_available
from tandem.server.errors import TandemError
from tandem.server.storage.errors import CollectionMissing, StoreFailed, StoreUnavailable

log = logging.getLogger(__name__)
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)  # we log failures ourselves, once
logging.getLogger("faiss").setLevel(logging.WARNING)
# Milvus Lite 3's in-process server logs a traceback each time pymilvus probes an RPC it lacks.
# Tandem's own server is grpc.aio and does not log through this logger.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

T = TypeVar("T")


def is_lite(uri: str) -> bool:
    return "://" not in uri


class Connection:
    def __init__(self, uri: str, token: str = "", timeout: float = 30.0, engine_nice: int = 0,
                 forget: Callable[[str | None], None] = lambda name: None):
        self.uri, self.token, self.timeout = uri, token, timeout
        self.embedded = is_lite(uri)
        # milvus-lite 2.x runs as Tandem's supervised child; 3.x runs inside pymilvus (no child to supervise).
        self.engine = EmbeddedMilvus(uri, nice=engine_nice) if self.embedded and child_engine_available() else None
        # Tells the collection records what went stale: one collection (it vanished) or all (a new client).
        self._forget = forget
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()
        # Calls in flight, scans open, and whether new ones wait (while the embedded child restarts: `recycle`).
        self._gate = threading.Condition()
        self._open, self._held = {"calls": 0, "scans": 0}, False

    def client(self) -> MilvusClient:
        with self._lock:
            if self.engine is not None and self._client is not None and not self.engine.alive():
                self._drop_locked()  # the child died: reconnect to the one uri() restarts
            if self._client is None:
                try:
                    if self.engine is not None:
                        uri = self.engine.uri()
                    else:
                        uri = self.uri
                        if self.embedded:
                            Path(uri).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
                    self._client = MilvusClient(uri=uri, token=self.token, timeout=self.timeout)
                except Exception as exc:
                    raise StoreUnavailable(exc) from None
            return self._client

    def _drop_locked(self) -> None:
        c, self._client = self._client, None
        self._forget(None)  # a restarted Milvus has collections released again: re-check and load
        if c is not None:
            try:
                c.close()
            except Exception:
                pass

    def reset(self) -> None:
        """Drop the client so the next call reconnects (after Milvus was unreachable)."""
        with self._lock:
            self._drop_locked()

    def close(self) -> None:
        self.reset()
        if self.engine is not None:
            self.engine.stop()

    @contextlib.contextmanager
    def _entered(self, what: str):
        """Count a store call ("calls") or an open scan ("scans"), each begun only while no restart holds them:
        a scan's engine iterator lives on this client, so none begins while a scan is open."""
        with self._gate:
            self._gate.wait_for(lambda: not self._held)
            self._open[what] += 1
        try:
            yield
        finally:
            with self._gate:
                self._open[what] -= 1
                self._gate.notify_all()

    def scanning(self):
        return self._entered("scans")

    def recycle(self, drain_seconds: float = 30.0) -> float | None:
        """Restart the embedded child: new calls wait, the calls in flight finish, the child stops and starts on
        the same file, its collections load again, and the waiting calls go on. Returns the seconds calls were
        held, or None when an open scan, or calls still in flight after drain_seconds, kept it from happening (it
        is tried again later). Nothing acknowledged is lost: the child has written it to its file."""
        start = time.monotonic()
        with self._gate:
            if self._open["scans"]:
                return None
            self._held = True
            drained = self._gate.wait_for(lambda: self._open["calls"] == 0, drain_seconds)
        try:
            if not drained:
                return None
            with self._lock:
                self._drop_locked()
                self.engine.stop()
            client = self.client()
            for name in client.list_collections():  # loaded now, not by the first call that meets each
                client.load_collection(name)
            return time.monotonic() - start
        finally:
            with self._gate:
                self._held = False
                self._gate.notify_all()

    def call(self, fn: Callable[[MilvusClient], T], collection: str | None = None) -> T:
        """fn(client), with a released `collection` loaded once and retried, and failures as StoreErrors."""
        with self._entered("calls"):
            return self._call(fn, collection)

    def _call(self, fn: Callable[[MilvusClient], T], collection: str | None) -> T:
        try:
            try:
                return fn(self.client())
            except MilvusException as exc:
                if collection is None or not (exc.code == 101 or "load()" in str(exc.message)):
                    raise
                # Released (e.g. Milvus restarted): load once and retry.
                self.client().load_collection(collection)
                return fn(self.client())
        except TandemError:  # raised by fn itself: already says what went wrong
            raise
        except MilvusException as exc:
            if exc.code == 100 or "not exist" in str(exc.message) or "not found" in str(exc.message).lower():
                if collection is not None:
                    self._forget(collection)
                    raise CollectionMissing(collection) from None
            if _is_connection_error(exc):
                self.reset()
                raise StoreUnavailable(exc) from None
            raise StoreFailed(exc.message) from None
        except Exception as exc:  # grpc/connection failures surface as many types
            self.reset()
            raise StoreUnavailable(exc) from None


def _is_connection_error(exc: MilvusException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in ("unavailable", "connect", "deadline", "timeout", "closed", "not ready"))

"""Seal (flush) embedded collections in the background, so search cost does not depend on how rows arrived.

An embedded engine keeps new rows in a growing segment until it is flushed; milvus-lite 3 does that only at
128 MB, and searches the buffer with a brute-force pass (BM25 rebuilds its index on every call). Bulk ingest
used to flush at the end of a stream, on the request's path; unary Upserts never did. Here every
acknowledged write is noted, and a collection is flushed once its writes have been quiet for
`quiet_seconds`, or at once when `max_rows` unflushed rows pile up. A Milvus server seals segments itself,
so the server does not start a sealer for one.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tandem.server import metrics
from tandem.server.storage.background import Background
from tandem.server.storage.errors import CollectionMissing, StoreError

log = logging.getLogger(__name__)


class Sealer(Background):
    name = "sealer"

    def __init__(self, store, quiet_seconds: float = 1.0, max_rows: int = 10_000):
        self.store = store
        self.quiet_seconds = quiet_seconds
        self.max_rows = max_rows
        self._pending: dict[str, list] = {}  # collection -> [unflushed rows, time of the last write]
        self._wake = asyncio.Event()

    def wrote(self, collection: str, rows: int) -> None:
        """Note an acknowledged write (on the event loop; costs a dict update)."""
        entry = self._pending.setdefault(collection, [0, 0.0])
        entry[0] += rows
        entry[1] = time.monotonic()
        metrics.STORE_UNSEALED_ROWS.inc(rows)
        self._wake.set()

    def _due(self, now: float) -> tuple[list[str], float | None]:
        due, wait = [], None
        for name, (rows, last) in self._pending.items():
            left = last + self.quiet_seconds - now
            if rows >= self.max_rows or left <= 0:
                due.append(name)
            else:
                wait = left if wait is None else min(wait, left)
        return due, wait

    async def _run(self) -> None:
        while True:
            due, wait = self._due(time.monotonic())
            for name in due:
                rows, _ = self._pending.pop(name)
                metrics.STORE_UNSEALED_ROWS.dec(rows)
                await self._flush(name, rows)
            if due:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _flush(self, name: str, rows: int) -> None:
        start = time.monotonic()
        try:
            await asyncio.to_thread(self.store.flush, name)
        except CollectionMissing:
            return  # dropped meanwhile: nothing to seal
        except StoreError as exc:
            log.warning("sealing %s failed (%s); will retry", name, exc.message)
            entry = self._pending.setdefault(name, [0, 0.0])
            entry[0] += rows
            entry[1] = time.monotonic()
            metrics.STORE_UNSEALED_ROWS.inc(rows)
            return
        metrics.STORE_FLUSH_SECONDS.observe(time.monotonic() - start)
        log.debug("sealed %s (%d rows) in %.3fs", name, rows, time.monotonic() - start)

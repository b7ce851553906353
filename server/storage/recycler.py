"""Restart the embedded Milvus child once its memory has grown past a bound.

milvus-lite keeps in memory what deleted and replaced rows leave behind, and it cannot compact (pymilvus's
`compact()` answers UNIMPLEMENTED): measured, about 1.4 MB per 1,000 writes of new documents that were later
deleted, without end, while its database file stays the same size. A restart gives all of it back and loses
nothing acknowledged, since the file holds every write. So its memory is read every `check_seconds`, and once
it has grown `grow_mb` past its first reading after a start, the connection restarts it (store calls wait for the
second or so that takes; `Connection.recycle`). A Milvus server compacts by itself, so none runs for one.
"""

from __future__ import annotations

import asyncio
import logging

from tandem.server import metrics
from tandem.server.storage.background import Background

log = logging.getLogger(__name__)


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None  # gone, or not Linux


class Recycler(Background):
    name = "engine-recycler"

    def __init__(self, conn, grow_mb: float, check_seconds: float = 30.0):
        self.conn, self.grow_mb, self.check_seconds = conn, grow_mb, check_seconds
        self._baseline: tuple[int, int] | None = None  # (pid, bytes) at the first reading after a start

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                await self.check()
            except Exception as exc:  # the child could not start again: calls restart it on demand
                log.error("embedded Milvus: restarting it to give back memory failed: %s", exc)
                self._baseline = None

    async def check(self) -> None:
        pid = self.conn.engine.pid
        now = rss_bytes(pid) if pid else None
        if now is None:
            return
        metrics.STORE_ENGINE_RSS.set(now)
        if self._baseline is None or self._baseline[0] != pid:
            self._baseline = (pid, now)
            return
        grown = (now - self._baseline[1]) / 2**20
        if grown < self.grow_mb:
            return
        held = await asyncio.to_thread(self.conn.recycle)
        if held is None:
            log.info("embedded Milvus: %.0f MB over its start, but an export was open or store calls kept running "
                     "for 30 s; trying again in %.0f s", grown, self.check_seconds)
            return
        metrics.STORE_ENGINE_RECYCLES.inc()
        self._baseline = None
        after = rss_bytes(self.conn.engine.pid or 0)
        log.info("embedded Milvus: restarted it to give back memory (%.0f MB -> %s; milvus-lite keeps deleted and "
                 "replaced rows in memory and cannot compact); store calls waited %.2f s",
                 now / 2**20, f"{after / 2**20:.0f} MB" if after else "?", held)

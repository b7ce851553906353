"""The embedded Milvus engine, run as a supervised child process.

milvus-lite 2.5 is Milvus's own C++ engine (segcore/knowhere) in a `milvus` binary. Tandem starts it on a
Unix socket beside the database file and talks to it over gRPC, so search never runs Python on Tandem's
GIL. The store asks `uri()` before every connection: a child that died is started again there, and the
health monitor's store probe is what notices (NOT_SERVING while it is down, SERVING once it is back).

milvus-lite 3.x has no such binary: it is a Python engine that pymilvus runs as threads inside this process
(v0.1's default). With it installed, the store hands pymilvus the file path, as v0.1 did; v0.2 is tested
against 2.5.1 only.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

log = logging.getLogger(__name__)
# milvus-lite 2.5.1 reads its version through pkg_resources, which warns on import.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


def child_engine_available() -> bool:
    try:
        from milvus_lite.server import Server  # noqa: F401  (2.x only)
    except Exception:
        return False
    return True


def lite_version() -> str:
    try:
        from importlib.metadata import version

        return version("milvus-lite")
    except Exception:
        return ""


class EmbeddedMilvus:
    """One `milvus` child serving one database file; restarted on demand when it has died."""

    def __init__(self, db_file: str, address: str | None = None, nice: int = 0):
        self.db_file = str(Path(db_file).expanduser().resolve())
        self.address = address  # host:port to serve TCP instead of a Unix socket (tests)
        self.nice = nice  # added to the child's niceness: on a saturated CPU, model work runs first
        self._server = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        p = getattr(self._server, "_p", None)
        return p.pid if p is not None else None

    def alive(self) -> bool:
        p = getattr(self._server, "_p", None)
        return p is not None and p.poll() is None

    def uri(self) -> str:
        """The URI to connect to, starting (or restarting) the child if it is not running."""
        with self._lock:
            if not self.alive():
                if self._server is not None:
                    from tandem.server import metrics

                    metrics.STORE_ENGINE_RESTARTS.inc()
                    log.warning("embedded Milvus (pid %s) exited with %s; restarting it", self.pid,
                                self._server._p.returncode)
                    self._stop_locked()
                self._start_locked()
            return f"http://{self.address}" if self.address else self._server.uds_path

    def _start_locked(self) -> None:
        from milvus_lite.server import Server

        Path(self.db_file).parent.mkdir(parents=True, exist_ok=True)
        s = Server(self.db_file, self.address)
        # Server.start() waits 0.5 s and fails if the child exited by then; a child of a process that was
        # just killed may still hold the file lock for a moment, so try a few times.
        for attempt in range(20):
            if s.init() and s.start():
                self._server = s
                if self.nice:
                    self._renice()
                log.info("embedded Milvus (milvus-lite %s) started, pid %s, %s", lite_version(), self.pid,
                         self.address or "unix socket")
                return
            s.stop()
            s = Server(self.db_file, self.address)
            threading.Event().wait(0.25 * (attempt + 1))
        raise RuntimeError(f"the embedded Milvus could not open {self.db_file}; is another process using it?")

    def _renice(self) -> None:
        """Lower the child's priority. Linux keeps niceness per thread, and the child has threads by now (threads it
        starts later inherit from theirs), so every task is reniced."""
        tasks = Path(f"/proc/{self.pid}/task")
        tids = [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [self.pid]
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self.nice)
            except (OSError, AttributeError):
                pass  # gone, not permitted, or not POSIX: it runs at our priority

    def _stop_locked(self) -> None:
        if self._server is not None:
            s, self._server = self._server, None
            if self.address and s._p is not None and s._p.poll() is None:
                s._p.terminate()  # a TCP child holds no lock file that would stop it
            s.stop()

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

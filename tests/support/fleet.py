"""A fleet on this machine: one Milvus server (milvus-lite serving TCP), N Tandem replicas over it, nginx in
front; and a mixed load that counts every call's outcome and every acknowledged write, for tests/test_fleet.py
and benchmarks/fleet.py."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from pathlib import Path

from tandem import Client
from tandem.errors import TandemError
from tests.support.balancer import Nginx
from tests.support.milvus import MilvusLite
from tests.support.serverproc import ServerProcess, free_port

# Seed documents whose exact text, searched for, must come back first: a wrong answer is counted, not just errors.
SEED = [(f"seed{i}", f"seed document {i}: the {w} of a {t} at mach {i % 7 + 1}")
        for i, (w, t) in enumerate((w, t) for w in ("drag", "lift", "heat transfer", "buckling", "vibration")
                                   for t in ("swept wing", "cylinder", "flat plate", "cone"))]


class Fleet:
    """One Milvus server, `n` replicas started side by side with `flags`, and nginx over them (when `balancer`)."""

    def __init__(self, root: Path, n: int, flags: tuple[str, ...], balancer: bool = True):
        self.root = Path(root)
        self.milvus = MilvusLite(self.root / "milvus", free_port())
        self.replicas = [ServerProcess(self.root / f"replica{i}", *flags, "--milvus-uri", self.milvus.uri)
                         for i in range(n)]
        self.nginx = Nginx(self.root / "nginx", [r.target for r in self.replicas]) if balancer else None

    @property
    def spread(self) -> str:
        """The replicas as one client target: the client balances over them by itself."""
        return ",".join(r.target for r in self.replicas)

    def start(self, timeout: float = 600) -> "Fleet":
        self.milvus.start()
        for r in self.replicas:
            r.start(wait=False)
        for r in self.replicas:
            r.wait_ready(timeout)
        if self.nginx:
            self.nginx.start()
        return self

    def restart_milvus(self, down_for: float) -> None:
        self.milvus.stop()
        time.sleep(down_for)
        self.milvus.start()

    def stop(self) -> None:
        if self.nginx:
            self.nginx.stop()
        for r in self.replicas:  # all drain together; terminate()'s own signal then ends each drain delay
            if r.proc and r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in self.replicas:
            r.terminate()
        self.milvus.stop()


@dataclass
class Tally:
    calls: Counter = field(default_factory=Counter)  # (op, code) -> n
    acked: list = field(default_factory=list)  # ids whose Upsert returned OK
    wrong: list = field(default_factory=list)  # Searches that answered, but not with the seed asked for
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: str, code: str) -> None:
        with self.lock:
            self.calls[(op, code)] += 1

    def failed(self) -> dict:
        return {f"{op} {code}": n for (op, code), n in sorted(self.calls.items()) if code != "OK"}

    def ok(self) -> int:
        return sum(n for (_, code), n in self.calls.items() if code == "OK")


class MixedLoad:
    """Threads, each with its own client to `target` (nginx, or a list of replicas balanced by the client),
    calling Search (dense, hybrid, filtered), Embed, Describe and Upsert of new ids until stopped."""

    def __init__(self, targets: list[str], collection: str, threads_per_target: int = 2, timeout: float = 30.0,
                 retry=None, tag: str = "w", tally: Tally | None = None):
        self.targets, self.collection, self.per = targets, collection, threads_per_target
        self.timeout, self.retry, self.tag = timeout, retry, tag
        self.tally = tally or Tally()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _run(self, target: str, n: int) -> None:
        rng = random.Random(n)
        with Client(target, timeout=self.timeout, retry=self.retry) as c:
            i = 0
            while not self._stop.is_set():
                i += 1
                op = rng.choices(("search", "hybrid", "filtered", "embed", "describe", "upsert"),
                                 (4, 1, 1, 2, 1, 2))[0]
                try:
                    if op in ("search", "hybrid", "filtered"):
                        sid, text = SEED[rng.randrange(len(SEED))]
                        res = c.search(self.collection, text, top_n=3, rerank=False, recall_k=10,
                                       mode="hybrid" if op == "hybrid" else "dense",
                                       filter={"kind": "seed"} if op == "filtered" else None)
                        if not res or res[0].id != sid:
                            with self.tally.lock:
                                self.tally.wrong.append((op, text, [h.id for h in res][:3]))
                    elif op == "embed":
                        assert len(c.embed(["a wing in transonic flow"])[0]) == 384
                    elif op == "describe":
                        c.describe(self.collection)
                    else:
                        doc_id = f"{self.tag}{n}-{i}"
                        c.upsert(self.collection, [{"id": doc_id, "text": f"written {doc_id} under load",
                                                    "metadata": {"kind": "load"}}])
                        with self.tally.lock:
                            self.tally.acked.append(doc_id)
                    self.tally.add(op, "OK")
                except TandemError as e:
                    self.tally.add(op, e.code.name)

    def start(self) -> "MixedLoad":
        for t, target in enumerate(self.targets):
            for k in range(self.per):
                th = threading.Thread(target=self._run, args=(target, t * 100 + k), daemon=True)
                th.start()
                self._threads.append(th)
        return self

    def stop(self) -> Tally:
        self._stop.set()
        for th in self._threads:
            th.join(self.timeout * 4)
        return self.tally


def seed(client: Client, collection: str) -> None:
    client.create_collection(collection)
    client.upsert(collection, [{"id": i, "text": t, "metadata": {"kind": "seed"}} for i, t in SEED])


def missing(client: Client, collection: str, ids: list[str]) -> list[str]:
    """Of these acknowledged ids, those the collection does not hold (read back by Export)."""
    _, pages = client.export(collection)
    held = {row.id for page in pages for row in page}
    return [i for i in ids if i not in held]

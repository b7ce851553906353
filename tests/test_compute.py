"""One compute thread per device: models share it, never overlap on it, and it outlives any one batcher.

The backend here stands in for a model so that overlap and thread identity can be observed; the batcher
and the compute pool under test are the real ones."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from tandem.workers import Batcher, BatchLimits, WorkerStopped
from tandem.workers.compute import compute_pool, device_key


class SlowBackend:
    """Stands in for a model: records which thread ran it and whether two runs ever overlapped."""

    name = kind = "slow"
    max_length = 0
    pass_cost = None

    def __init__(self, log: dict, seconds: float = 0.02):
        self.log, self.seconds = log, seconds

    def measure(self, payloads, inline=False):
        return [1] * len(payloads)

    def run(self, payloads):
        with self.log["lock"]:
            self.log["active"] += 1
            self.log["max_active"] = max(self.log["max_active"], self.log["active"])
            self.log["threads"].add(threading.current_thread().name)
        time.sleep(self.seconds)
        with self.log["lock"]:
            self.log["active"] -= 1
        return [len(p) for p in payloads]


def _log() -> dict:
    return {"lock": threading.Lock(), "active": 0, "max_active": 0, "threads": set()}


def test_one_pool_per_device():
    assert compute_pool("cpu") is compute_pool("cpu")
    assert device_key("cuda") == device_key("cuda:0") == "cuda:0"
    assert compute_pool("cuda:0") is not compute_pool("cpu")  # creating a pool needs no GPU


async def test_models_on_one_device_share_the_thread_and_never_overlap():
    log = _log()
    pool = compute_pool("cpu-test-share")
    a = Batcher("a", SlowBackend(log), BatchLimits(max_batch_size=2), executor=pool)
    b = Batcher("b", SlowBackend(log), BatchLimits(max_batch_size=2), executor=pool)
    a.start()
    b.start()
    calls = [x.submit(["xx", "yyy", "z"]) for _ in range(6) for x in (a, b)]
    results = await asyncio.gather(*calls)
    assert all(r == [2, 3, 1] for r, _ in results)
    assert log["max_active"] == 1, "two models ran on the CPU at the same time"
    assert len(log["threads"]) == 1 and next(iter(log["threads"])).startswith("compute-")

    # Stopping one batcher leaves the shared thread running for the other.
    await a.stop()
    out, _ = await b.submit(["abcd"])
    assert out == [4]
    await b.stop()


async def test_stop_waits_for_the_batch_on_the_compute_thread_and_fails_the_rest():
    log = _log()
    b = Batcher("slow", SlowBackend(log, seconds=0.3), BatchLimits(max_batch_size=1),
                executor=compute_pool("cpu-test-stop"))
    b.start()
    first = asyncio.ensure_future(b.submit(["one"]))
    second = asyncio.ensure_future(b.submit(["two"]))
    await asyncio.sleep(0.1)  # `first` is on the compute thread, `second` is queued
    await b.stop(drain_seconds=0)
    assert log["active"] == 0, "stop returned while the compute thread still held a batch"
    for f in (first, second):
        with pytest.raises(WorkerStopped):
            await f


def test_server_names_its_compute_thread(server):
    # Threads the compute thread starts (its OpenMP workers) inherit the OS name, so there may be several.
    names = [Path(t, "comm").read_text().strip() for t in Path(f"/proc/{server.proc.pid}/task").iterdir()]
    assert "compute-cpu" in names, names

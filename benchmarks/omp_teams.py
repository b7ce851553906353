"""Why Tandem runs every model of a device on one compute thread (workers/compute.py).

    python -m benchmarks.omp_teams

Times a batch-1 MiniLM-L6-shaped cross-encoder forward pass on the main thread, alternating blocks with and
without a second thread that has run one torch op batch (and so owns a second OpenMP team) and stays alive.
With more OpenMP threads than cores, libgomp spins only briefly between parallel regions, so each op pays a
futex wake-up.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO


def main(blocks: int = 6, calls: int = 40) -> dict:
    from sentence_transformers import CrossEncoder

    from tandem.workers.backends import CrossEncoderBackend

    path = minilm_cross_encoder(Path(tempfile.mkdtemp(prefix="tandem-omp-")) / "ce")
    backend = CrossEncoderBackend(CrossEncoder(path, device="cpu"), "ce")
    data = REPO / "datasets" / "cranfield"
    rows = [r for r in map(json.loads, (data / "corpus.jsonl").read_text().splitlines()) if r["text"].strip()]
    queries = [json.loads(x)["text"] for x in (data / "queries.jsonl").read_text().splitlines()]
    rng = random.Random(3)
    pairs = [(rng.choice(queries), " ".join(rng.choice(rows)["text"].split()[:60])) for _ in range(32)]
    for p in pairs[:10]:
        backend.run([p])
    times: dict[str, list[float]] = {"one OpenMP team": [], "two OpenMP teams": []}

    def block(label):
        for i in range(calls):
            t = time.perf_counter()
            backend.run([pairs[i % len(pairs)]])
            times[label].append(time.perf_counter() - t)

    for _ in range(blocks):
        block("one OpenMP team")
        stop = threading.Event()

        def other():
            backend.run([pairs[0]])  # this thread now owns its own OpenMP team
            stop.wait()

        th = threading.Thread(target=other)
        th.start()
        time.sleep(0.2)
        block("two OpenMP teams")
        stop.set()
        th.join()
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


if __name__ == "__main__":
    res = main()
    for k, v in res.items():
        print(f"{k}: batch-1 forward p50 {v:.2f} ms")
    print(f"slowdown: {res['two OpenMP teams'] / res['one OpenMP team']:.2f}x")

"""What CPU taken from the OpenMP team costs a 2-core model call.

    python -m benchmarks.contention            # a co-runner taking 0, 7.5% and 15% of a core
    python -m benchmarks.contention --teams    # a co-runner spinning on a whole core, by torch team size

The second form is the measurement behind workers/team.py: torch's two-thread team against one thread, each
torch option in turns, idle and beside a process that spins on one core (the situation issue 20 measured as
a collapse), on the same model and pairs.

A served Rerank shares the cores with the event loop that answers the RPCs and, on one machine, with the
load generator: together about 0.15 of a core at 300 one-title requests/s (per-thread CPU from /proc during
`tandem bench --only s10`). This times raw batch-16 title scoring in turns alone and beside a co-runner
process that spins for a given share of one core in 2 ms periods, so the price of that share is measured
on the same model and pairs as scenario 10's raw figure.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO

SPIN = """
import sys, time
duty, period = float(sys.argv[1]), 0.002
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < period * duty:
        pass
    time.sleep(period * (1 - duty))
"""


def main(duties=(0.0, 0.075, 0.15), rounds: int = 4, batch: int = 16) -> dict:
    from tandem.server.models import load_reranker

    data = REPO / "datasets" / "cranfield"
    titles = [t for t in (json.loads(x)["title"] for x in (data / "corpus.jsonl").read_text().splitlines()) if t]
    queries = [json.loads(x)["text"] for x in (data / "queries.jsonl").read_text().splitlines()]
    pairs = [(queries[i % len(queries)], titles[i % len(titles)]) for i in range(256)]
    # The served default: the backend and precision measured fastest on this CPU (cached in ~/.cache/tandem).
    model = load_reranker(minilm_cross_encoder(Path(tempfile.mkdtemp(prefix="tandem-cont-")) / "ce"), "cpu", False)

    def rate() -> float:
        t = time.perf_counter()
        for _ in range(3):
            for i in range(0, len(pairs), batch):
                model.run(pairs[i:i + batch])
        return 3 * len(pairs) / (time.perf_counter() - t)

    rate()
    runs: dict[float, list[float]] = {d: [] for d in duties}
    for _ in range(rounds):
        for d in duties:
            spinner = subprocess.Popen([sys.executable, "-c", SPIN, str(d)]) if d else None
            time.sleep(0.3)
            try:
                runs[d].append(rate())
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
    alone = runs[duties[0]]
    return {"precision": f"{model.backend} {model.precision}", "batch": batch,
            "pairs_per_s": {str(d): statistics.median(v) for d, v in runs.items()},
            "ratio_vs_alone": {str(d): statistics.median(x / y for x, y in zip(v, alone)) for d, v in runs.items()}}


def teams(rounds: int = 3, batch: int = 16) -> dict:
    """pairs/s of raw batch-16 title scoring per (precision, threads), idle and beside a full-core spinner."""
    import os

    import torch

    from tandem.server.models import load_reranker

    data = REPO / "datasets" / "cranfield"
    titles = [t for t in (json.loads(x)["title"] for x in (data / "corpus.jsonl").read_text().splitlines()) if t]
    queries = [json.loads(x)["text"] for x in (data / "queries.jsonl").read_text().splitlines()]
    pairs = [(queries[i % len(queries)], titles[i % len(titles)]) for i in range(256)]
    ce = minilm_cross_encoder(Path(tempfile.mkdtemp(prefix="tandem-cont-")) / "ce")
    from tandem.server.precision import cpu_bf16_flag

    models = {p: load_reranker(ce, "cpu", False, p, "torch") for p in ("fp32", *(["bf16"] if cpu_bf16_flag() else []))}
    full = torch.get_num_threads()
    out: dict = {}
    for load in ("idle", "spinner"):
        spin = (subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{os.cpu_count() - 1}}})"
                                  "\nwhile True: pass"]) if load == "spinner" else None)
        time.sleep(0.3)
        try:
            for _ in range(rounds):
                for p, m in models.items():
                    for n in (full, 1):
                        torch.set_num_threads(n)
                        m.run(pairs[:batch])
                        t = time.perf_counter()
                        for i in range(0, len(pairs), batch):
                            m.run(pairs[i:i + batch])
                        out.setdefault(f"{p} {n} threads {load}", []).append(len(pairs) / (time.perf_counter() - t))
        finally:
            torch.set_num_threads(full)
            if spin:
                spin.kill()
                spin.wait()
    return {k: statistics.median(v) for k, v in out.items()}


if __name__ == "__main__":
    if "--teams" in sys.argv:
        r = teams()
        for k, v in r.items():
            idle = r[k.replace("spinner", "idle")]
            print(f"{k}: {v:.1f} pairs/s ({v / idle:.2f}x of the same idle)")
        sys.exit(0)
    r = main()
    print(json.dumps(r, indent=2))
    for d, ratio in r["ratio_vs_alone"].items():
        print(f"co-runner at {float(d):.3f} of a core: {r['pairs_per_s'][d]:.0f} pairs/s, {ratio:.3f}x alone")

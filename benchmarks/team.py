"""What the adaptive thread team (workers/team.py) costs on an idle machine and gains beside a busy neighbour.

    .venv/bin/python -m benchmarks.team [--rounds 3] [--seconds 6]

One process, one torch bf16 reranker (fp32 where the CPU has no native bf16) of the MiniLM-L6 reference shape,
served through the real Batcher and compute thread, three ways in turns (the order rotates each round):
- fixed: the full team, never resized (team=None);
- probe every 16: the team as it was, probing the other size every 16th pass whatever it learnt;
- adaptive: the team as it is, probing a smaller size only while the full team runs slower than that size's
  floor (its best-ever slowdown).
Workloads as benchmarks/peers.py's: 16 clients x 20 passages and 32 clients x 1 title, idle and beside a process
spinning on the last core. Each figure is the median over rounds of pairs per second; ratios are to the fixed
team in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.peers import SPIN, cpu_model, workloads
from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO


async def _window(batcher, reqs: list, clients: int, seconds: float) -> float:
    done, stop = 0, time.perf_counter() + seconds

    async def client(i: int):
        nonlocal done
        k = i
        while time.perf_counter() < stop:
            r = reqs[k % len(reqs)]
            await batcher.submit([(r["query"], d) for d in r["documents"]])
            done += len(r["documents"])
            k += clients

    t = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.perf_counter() - t)


async def run(rounds: int, seconds: float) -> dict:
    import torch

    from tandem.server.config import Config
    from tandem.server.models import load_reranker
    from tandem.server.precision import cpu_bf16_flag
    from tandem.workers.batcher import Batcher
    from tandem.workers.compute import compute_pool
    from tandem.workers.team import Team

    ce = minilm_cross_encoder(Path(tempfile.mkdtemp(prefix="tandem-team-")) / "ce")
    precision = "bf16" if cpu_bf16_flag() else "fp32"
    backend = load_reranker(ce, "cpu", False, precision, "torch")
    full = torch.get_num_threads()
    pool = compute_pool("cpu")
    teams = {"fixed": None,
             "probe every 16": Team((full, 1), torch.set_num_threads, learn=10**9),  # never stops probing
             "adaptive": Team((full, 1), torch.set_num_threads)}
    batchers = {k: Batcher(f"reranker-{k}", backend, Config().rerank_limits("cpu"), executor=pool, team=t)
                for k, t in teams.items()}
    for b in batchers.values():
        b.start()
    work = workloads()
    rates: dict = {}
    for r in range(rounds):
        for load in ("idle", "co-runner"):
            spin = subprocess.Popen([sys.executable, "-c", SPIN, str(os.cpu_count() - 1)]) if load == "co-runner" \
                else None
            try:
                for name in ("passages", "titles"):
                    reqs, clients = work[name]
                    order = list(batchers)[r % 3:] + list(batchers)[:r % 3]
                    for k in order:
                        # torch's thread count is per process: put back what this one's team last set.
                        pool.submit(torch.set_num_threads, teams[k].current if teams[k] else full).result()
                        rate = await _window(batchers[k], reqs, clients, seconds)
                        rates.setdefault(f"{name} {load}", {}).setdefault(k, []).append(rate)
            finally:
                if spin:
                    spin.kill()
                    spin.wait()
    for b in batchers.values():
        await b.stop()
    out = {"cpu": cpu_model(), "option": f"torch {precision}", "rounds": rounds, "seconds": seconds,
           "probes": {k: t.probes for k, t in teams.items() if t}, "windows": {}}
    for w, by in rates.items():
        out["windows"][w] = {k: {"pairs_per_s": statistics.median(v),
                                 "vs_fixed": statistics.median(x / f for x, f in zip(v, by["fixed"]))}
                             for k, v in by.items()}
    for k in batchers:
        for name in ("passages", "titles"):
            idle, busy = rates[f"{name} idle"][k], rates[f"{name} co-runner"][k]
            out.setdefault("busy_vs_idle", {}).setdefault(k, {})[name] = statistics.median(
                b / i for b, i in zip(busy, idle))
    return out


def table(rep: dict) -> str:
    lines = [f"CPU: {rep['cpu']}; {rep['option']}; medians of {rep['rounds']} rounds of {rep['seconds']} s windows",
             "| team | " + " | ".join(rep["windows"]) + " | beside the spinner / idle (passages, titles) |",
             "|---|" + "---|" * (len(rep["windows"]) + 1)]
    for k in rep["busy_vs_idle"]:
        cells = [f"{w[k]['pairs_per_s']:.1f} ({w[k]['vs_fixed']:.3f}x)" for w in rep["windows"].values()]
        b = rep["busy_vs_idle"][k]
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {b['passages']:.2f} / {b['titles']:.2f} |")
    lines.append(f"probes made: {rep['probes']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "team.json")
    args = p.parse_args(argv)
    rep = asyncio.run(run(args.rounds, args.seconds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rep, indent=1))
    print(table(rep))
    return rep


if __name__ == "__main__":
    main()

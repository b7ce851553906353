"""A fleet under load and under faults: one Milvus server (milvus-lite serving TCP), three Tandem replicas, nginx
(deploy/nginx/tandem-grpc.conf) in front; the Python client also balancing by itself over the replicas.

    python -m benchmarks.fleet --seconds 120 --threads 4

1. Throughput through nginx with 1, 2 and 3 replicas behind it (the same load, `--phase-seconds` each). On a
   2-core machine the replicas share the cores: the figure shows that the balancing works, not that it scales.
2. The same mixed load (Search dense/hybrid/filtered, Embed, Describe, Upsert) for `--seconds`, through nginx and
   through the client's own round_robin, while it kills (-9) a replica and starts it again, restarts the Milvus
   server, and sends SIGTERM to another replica and starts it again. Prints calls made, failures by code, writes
   acknowledged and writes found afterwards (must be equal). Exit status 1 when a call failed, an answer was wrong
   or an acknowledged write is missing.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from tandem import Client
from tests.support.balancer import Nginx
from tests.support.checkpoints import bundled_encoder
from tests.support.fleet import Fleet, MixedLoad, missing, seed

FLAGS = ("--reranker", "none", "--backend", "torch", "--precision", "fp32", "--drain-delay-seconds", "2",
         "--grace-seconds", "5")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def throughput(fleet: Fleet, root: Path, seconds: float, threads: int) -> dict[int, float]:
    out = {}
    for n in (1, 2, 3):
        lb = Nginx(root / f"nginx-{n}", [r.target for r in fleet.replicas[:n]]).start()
        try:
            load = MixedLoad([lb.target], "bench", threads_per_target=threads, tag=f"t{n}-").start()
            time.sleep(seconds)
            tally = load.stop()
        finally:
            lb.stop()
        out[n] = tally.ok() / seconds
        print(f"  {n} replica(s): {out[n]:7.1f} calls/s  failed {tally.failed() or 0}", flush=True)
    return out


def faults(fleet: Fleet, seconds: float, threads: int) -> dict:
    events: list[tuple[float, str]] = []
    start = time.monotonic()

    def at(frac: float, what: str, act) -> None:
        time.sleep(max(0.0, start + frac * seconds - time.monotonic()))
        events.append((round(time.monotonic() - start, 1), what))
        print(f"  {events[-1][0]:6.1f}s {what}", flush=True)
        act()

    load = MixedLoad([fleet.nginx.target, fleet.spread], "faults", threads_per_target=threads).start()
    killed, drained = fleet.replicas[2], fleet.replicas[1]

    def script():
        at(0.15, "kill -9 replica 3", killed.kill)
        at(0.30, "replica 3 started again", lambda: killed.start())
        at(0.45, "Milvus server stopped for 5 s", lambda: fleet.restart_milvus(5.0))
        events.append((round(time.monotonic() - start, 1), "Milvus server back"))
        at(0.65, "SIGTERM replica 2", lambda: (drained.proc.send_signal(signal.SIGTERM), drained.proc.wait(60)))
        at(0.80, "replica 2 started again", lambda: drained.start())

    t = threading.Thread(target=script)
    t.start()
    t.join()
    time.sleep(max(0.0, start + seconds - time.monotonic()))
    tally = load.stop()
    elapsed = time.monotonic() - start
    with Client(fleet.spread) as c:
        lost = missing(c, "faults", tally.acked)
    return {"seconds": round(elapsed, 1), "calls": sum(tally.calls.values()), "ok": tally.ok(),
            "failed_by_code": tally.failed(), "wrong_answers": len(tally.wrong),
            "writes_acknowledged": len(tally.acked), "writes_found": len(tally.acked) - len(lost),
            "calls_by_op": {f"{op} {code}": n for (op, code), n in sorted(tally.calls.items())}, "events": events}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120, help="the fault run's length")
    ap.add_argument("--phase-seconds", type=float, default=30, help="each throughput phase's length")
    ap.add_argument("--threads", type=int, default=4, help="client threads per target")
    ap.add_argument("--json", help="write the report here too")
    args = ap.parse_args()
    print(f"CPU: {cpu_model()}, {len(__import__('os').sched_getaffinity(0))} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="tandem-fleet-") as tmp:
        root = Path(tmp)
        fleet = Fleet(root, 3, (*FLAGS, "--embedder", f"minilm={bundled_encoder()}"))
        try:
            fleet.start()
            with Client(fleet.nginx.target) as c:
                seed(c, "bench")
                seed(c, "faults")
            print(f"throughput through nginx, {args.threads} client threads, {args.phase_seconds:.0f} s each:")
            tput = throughput(fleet, root, args.phase_seconds, args.threads)
            print(f"faults, {args.seconds:.0f} s of mixed load through nginx and the client's round_robin:")
            report = faults(fleet, args.seconds, args.threads // 2 or 1)
        finally:
            fleet.stop()
    report = {"cpu": cpu_model(), "throughput_calls_per_s": tput, **report}
    print(json.dumps({k: v for k, v in report.items() if k != "events"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    ok = not report["failed_by_code"] and not report["wrong_answers"] and \
        report["writes_found"] == report["writes_acknowledged"]
    print("verdict:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""HTTP against gRPC on one server: Rerank throughput and latency through each transport, in turns.

    python -m benchmarks.transports [--rounds 4] [--seconds 20]

One Tandem server (the MiniLM-shaped test cross-encoder, defaults otherwise) serves both. The load generator
(benchmarks/loadgen.py, its own process) sends the same requests over gRPC and as Cohere v2 bodies to /v2/rerank,
one keep-alive connection per client, alternating transports window by window (which goes first alternates
by round): 16 clients x 20 passages,
32 clients x 1 title, and one client x 1 passage for p50. The report gives HTTP / gRPC ratios per round and their
median, beside the CPU model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.peers import cpu_model, load, workloads
from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO, ServerProcess


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "transports.json")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tandem-transports-"))
    srv = ServerProcess(tmp / "srv", "--reranker", minilm_cross_encoder(tmp / "ce"),
                        "--milvus-uri", str(tmp / "srv" / "m.db")).start(timeout=900)
    work = workloads()
    rounds = []
    try:
        for i in range(args.rounds):
            r = {}
            pair = [("grpc", srv.target), ("http", f"{srv.http_url}/v2/rerank")]
            for name, (reqs, clients) in work.items():
                for transport, target in (pair if i % 2 == 0 else pair[::-1]):  # who goes first alternates
                    r[f"{name} {transport}"] = load(target, reqs, clients, args.seconds, tmp)
            rounds.append(r)
    finally:
        srv.terminate()
    ratios = [{"passages": r["passages http"]["items_per_s"] / r["passages grpc"]["items_per_s"],
               "titles": r["titles http"]["items_per_s"] / r["titles grpc"]["items_per_s"],
               "p50_ms_diff": r["one http"]["p50_ms"] - r["one grpc"]["p50_ms"]} for r in rounds]
    report = {"cpu": cpu_model(), "rounds": rounds, "ratios": ratios,
              "median": {k: statistics.median(x[k] for x in ratios) for k in ratios[0]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report))
    return report


def table(rep: dict) -> str:
    lines = [f"CPU: {rep['cpu']}", "| round | 16x20 passages/s gRPC | HTTP | ratio | 32x1 titles/s gRPC | HTTP | ratio "
             "| 1-doc p50 ms gRPC | HTTP |", "|---|---|---|---|---|---|---|---|---|"]
    for i, (r, x) in enumerate(zip(rep["rounds"], rep["ratios"]), 1):
        lines.append(f"| {i} | {r['passages grpc']['items_per_s']:.1f} | {r['passages http']['items_per_s']:.1f} | "
                     f"{x['passages']:.2f} | {r['titles grpc']['items_per_s']:.1f} | "
                     f"{r['titles http']['items_per_s']:.1f} | {x['titles']:.2f} | {r['one grpc']['p50_ms']:.1f} | "
                     f"{r['one http']['p50_ms']:.1f} |")
    m = rep["median"]
    lines += ["", f"median HTTP/gRPC: passages {m['passages']:.2f}x (target >= 0.95), titles {m['titles']:.2f}x "
                  f"(target >= 0.85), 1-doc p50 {m['p50_ms_diff']:+.2f} ms (target within 1 ms)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

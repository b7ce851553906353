"""What access control costs a call: p50 of a one-document Rerank on a server without auth and on one with a
100-principal policy, paired in one run, over gRPC and HTTP (Cohere v2); and the gate's own time per call.

    python -m benchmarks.auth [--calls 200] [--rounds 10] [--model minilm|tiny]

Both servers run the same reranker with one thread of work at a time from this process; rounds alternate which
server goes first, and each round sends --calls sequential calls to one server, then to the other. The caller is
the last of 100 principals, each with a token and collection globs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import grpc
import httpx

from benchmarks.peers import cpu_model
from tandem.server.access import Gate
from tandem.server.access.tokens import digest
from tandem.v1 import rerank_pb2, rerank_pb2_grpc
from tests.support.checkpoints import minilm_cross_encoder, tiny_cross_encoder
from tests.support.serverproc import REPO, ServerProcess

PRINCIPALS = 100


def policy_text(n: int = PRINCIPALS) -> str:
    out = []
    for i in range(n):
        out += [f"[principals.p{i:03d}]", f'tokens = ["{digest(f"bench-token-{i}")}"]',
                f'read = ["tenant_{i}_*", "shared_*"]', f'write = ["tenant_{i}_*"]', ""]
    return "\n".join(out)


def gate_micro(path: Path) -> dict:
    """The gate alone: open + check + close of one Rerank, in microseconds (no server)."""
    gate = Gate(str(path))
    auth = f"Bearer bench-token-{PRINCIPALS - 1}"
    method = "/tandem.v1.RerankService/Rerank"

    def one():
        call = gate.open(method, "grpc", "ipv4:127.0.0.1:1", auth, list)
        gate.check(call, None)
        gate.close(call, "OK")

    n = 20000
    best = min(timeit.repeat(one, number=n, repeat=5)) / n
    return {"gate_us_per_call": round(best * 1e6, 2)}


def _grpc_times(target: str, token: str | None, n: int) -> list[float]:
    md = [("authorization", f"Bearer {token}")] if token else None
    req = rerank_pb2.RerankRequest(query="boundary layer transition", documents=[
        "The boundary layer on a flat plate becomes turbulent downstream of the transition point."])
    with grpc.insecure_channel(target) as ch:
        stub = rerank_pb2_grpc.RerankServiceStub(ch)
        stub.Rerank(req, metadata=md, timeout=30)  # connect
        out = []
        for _ in range(n):
            t = time.perf_counter()
            stub.Rerank(req, metadata=md, timeout=30)
            out.append(time.perf_counter() - t)
    return out


def _http_times(url: str, token: str | None, n: int) -> list[float]:
    h = {"authorization": f"Bearer {token}"} if token else {}
    body = {"query": "boundary layer transition", "documents": [
        "The boundary layer on a flat plate becomes turbulent downstream of the transition point."]}
    with httpx.Client(base_url=url, timeout=30) as c:
        c.post("/v2/rerank", json=body, headers=h).raise_for_status()
        out = []
        for _ in range(n):
            t = time.perf_counter()
            c.post("/v2/rerank", json=body, headers=h)
            out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "auth.json")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tandem-bench-auth-"))
    model = (minilm_cross_encoder if args.model == "minilm" else tiny_cross_encoder)(work / "ce")
    policy = work / "policy.toml"
    policy.write_text(policy_text())
    token = f"bench-token-{PRINCIPALS - 1}"
    flags = ("--reranker", f"ce={model}", "--max-wait-ms", "0")
    servers = {"off": ServerProcess(work / "off", *flags, "--milvus-uri", str(work / "off.db")),
               "policy": ServerProcess(work / "on", *flags, "--milvus-uri", str(work / "on.db"),
                                       "--auth-policy", str(policy))}
    try:
        for s in servers.values():
            s.start()
        times = {(name, t): [] for name in servers for t in ("grpc", "http")}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                s, tok = servers[name], (token if name == "policy" else None)
                times[(name, "grpc")] += _grpc_times(s.target, tok, args.calls)
                times[(name, "http")] += _http_times(s.http_url, tok, args.calls)
    finally:
        for s in servers.values():
            s.terminate()
    report = {"cpu": cpu_model(), "model": args.model, "principals": PRINCIPALS, "calls_per_round": args.calls,
              "rounds": args.rounds, **gate_micro(policy)}
    for transport in ("grpc", "http"):
        off, on = (statistics.median(times[(n, transport)]) for n in ("off", "policy"))
        report[transport] = {"p50_ms_off": round(off * 1e3, 3), "p50_ms_policy": round(on * 1e3, 3),
                             "ratio": round(on / off, 4)}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

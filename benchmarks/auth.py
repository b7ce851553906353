"""What access control costs a call: p50 of a one-document Rerank on a server without auth and on one with a
100-principal policy, over gRPC and HTTP (Cohere v2); and the gate's own time per call, in-process.

    python -m benchmarks.auth [--lifetimes 6] [--calls 300] [--model minilm|tiny]

Two servers of one build differ by more than the gate costs: on 2 cores, where a server's threads land decides a
few percent either way, and stays so for its lifetime (measured: two identical servers side by side, 3-17% apart).
So the servers take turns, one alive at a time, over several lifetimes each in ABBA order (off, policy, policy,
off, ...), and each kind's figure is the median of its lifetimes' p50s. What auth adds to a call is therefore
measured where it can be resolved, in-process: the gate (open, check, close) with the 100-principal policy, plus
what the gRPC path reads for it (the authorization header and the peer, inside a real handler). Divided by the
served p50, that is the share of a call it takes. (Pairing two in-process gRPC servers, one with the gate, was
tried and dropped: two identical ones differed by 100-130 us by their order alone.) Each lifetime sends --calls sequential
calls over gRPC, then over HTTP. The caller is the last of 100 principals, each with a token and collection globs.
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


def context_micro() -> dict:
    """What the gRPC path reads for the gate on every call when auth is on (the authorization header, the peer),
    timed inside a real grpc.aio handler, in microseconds."""
    import asyncio

    from tandem.server.interceptors import _authorization

    out = {}

    class Probe(rerank_pb2_grpc.RerankServiceServicer):
        async def Rerank(self, request, context):
            def read():
                _authorization(context.invocation_metadata())
                context.peer()

            n = 20000
            out["grpc_context_us_per_call"] = round(min(timeit.repeat(read, number=n, repeat=5)) / n * 1e6, 2)
            return rerank_pb2.RerankResponse()

    async def run():
        server = grpc.aio.server()
        rerank_pb2_grpc.add_RerankServiceServicer_to_server(Probe(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await rerank_pb2_grpc.RerankServiceStub(ch).Rerank(
                rerank_pb2.RerankRequest(), metadata=[("authorization", "Bearer bench-token-99")])
        await server.stop(0)

    asyncio.run(run())
    return out


def _lifetime(work: Path, flags: tuple, token: str | None, calls: int, i: int) -> dict:
    s = ServerProcess(work / f"life{i}", *flags, "--milvus-uri", str(work / f"life{i}.db"))
    s.start()
    try:
        return {"grpc": statistics.median(_grpc_times(s.target, token, calls)),
                "http": statistics.median(_http_times(s.http_url, token, calls))}
    finally:
        s.terminate()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--lifetimes", type=int, default=6, help="server lifetimes of each kind")
    p.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "auth.json")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tandem-bench-auth-"))
    model = (minilm_cross_encoder if args.model == "minilm" else tiny_cross_encoder)(work / "ce")
    policy = work / "policy.toml"
    policy.write_text(policy_text())
    token = f"bench-token-{PRINCIPALS - 1}"
    flags = ("--reranker", f"ce={model}", "--max-wait-ms", "0", "--metrics-port", "-1")
    kinds = {"off": (flags, None), "policy": ((*flags, "--auth-policy", str(policy)), token)}
    p50 = {k: [] for k in kinds}
    for i in range(args.lifetimes):
        for kind in (("off", "policy") if i % 2 == 0 else ("policy", "off")):
            kflags, ktoken = kinds[kind]
            p50[kind].append(_lifetime(work, kflags, ktoken, args.calls, len(p50["off"]) + len(p50["policy"])))
    report = {"cpu": cpu_model(), "model": args.model, "principals": PRINCIPALS, "calls_per_lifetime": args.calls,
              "lifetimes_each": args.lifetimes, **gate_micro(policy), **context_micro()}
    auth_us = report["gate_us_per_call"] + report["grpc_context_us_per_call"]
    for transport in ("grpc", "http"):
        per = {k: [round(x[transport] * 1e3, 3) for x in v] for k, v in p50.items()}
        off, on = statistics.median(per["off"]), statistics.median(per["policy"])
        report[transport] = {"p50_ms_off": off, "p50_ms_policy": on, "ratio": round(on / off, 4),
                             "lifetime_p50s_ms": per,
                             # What auth adds to a call, against this p50: the figure the spread of lifetimes
                             # cannot resolve.
                             "auth_share_of_p50": round(auth_us / 1e3 / off, 5)}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

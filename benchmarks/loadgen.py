"""Load generator: a separate process that speaks plain gRPC, so client cost is not charged to the server.

    python -m benchmarks.loadgen TARGET WORKLOAD.json --concurrency 16 --seconds 10

WORKLOAD.json: {"rpc": "rerank" | "search", "requests": [<request as JSON>, ...]}. Clients cycle through the
requests for `seconds` (after `warmup` seconds) and the report (JSON on stdout) has counts and latencies, and with
--metrics-url the server's metrics text at the start and the end of the window.

--traceparent sampled|unsampled sends each gRPC call a fresh W3C traceparent, as a traced caller does, with its
sampled flag set or not (benchmarks/tracing.py compares the two on one server); --sampled-share 0.1 sets it on a
tenth of the calls, as a caller sampling by ratio does.

A TARGET of http://HOST:PORT/PATH posts each request as JSON to PATH instead (a Cohere-style rerank body, for
peers such as Infinity), over one keep-alive connection per client, so HTTP and gRPC clients cost alike little.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import urllib.parse

import grpc
from google.protobuf import json_format

from tandem.v1 import rerank_pb2, rerank_pb2_grpc, search_pb2, search_pb2_grpc


class _HTTP:
    """A minimal HTTP/1.1 keep-alive JSON client: one connection, one request at a time."""

    def __init__(self, url: str):
        u = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path or "/"
        self._conn = None

    async def post(self, body: dict, timeout: float):
        data = json.dumps(body).encode()
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._conn
        writer.write(f"POST {self.path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        async with asyncio.timeout(timeout):
            status = int((await reader.readline()).split()[1])
            length, chunked = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                if k.lower() == "content-length":
                    length = int(v)
                elif k.lower() == "transfer-encoding" and "chunked" in v:
                    chunked = True
            if chunked:
                payload = b""
                while (n := int((await reader.readline()).strip(), 16)):
                    payload += await reader.readexactly(n)
                    await reader.readline()
                await reader.readline()
            else:
                payload = await reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        return json.loads(payload)


async def _main_http(args, work) -> dict:
    reqs = work["requests"]
    lat, items, errors = [], 0, {}
    start = time.perf_counter()
    warm_end, end = start + args.warmup, start + args.warmup + args.seconds
    counter = iter(range(10**9))

    async def client():
        nonlocal items
        http = _HTTP(args.target)
        while True:
            req = reqs[next(counter) % len(reqs)]
            t0 = time.perf_counter()
            if t0 >= end:
                return
            try:
                await http.post(req, 300)
            except (RuntimeError, OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                errors[str(e)[:40]] = errors.get(str(e)[:40], 0) + 1
                http._conn = None
                continue
            t1 = time.perf_counter()
            if warm_end <= t1 <= end:
                lat.append(t1 - t0)
                items += len(req["documents"])

    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    return {"requests": len(lat), "items": items, "seconds": args.seconds, "latencies": lat, "errors": errors,
            "stages": None, "metrics": None}


async def main(args) -> dict:
    work = json.loads(open(args.workload).read())
    if args.target.startswith("http://"):
        return await _main_http(args, work)
    rpc = work["rpc"]
    cls = rerank_pb2.RerankRequest if rpc == "rerank" else search_pb2.SearchRequest
    reqs = [json_format.ParseDict(r, cls()) for r in work["requests"]]
    async with grpc.aio.insecure_channel(args.target) as ch:
        call = (rerank_pb2_grpc.RerankServiceStub(ch).Rerank if rpc == "rerank"
                else search_pb2_grpc.SearchServiceStub(ch).Search)
        lat, items, errors, stages = [], 0, {}, {"embed": [], "recall": [], "rerank": []}
        done = 0  # every call answered, the warm-up's included
        start = time.perf_counter()
        warm_end = start + args.warmup
        end = warm_end + args.seconds
        counter = iter(range(10**9))
        flag = {"sampled": "01", "unsampled": "00"}.get(args.traceparent)

        async def client():
            nonlocal items, done
            while True:
                i = next(counter)
                req = reqs[i % len(reqs)]
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                md = None
                if flag:
                    sampled = flag == "01" and (args.sampled_share >= 1 or random.random() < args.sampled_share)
                    md = (("traceparent", f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-{'01' if sampled else '00'}"),)
                try:
                    resp = await call(req, timeout=300, metadata=md)
                except grpc.aio.AioRpcError as e:
                    errors[e.code().name] = errors.get(e.code().name, 0) + 1
                    continue
                t1 = time.perf_counter()
                done += 1
                # Throughput counts completions inside the window, whenever they started; so long
                # queues (64 clients) are not cut off at the window's edges.
                if warm_end <= t1 <= end:
                    lat.append(t1 - t0)
                    items += len(req.documents) if rpc == "rerank" else 1
                    if rpc == "search":
                        for s in stages:
                            stages[s].append(getattr(resp.timings, f"{s}_seconds"))

        async def snapshots():  # the server's own metrics at the window's edges
            out = []
            for at in (warm_end, end):
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                out.append(await asyncio.to_thread(_get, args.metrics_url))
            return out

        snaps = asyncio.ensure_future(snapshots()) if args.metrics_url else None
        await asyncio.gather(*(client() for _ in range(args.concurrency)))
    return {"requests": len(lat), "items": items, "seconds": args.seconds, "latencies": lat, "errors": errors,
            "answered": done, "stages": stages if rpc == "search" else None, "metrics": await snaps if snaps else None}


def _get(url: str) -> str:
    import urllib.request

    return urllib.request.urlopen(url, timeout=5).read().decode()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("workload")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--traceparent", choices=("none", "sampled", "unsampled"), default="none")
    p.add_argument("--sampled-share", type=float, default=1.0, help="with --traceparent sampled: the share of calls "
                   "whose traceparent says sampled (the rest say not)")
    p.add_argument("--metrics-url", default="", help="also return the server's /metrics at the window's start and end")
    json.dump(asyncio.run(main(p.parse_args())), sys.stdout)

"""Soak: mixed Search / Rerank / Upsert load against a local server for a set time.

    python -m benchmarks.soak --minutes 10 --concurrency 16 [--target HOST:PORT]

Without --target it starts its own server (MiniLM-sized reranker, Milvus Lite in a temp dir) and samples the
server's RSS. Reports success and error counts by status, p50/p99 per minute, and RSS at start, after warm-up
and at the end. Exits non-zero on any unexpected status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from tandem.v1 import (document_pb2, index_pb2, index_pb2_grpc, rerank_pb2, rerank_pb2_grpc, search_pb2,
                       search_pb2_grpc)
from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO, ServerProcess

EXPECTED = {"OK"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(target: str, seconds: float, concurrency: int, pid: int | None) -> dict:
    rows = [json.loads(x) for x in (REPO / "datasets/cranfield/corpus.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["text"].strip()]
    queries = [json.loads(x)["text"] for x in (REPO / "datasets/cranfield/queries.jsonl").read_text().splitlines()]
    async with grpc.aio.insecure_channel(target) as ch:
        index, search = index_pb2_grpc.IndexServiceStub(ch), search_pb2_grpc.SearchServiceStub(ch)
        rerank = rerank_pb2_grpc.RerankServiceStub(ch)
        try:
            await index.CreateCollection(index_pb2.CreateCollectionRequest(collection="soak"))
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.ALREADY_EXISTS
        seed = [document_pb2.Document(id=r["_id"], text=f"{r['title']} {r['text']}") for r in rows[:200]]
        await index.Upsert(index_pb2.UpsertRequest(collection="soak", documents=seed), timeout=600)
        start = time.monotonic()
        end = start + seconds
        minute_lat: dict[int, list[float]] = {}
        counts: dict[str, int] = {}
        rss = [(0.0, rss_mb(pid))] if pid else []
        rng = random.Random(0)

        async def one():
            kind = rng.choices(["search", "rerank", "upsert"], weights=[6, 3, 1])[0]
            if kind == "search":
                return kind, search.Search(search_pb2.SearchRequest(
                    collection="soak", query=rng.choice(queries), top_n=5, recall_k=10,
                    mode=rng.choice([1, 2, 3])), timeout=30)
            if kind == "rerank":
                docs = [r["title"] for r in rng.sample(rows, rng.randint(2, 10))]
                return kind, rerank.Rerank(rerank_pb2.RerankRequest(query=rng.choice(queries), documents=docs),
                                           timeout=30)
            r = rng.choice(rows)  # re-upserts existing ids: the collection stays the same size
            return kind, index.Upsert(index_pb2.UpsertRequest(collection="soak", documents=[
                document_pb2.Document(id=r["_id"], text=f"{r['title']} {r['text']}")]), timeout=30)

        async def client():
            while time.monotonic() < end:
                kind, call = await one()
                t0 = time.monotonic()
                try:
                    await call
                    code = "OK"
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                t1 = time.monotonic()
                counts[f"{kind}:{code}"] = counts.get(f"{kind}:{code}", 0) + 1
                minute_lat.setdefault(int((t0 - start) // 60), []).append(t1 - t0)

        async def sampler():
            while time.monotonic() < end:
                await asyncio.sleep(10)
                if pid:
                    rss.append((time.monotonic() - start, rss_mb(pid)))

        await asyncio.gather(sampler(), *(client() for _ in range(concurrency)))
    per_minute = [{"minute": m, "requests": len(v), "p50_ms": float(np.percentile(v, 50)) * 1000,
                   "p99_ms": float(np.percentile(v, 99)) * 1000} for m, v in sorted(minute_lat.items())]
    after = [(t, r) for t, r in rss if t >= 60]  # after a minute of warm-up
    warm = after[0][1] if after else (rss[-1][1] if rss else float("nan"))
    # RSS swings by a few hundred MB with batch activations, so end/start alone is noisy: compare the mean of
    # the two halves after warm-up and fit a slope as well.
    trend = {}
    if len(after) >= 4:
        h = len(after) // 2
        first, second = np.mean([r for _, r in after[:h]]), np.mean([r for _, r in after[h:]])
        slope = np.polyfit([t for t, _ in after], [r for _, r in after], 1)[0] * 60
        trend = {"mean_first_half_mb": float(first), "mean_second_half_mb": float(second),
                 "growth_second_vs_first_half": float(second / first - 1), "slope_mb_per_minute": float(slope)}
    return {"seconds": seconds, "concurrency": concurrency, "counts": counts,
            "unexpected": {k: v for k, v in counts.items() if k.split(":")[1] not in EXPECTED},
            "per_minute": per_minute, "rss_mb": {"start": rss[0][1] if rss else None, "after_warmup": warm,
                                                   "end": rss[-1][1] if rss else None},
            "rss_growth_after_warmup": (rss[-1][1] / warm - 1) if rss else None,
            "rss_trend_after_warmup": trend,
            "rss_series_mb": [(round(t), round(r)) for t, r in rss]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--target", default="")
    p.add_argument("--out", default="bench-results/soak.json")
    a = p.parse_args()
    srv = None
    target, pid = a.target, None
    if not target:
        tmp = Path(tempfile.mkdtemp(prefix="tandem-soak-"))
        srv = ServerProcess(tmp, "--reranker", minilm_cross_encoder(tmp / "ce"), "--milvus-uri", str(tmp / "m.db"),
                            env={"TANDEM_LOG_LEVEL": "WARNING"}).start()
        target, pid = srv.target, srv.proc.pid
    try:
        rep = asyncio.run(soak(target, a.minutes * 60, a.concurrency, pid))
    finally:
        if srv:
            rep_rc = srv.terminate()
    if srv:
        rep["server_exit_code"] = rep_rc
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=2))
    print(json.dumps({k: v for k, v in rep.items() if k not in ("per_minute", "rss_series_mb")}, indent=2))
    print("RSS (s, MB):", " ".join(f"{t}:{r}" for t, r in rep["rss_series_mb"]))
    for m in rep["per_minute"]:
        print(f"minute {m['minute']:>2}: {m['requests']:>5} requests, p50 {m['p50_ms']:.0f} ms, p99 {m['p99_ms']:.0f} ms")
    return 1 if rep["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())

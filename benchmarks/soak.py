"""Soak: a fixed-duration mixed load near 70% of measured capacity, over gRPC and HTTP, watching what grows.

    python -m benchmarks.soak --minutes 30 [--load 0.7] [--out bench-results/soak.json]

It starts its own server (a MiniLM-sized cross-encoder reranker, the bundled MiniLM embedder, the embedded Milvus
in a temp dir), seeds a collection of Cranfield abstracts, and measures capacity with a closed loop of the same
mix for `--capacity-seconds`. Then for `--minutes` it sends calls open-loop at `--load` times that rate:

- Search: dense, sparse (BM25) and hybrid, each with and without a metadata filter, reranked or not;
- Rerank, Embed; Upsert of new documents, and Delete of them a little later (the collection stays the same size);
- every kind over gRPC and over HTTP (Connect JSON, Cohere /v1/rerank, OpenAI /v1/embeddings).

Every 5 s it samples the server's and the embedded engine's RSS, open file descriptors and threads. The report:
calls, errors by code (any is unexpected), p50/p99 per method in the first and the last window (10 minutes, or a
third of a shorter run), and each resource's slope after warm-up, with a verdict. Exits 1 on an unexpected error or
on growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import numpy as np
from google.protobuf import json_format

from benchmarks.loadgen import _HTTP
from tandem.v1 import (document_pb2, embed_pb2, embed_pb2_grpc, index_pb2, index_pb2_grpc, rerank_pb2,
                       rerank_pb2_grpc, search_pb2, search_pb2_grpc)
from tests.support.checkpoints import minilm_cross_encoder
from tests.support.metricsparse import value
from tests.support.serverproc import REPO, ServerProcess

MODES = {"dense": search_pb2.SEARCH_MODE_DENSE, "sparse": search_pb2.SEARCH_MODE_SPARSE,
         "hybrid": search_pb2.SEARCH_MODE_HYBRID}
WARMUP = 120.0  # seconds before slopes are fitted: caches, arenas and the first seals settle


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def proc_stats(pid: int) -> dict | None:
    """RSS (MB), open fds and threads of one process, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    field = {k: v.split() for k, _, v in (line.partition(":") for line in status)}
    return {"rss_mb": int(field["VmRSS"][0]) / 1024, "fds": fds, "threads": int(field["Threads"][0])}


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return out


def engine_pid(server_pid: int) -> int | None:
    """The embedded Milvus child (the milvus-lite binary), found among the server's children."""
    for c in children(server_pid):
        try:
            if b"milvus" in Path(f"/proc/{c}/cmdline").read_bytes():
                return c
        except FileNotFoundError:
            pass
    return None


class Mix:
    """The calls, each as a coroutine factory; one per (kind, transport)."""

    def __init__(self, ch: grpc.aio.Channel, http_url: str, rows: list[dict], queries: list[str], seed: int = 0):
        self.index, self.search = index_pb2_grpc.IndexServiceStub(ch), search_pb2_grpc.SearchServiceStub(ch)
        self.rerank, self.embed = rerank_pb2_grpc.RerankServiceStub(ch), embed_pb2_grpc.EmbedServiceStub(ch)
        self.http_url, self.rows, self.queries = http_url, rows, queries
        self.rng = random.Random(seed)
        self.pending_deletes: list[str] = []
        self.n = 0
        self.idle: dict[str, list[_HTTP]] = {}

    async def _post(self, path: str, body: dict, timeout: float = 30) -> str:
        """One JSON POST over an idle keep-alive connection to `path`, or a new one. A reused connection the
        server has closed meanwhile (its keep-alive timeout) is replaced once, as any HTTP client does."""
        idle = self.idle.setdefault(path, [])
        reused = bool(idle)
        client = idle.pop() if idle else _HTTP(self.http_url + path)
        try:
            await client.post(body, timeout)
            code = "OK"
        except RuntimeError as e:  # a non-200 answer, read whole: the connection stays usable
            code = str(e)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            if client._conn:
                client._conn[1].close()
            if reused and not isinstance(e, asyncio.TimeoutError):
                return await self._post(path, body, timeout)
            return f"HTTP {type(e).__name__}"
        idle.append(client)
        return code

    def pick(self):
        """(method label, coroutine) for the next call."""
        r = self.rng
        http = r.random() < 0.5
        kind = r.choices(("search", "rerank", "embed", "upsert", "delete"), (6, 2, 1, 1, 1))[0]
        q = r.choice(self.queries)
        if kind == "search":
            mode = r.choice(list(MODES))
            filtered = r.random() < 0.5
            rerank = r.random() < 0.5
            req = search_pb2.SearchRequest(collection="soak", query=q, top_n=5, recall_k=20, mode=MODES[mode],
                                           rerank=rerank, rerank_depth=10)
            if filtered:
                req.filter_text = f"decade >= {r.choice((1950, 1960))}"
            label = f"search-{mode}{'-filtered' if filtered else ''}"
            if http:
                body = json_format.MessageToDict(req, preserving_proto_field_name=False)
                return f"{label} http", self._post("/tandem.v1.SearchService/Search", body)
            return f"{label} grpc", self._grpc(self.search.Search(req, timeout=30))
        if kind == "rerank":
            docs = [x["title"] for x in r.sample(self.rows, r.randint(2, 10))]
            if http:
                return "rerank http", self._post("/v1/rerank", {"query": q, "documents": docs})
            return "rerank grpc", self._grpc(self.rerank.Rerank(rerank_pb2.RerankRequest(query=q, documents=docs),
                                                                timeout=30))
        if kind == "embed":
            texts = [q]
            if http:
                return "embed http", self._post("/v1/embeddings", {"input": texts})
            return "embed grpc", self._grpc(self.embed.Embed(embed_pb2.EmbedRequest(texts=texts), timeout=30))
        if kind == "upsert" or not self.pending_deletes:
            self.n += 1
            row = r.choice(self.rows)
            doc = {"id": f"new{self.n}", "text": f"{row['title']} {row['text']}", "metadata": {"decade": 1970}}
            self.pending_deletes.append(doc["id"])
            if http:
                return "upsert http", self._post("/tandem.v1.IndexService/Upsert",
                                                 {"collection": "soak", "documents": [doc]})
            return "upsert grpc", self._grpc(self.index.Upsert(index_pb2.UpsertRequest(
                collection="soak", documents=[json_format.ParseDict(doc, document_pb2.Document())]), timeout=30))
        doc_id = self.pending_deletes.pop(0)
        if http:
            return "delete http", self._post("/tandem.v1.IndexService/Delete", {"collection": "soak", "ids": [doc_id]})
        return "delete grpc", self._grpc(self.index.Delete(index_pb2.DeleteRequest(collection="soak", ids=[doc_id]),
                                                          timeout=30))

    @staticmethod
    async def _grpc(call) -> str:
        try:
            await call
            return "OK"
        except grpc.aio.AioRpcError as e:
            return e.code().name


async def seed(ch, rows) -> None:
    index = index_pb2_grpc.IndexServiceStub(ch)
    try:
        await index.CreateCollection(index_pb2.CreateCollectionRequest(collection="soak"), timeout=60)
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.ALREADY_EXISTS
    docs = [json_format.ParseDict({"id": r["_id"], "text": f"{r['title']} {r['text']}",
                                   "metadata": {"decade": 1950 + 10 * (i % 3)}}, document_pb2.Document())
            for i, r in enumerate(rows)]
    for i in range(0, len(docs), 64):
        await index.Upsert(index_pb2.UpsertRequest(collection="soak", documents=docs[i:i + 64]), timeout=600)


async def capacity(mix: Mix, seconds: float, concurrency: int) -> float:
    """Calls per second of the same mix, closed loop."""
    end = time.monotonic() + seconds
    done = 0

    async def worker():
        nonlocal done
        while time.monotonic() < end:
            _, call = mix.pick()
            await call
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / seconds


async def soak(mix: Mix, rate: float, seconds: float, server_pid: int, every: float = 5.0) -> dict:
    start = time.monotonic()
    end = start + seconds
    lat: dict[str, list[tuple[float, float]]] = defaultdict(list)  # method -> (t, seconds)
    codes: Counter = Counter()
    samples: list[dict] = []
    inflight = set()
    engine = engine_pid(server_pid)

    async def one(method, call, t0):
        code = await call
        lat[method].append((t0 - start, time.monotonic() - t0))
        codes[(method, code)] += 1

    async def sampler():
        nonlocal engine
        while time.monotonic() < end:
            row = {"t": time.monotonic() - start, "server": proc_stats(server_pid)}
            engine = engine if engine and proc_stats(engine) else engine_pid(server_pid)
            row["engine"] = proc_stats(engine) if engine else None
            row["engine_pid"] = engine
            samples.append(row)
            await asyncio.sleep(every)

    sampling = asyncio.create_task(sampler())
    rng = random.Random(1)
    next_at = start
    skipped = 0
    while (now := time.monotonic()) < end:
        next_at += rng.expovariate(rate)  # Poisson arrivals at `rate`
        if next_at > now:
            await asyncio.sleep(next_at - now)
        if len(inflight) >= 256:  # the server fell far behind: count it, do not pile up without bound
            skipped += 1
            continue
        method, call = mix.pick()
        task = asyncio.create_task(one(method, call, time.monotonic()))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    await asyncio.gather(*inflight)
    await sampling
    return {"lat": lat, "codes": codes, "samples": samples, "skipped": skipped}


def _window(points, lo, hi):
    v = [s for t, s in points if lo <= t < hi]
    return {"n": len(v), "p50_ms": round(float(np.percentile(v, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(v, 99)) * 1000, 1)} if v else {"n": 0}


def trend(samples: list[dict], proc: str, key: str, seconds: float) -> dict:
    pts = [(s["t"], s[proc][key]) for s in samples if s.get(proc) and s["t"] >= WARMUP]
    if len(pts) < 6:
        return {"verdict": "too short"}
    t, v = np.array([p[0] for p in pts]), np.array([p[1] for p in pts], dtype=float)
    slope_h = float(np.polyfit(t, v, 1)[0] * 3600)
    h = len(v) // 2
    first, second = float(v[:h].mean()), float(v[h:].mean())
    # Growth: a slope that would add more than 10% of the level (RSS) or more than 5 (fds, threads) per hour AND a
    # second half above the first; RSS swings with batch activations, so neither alone is enough.
    limit = 0.10 * first if key == "rss_mb" else 5.0
    grows = slope_h > limit and second > first * (1.02 if key == "rss_mb" else 1.0) + (0 if key == "rss_mb" else 1)
    return {"start": round(float(v[0]), 1), "end": round(float(v[-1]), 1), "min": round(float(v.min()), 1),
            "max": round(float(v.max()), 1), "mean_first_half": round(first, 1), "mean_second_half": round(second, 1),
            "slope_per_hour": round(slope_h, 2), "verdict": "GROWS" if grows else "flat"}


def report(res: dict, seconds: float, rate: float, cap: float) -> dict:
    win = min(600.0, seconds / 3)
    methods = sorted(res["lat"])
    per_method = {m: {"first": _window(res["lat"][m], 0, win), "last": _window(res["lat"][m], seconds - win, seconds)}
                  for m in methods}
    errors = {f"{m} {c}": n for (m, c), n in sorted(res["codes"].items()) if c != "OK"}
    trends = {f"{proc} {key}": trend(res["samples"], proc, key, seconds)
              for proc in ("server", "engine") for key in ("rss_mb", "fds", "threads")}
    restarts = len({s["engine_pid"] for s in res["samples"] if s["engine_pid"]}) - 1
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "seconds": seconds,
            "capacity_calls_per_s": round(cap, 2), "rate_calls_per_s": round(rate, 2),
            "calls": sum(res["codes"].values()), "errors": errors, "skipped_server_behind": res["skipped"],
            "window_s": win, "latency": per_method, "trends": trends, "engine_restarts": max(restarts, 0),
            "samples": [{"t": round(s["t"]), **{f"{p}_{k}": (s[p] or {}).get(k) for p in ("server", "engine")
                                                for k in ("rss_mb", "fds", "threads")}} for s in res["samples"]]}


async def run(args) -> dict:
    rows = [json.loads(x) for x in (REPO / "datasets/cranfield/corpus.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["text"].strip()][:300]
    queries = [json.loads(x)["text"] for x in (REPO / "datasets/cranfield/queries.jsonl").read_text().splitlines()]
    tmp = Path(tempfile.mkdtemp(prefix="tandem-soak-"))
    srv = ServerProcess(tmp, "--reranker", minilm_cross_encoder(tmp / "ce"), "--milvus-uri", str(tmp / "m.db"),
                        *shlex.split(args.server_args), env={"TANDEM_LOG_LEVEL": "WARNING"}).start()
    try:
        async with grpc.aio.insecure_channel(srv.target) as ch:
            await seed(ch, rows)
            mix = Mix(ch, srv.http_url, rows, queries)
            cap = await capacity(mix, args.capacity_seconds, args.concurrency)
            rate = cap * args.load
            print(f"capacity {cap:.1f} calls/s (closed loop, {args.concurrency} clients); soaking at {rate:.1f}/s "
                  f"for {args.minutes:g} min", flush=True)
            res = await soak(mix, rate, args.minutes * 60, srv.proc.pid)
        rep = report(res, args.minutes * 60, rate, cap)
        rep["engine_recycles"] = value(srv.metrics_text(), "tandem_store_engine_recycles_total")
    finally:
        rc = srv.terminate()
    rep["server_exit_code"] = rc
    rep["server_log_errors"] = [line for line in srv.log().splitlines() if " ERROR " in line][:20]
    return rep


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--load", type=float, default=0.7, help="share of the measured capacity to send")
    p.add_argument("--capacity-seconds", type=float, default=60)
    p.add_argument("--concurrency", type=int, default=8, help="clients of the capacity measurement")
    p.add_argument("--out", default="bench-results/soak.json")
    p.add_argument("--server-args", default="", help="more flags for the server, e.g. '--engine-recycle-mb 16'")
    a = p.parse_args()
    rep = asyncio.run(run(a))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1))
    print(f"CPU {rep['cpu']} ({rep['cores']} cores); {rep['calls']} calls in {rep['seconds'] / 60:g} min at "
          f"{rep['rate_calls_per_s']}/s (capacity {rep['capacity_calls_per_s']}/s); errors: {rep['errors'] or 'none'};"
          f" engine restarts {rep['engine_restarts']} (of them on purpose, to give back memory: "
          f"{rep['engine_recycles']:g}); server exit {rep['server_exit_code']}")
    print(f"latency, first vs last {rep['window_s'] / 60:g} min (n, p50 ms, p99 ms):")
    for m, w in rep["latency"].items():
        f, l = w["first"], w["last"]
        print(f"  {m:<28} {f.get('n', 0):>6} {f.get('p50_ms', '-'):>8} {f.get('p99_ms', '-'):>8}   |"
              f" {l.get('n', 0):>6} {l.get('p50_ms', '-'):>8} {l.get('p99_ms', '-'):>8}")
    print("after warm-up (start, end, slope per hour, verdict):")
    for k, t in rep["trends"].items():
        print(f"  {k:<16} {t.get('start', '-'):>8} {t.get('end', '-'):>8} {t.get('slope_per_hour', '-'):>9}  "
              f"{t['verdict']}")
    bad = rep["errors"] or rep["server_log_errors"] or any(t["verdict"] == "GROWS" for t in rep["trends"].values())
    print("verdict:", "FAIL" if bad else "PASS")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

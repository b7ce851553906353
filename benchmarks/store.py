"""Store scenarios for `tandem bench` (s6-s8): how recall cost depends on how documents arrived, on the
collection's size, and whether search load stalls the rest of the server.

  6. write path: the same Cranfield documents written by unary Upserts (100 per call) and by one
     UpsertStream; Search p50 per mode once writes have been quiet for 3 s, queries alternating between the
     two collections. With sealing on (the default) and off.
  7. scaling: 10k, 100k and 300k documents (synthetic unit-norm vectors, real Cranfield text cycled,
     metadata {year, tag}); dense, sparse, hybrid and filtered Search (no rerank) at 1 and 16 clients:
     queries/s, p50, the recall stage's p50, and Milvus seconds per call and per query.
  8. isolation: Rerank p50 (1 document, 1 client) idle, and while 8 clients Search the 100k collection.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tests.support.serverproc import REPO

MODES = {"dense": "SEARCH_MODE_DENSE", "sparse": "SEARCH_MODE_SPARSE", "hybrid": "SEARCH_MODE_HYBRID"}
FILTER = {"all": [{"field": "year", "op": "OPERATOR_GTE", "value": 10}],
          "none": [{"field": "tag", "op": "OPERATOR_EQ", "value": "b"}]}


def _pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def build_scaled(db: str, n_docs: int, texts: list[str]) -> None:
    """A Tandem collection `big` of n_docs rows written straight through the store (no embedding)."""
    from tandem.server.storage import Store

    store = Store(db)
    store.create("big", "sentence-transformers/all-MiniLM-L6-v2", 384)
    rng = np.random.default_rng(0)
    step = 5000
    for i in range(0, n_docs, step):
        v = rng.standard_normal((step, 384)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.upsert("big", [{"id": f"d{i + j}", "text": texts[(i + j) % len(texts)],
                              "metadata": {"year": (i + j) % 50, "tag": "ab"[(i + j) % 2]},
                              "dense": v[j].tolist()} for j in range(min(step, n_docs - i))])
    store.flush("big")
    store.close()


def _search_json(collection, query, mode, filtered=False, top_n=10, recall_k=100):
    r = {"collection": collection, "query": query, "top_n": top_n, "recall_k": recall_k, "rerank": False,
         "mode": MODES[mode]}
    if filtered:
        r["filter"] = FILTER
    return r


def s6_write_path(bench) -> None:
    from google.protobuf import json_format

    from tandem.ingest import to_document
    from tandem.messages import document
    from tandem.v1 import index_pb2, index_pb2_grpc, search_pb2, search_pb2_grpc

    docs = [document(to_document(r)) for r in bench.rows]
    queries = bench.queries[:100 if not bench.quick else 50]
    out = {}
    for label, extra in (("sealing on (default)", ()), ("sealing off", ("--seal-quiet-seconds", "0"))):
        srv = bench.server("s6-" + label.split()[1], "--reranker", "none", *extra)
        try:
            with srv.channel() as ch:
                index, search = index_pb2_grpc.IndexServiceStub(ch), search_pb2_grpc.SearchServiceStub(ch)
                for coll in ("unary", "stream"):
                    index.CreateCollection(index_pb2.CreateCollectionRequest(collection=coll), timeout=60)
                t = time.perf_counter()
                for i in range(0, len(docs), 100):
                    index.Upsert(index_pb2.UpsertRequest(collection="unary", documents=docs[i:i + 100]), timeout=600)
                unary_s = time.perf_counter() - t
                t = time.perf_counter()
                index.UpsertStream((index_pb2.UpsertStreamRequest(collection="stream", documents=docs[i:i + 64])
                                    for i in range(0, len(docs), 64)), timeout=600)
                stream_s = time.perf_counter() - t
                time.sleep(3.0)  # writes quiet for 3 s
                rows = []
                for mode in MODES:
                    lat = {"unary": [], "stream": []}
                    for _ in range(bench.repeats):
                        for q in queries:
                            for coll in ("unary", "stream"):  # alternate: drift hits both alike
                                req = json_format.ParseDict(_search_json(coll, q, mode), search_pb2.SearchRequest())
                                r = search.Search(req, timeout=60)
                                lat[coll].append(r.timings.recall_seconds)
                    rows.append({"mode": mode, "unary_recall_p50_s": _pct(lat["unary"], 50),
                                 "stream_recall_p50_s": _pct(lat["stream"], 50),
                                 "ratio": _pct(lat["unary"], 50) / _pct(lat["stream"], 50)})
            out[label] = {"rows": rows, "unary_ingest_s": unary_s, "stream_ingest_s": stream_s}
        finally:
            srv.terminate()
    bench.report["scenarios"]["6_write_path"] = {"documents": len(docs), "queries": len(queries), "servers": out}


def _milvus(srv):
    from tests.support.metricsparse import value

    m = srv.metrics_text()
    return [value(m, f"tandem_batch_{k}", worker="recall") for k in ("compute_seconds_count", "size_sum",
                                                                       "compute_seconds_sum")]


def scaled_collection(bench, n: int) -> tuple[Path, float]:
    """A private copy of the n-document collection, built once (it is seeded) and kept in bench-results/."""
    texts = [f"{r['title']} {r['text']}".strip() for r in bench.rows]
    cached = REPO / "bench-results" / "collections" / f"scaled-{n}.db"
    build_s = 0.0
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"building-{n}.db")
        t = time.perf_counter()
        # In a child process, so the build's engine is gone before anyone else opens the file.
        subprocess.run([sys.executable, "-c", "import json,sys; from benchmarks.store import build_scaled; "
                        f"build_scaled({str(tmp)!r}, {n}, json.load(sys.stdin))"], cwd=REPO, check=True,
                       input=json.dumps(texts), text=True)
        build_s = time.perf_counter() - t
        tmp.rename(cached)
    copy = bench.tmp / f"scaled-{n}-{time.monotonic_ns()}" / "big.db"
    copy.parent.mkdir(parents=True)
    shutil.copy(cached, copy)
    return copy, build_s


def _first_search_seconds(srv, reqs) -> float:
    """Time to the first answer of each mode on a server that just opened the collection (cold start)."""
    from google.protobuf import json_format

    from tandem.v1 import search_pb2, search_pb2_grpc

    t = time.perf_counter()
    with srv.channel() as ch:
        stub = search_pb2_grpc.SearchServiceStub(ch)
        for r in reqs:
            stub.Search(json_format.ParseDict(r, search_pb2.SearchRequest()), timeout=600)
    return time.perf_counter() - t


def s7_scaling(bench) -> None:
    sizes = bench.scaling_sizes or ((10_000, 100_000) if bench.quick else (10_000, 100_000, 300_000))
    rows, cold = [], {}
    for n in sizes:
        db, build_s = scaled_collection(bench, n)
        srv = bench.server(f"s7-{n}-srv", "--reranker", "none", milvus_uri=str(db))
        try:
            q = bench.queries[0]
            cold[n] = _first_search_seconds(srv, [_search_json("big", q, m, f) for m, f in
                                                  (("dense", False), ("sparse", False), ("hybrid", False),
                                                   ("dense", True))])
            for mode, filtered in (("dense", False), ("sparse", False), ("hybrid", False), ("dense", True)):
                reqs = [_search_json("big", q, mode, filtered) for q in bench.queries[:64]]
                for clients in (1, 16):
                    before = _milvus(srv)
                    r = bench.load(srv.target, "search", reqs, clients)
                    calls, queries, seconds = (a - b for a, b in zip(_milvus(srv), before))
                    rows.append({"documents": n, "mode": mode + (" + filter" if filtered else ""),
                                 "clients": clients, "qps": r["requests"] / r["seconds"],
                                 "p50_s": _pct(r["latencies"], 50), "p99_s": _pct(r["latencies"], 99),
                                 "recall_p50_s": _pct(r["stages"]["recall"], 50),
                                 "milvus_s_per_call": seconds / max(calls, 1),
                                 "milvus_s_per_query": seconds / max(queries, 1),
                                 "queries_per_call": queries / max(calls, 1), "build_s": build_s,
                                 "errors": r["errors"]})
                    print(f"[bench] s7 {n} {rows[-1]['mode']} x{clients}: {rows[-1]['qps']:.1f} q/s, "
                          f"recall p50 {rows[-1]['recall_p50_s'] * 1000:.1f} ms", file=sys.stderr, flush=True)
        finally:
            srv.terminate()
    bench.report["scenarios"]["7_scaling"] = {
        "vectors": "synthetic unit-norm 384-d; Cranfield text cycled; metadata {year, tag}",
        "filter": "year >= 10 and none of tag == 'b'", "rows": rows, "first_search_after_start_s": cold}


def s8_isolation(bench) -> None:
    from tandem.v1 import rerank_pb2, rerank_pb2_grpc

    doc = bench.rows[0]["text"][:400]
    out: dict = {}
    for label, extra in (("engine at Tandem's priority", ()), ("engine niced +10", ("--engine-nice", "10"))):
        db, _ = scaled_collection(bench, 100_000)
        srv = bench.server("s8-" + label.split()[-1].replace("+", ""), *extra, milvus_uri=str(db))
        out[label] = {}
        try:
            with srv.channel() as ch:
                rerank = rerank_pb2_grpc.RerankServiceStub(ch)

                def rerank_p50(calls=60):
                    lat = []
                    for i in range(calls):
                        t = time.perf_counter()
                        rerank.Rerank(rerank_pb2.RerankRequest(query=bench.queries[i % 50], documents=[doc]),
                                      timeout=60)
                        lat.append(time.perf_counter() - t)
                    return _pct(lat, 50)

                _first_search_seconds(srv, [_search_json("big", bench.queries[0], m) for m in ("sparse", "dense")])
                rerank_p50(10)  # warm-up
                for mode in ("sparse", "dense"):
                    reqs = [_search_json("big", q, mode) for q in bench.queries[:64]]
                    idle, busy, qps = [], [], []
                    for _ in range(bench.repeats):
                        idle.append(rerank_p50())
                        result = {}
                        t = threading.Thread(target=lambda: result.update(bench.load(srv.target, "search", reqs, 8,
                                                                                     seconds=12)))
                        t.start()
                        time.sleep(4.0)  # past the load generator's warm-up
                        busy.append(rerank_p50())
                        t.join()
                        qps.append(result["requests"] / result["seconds"])
                    out[label][mode] = {"idle_p50_s": statistics.median(idle),
                                        "under_load_p50_s": statistics.median(busy),
                                        "ratio": statistics.median(b / i for b, i in zip(busy, idle)),
                                        "search_qps": statistics.median(qps)}
        finally:
            srv.terminate()
    bench.report["scenarios"]["8_isolation"] = {"documents": 100_000, "searching_clients": 8, "servers": out}


def table(s: dict) -> list[str]:
    out = []
    if "6_write_path" in s:
        x = s["6_write_path"]
        out += [f"### 6. Write path: {x['documents']} Cranfield documents by unary Upsert (100 per call) vs one "
                f"UpsertStream; recall-stage p50 once writes were quiet for 3 s ({x['queries']} queries, alternating)",
                "", "| sealing | mode | unary p50 | stream p50 | unary / stream |", "|---|---|---|---|---|"]
        for label, srv in x["servers"].items():
            out += [f"| {label} | {r['mode']} | {r['unary_recall_p50_s'] * 1000:.2f} ms | "
                    f"{r['stream_recall_p50_s'] * 1000:.2f} ms | **{r['ratio']:.2f}x** |" for r in srv["rows"]]
        out.append("")
    if "7_scaling" in s:
        x = s["7_scaling"]
        out += [f"### 7. Scaling ({x['vectors']}; filter: {x['filter']}; top 100, no rerank)", "",
                "| documents | mode | clients | queries/s | p50 | p99 | recall p50 | Milvus per call | "
                "Milvus per query | queries per call |", "|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['documents']:,} | {r['mode']} | {r['clients']} | {r['qps']:.1f} | {r['p50_s'] * 1000:.1f} ms | "
                f"{r['p99_s'] * 1000:.1f} ms | {r['recall_p50_s'] * 1000:.2f} ms | {r['milvus_s_per_call'] * 1000:.2f} ms | "
                f"{r['milvus_s_per_query'] * 1000:.2f} ms | {r['queries_per_call']:.1f} |" for r in x["rows"]]
        if x.get("first_search_after_start_s"):
            out += ["", "Cold start (the first search of each mode after the server opened the collection): " +
                    ", ".join(f"{int(k):,} documents {v:.1f} s" for k, v in x["first_search_after_start_s"].items())]
        out.append("")
    if "8_isolation" in s:
        x = s["8_isolation"]
        out += [f"### 8. Rerank p50 (1 document, 1 client) idle and while {x['searching_clients']} clients Search "
                f"{x['documents']:,} documents", "",
                "| engine | searches | idle p50 | under load p50 | ratio | search q/s |", "|---|---|---|---|---|---|"]
        servers = x.get("servers") or {"engine at Tandem's priority": x.get("modes", {})}
        out += [f"| {label} | {m} | {r['idle_p50_s'] * 1000:.1f} ms | {r['under_load_p50_s'] * 1000:.1f} ms | "
                f"**{r['ratio']:.2f}x** | {r['search_qps']:.0f} |" for label, modes in servers.items()
                for m, r in modes.items()]
        out += ["", "Sparse searches touch only the store; dense ones also embed each query on the compute thread "
                "the reranker shares.", ""]
    return out

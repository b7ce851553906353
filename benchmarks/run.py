"""`tandem bench`: served Tandem against the raw model, side by side in one run on one machine.

Scenarios (each measured after warm-up; the load generator is a separate process):
  1. rerank throughput vs concurrency (1, 4, 16, 64 clients; 20-50 passages per request)
     against raw CrossEncoder.predict at its best batch size;
  2. batching gain: max batch 1 vs dynamic batching, 16 and 64 clients, short titles and whole abstracts;
  3. latency at low load: one client, 1 and 20 documents, against raw predict of the same input;
  4. Search on a 100k-document collection (synthetic vectors, real query text): p50/p99 and stage split at
     1 and 16 clients, per-query recall cost with recall batching on and off;
  5. ingest: UpsertStream docs/s against raw bi-encoder encode docs/s;
  6-8. the store: write path, scaling to 300k documents, isolation under search load (benchmarks/store.py);
  9-10. precision and backend: raw speed and agreement, then served (benchmarks/precision.py);
  11-12. several models: two rerankers on one device, and a rerank cascade (benchmarks/models.py);
  13. long documents: nDCG, ingest and Search on chunked collections (benchmarks/chunking.py);
  14. tiny requests and splitting batches by length, against raw throughput (benchmarks/passes.py).

The reranker is a MiniLM-L6-shaped cross-encoder built from the bundled encoder with a seeded head
(the size of cross-encoder/ms-marco-MiniLM-L6-v2). Its scores mean nothing; its compute cost is real.

A shared 2-core VM drifts by 20% or more over minutes, so nothing is compared across phases: each repeat
measures the served path and its baseline back to back (raw then served; batch-1 server then dynamic
server; one served call then one raw call), and ratios are medians of those paired ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
from collections import Counter
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import chunking as chunking_scenarios
from benchmarks import models as model_scenarios
from benchmarks import passes as passes_scenarios
from benchmarks import precision as precision_scenarios
from benchmarks import store as store_scenarios
from tests.support.checkpoints import bundled_encoder, minilm_cross_encoder
from tests.support.serverproc import REPO, ServerProcess

DATA = REPO / "datasets" / "cranfield"


def build_collection(db: str, n_docs: int) -> None:
    from tandem.server.storage import Store

    store = Store(db)
    store.create("big", "sentence-transformers/all-MiniLM-L6-v2", 384)
    rng = np.random.default_rng(0)
    for i in range(0, n_docs, 5000):
        v = rng.standard_normal((5000, 384)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.upsert("big", [{"id": f"d{i + j}", "text": f"synthetic document {i + j}", "metadata": {},
                              "dense": v[j].tolist()} for j in range(5000)])
    store.flush("big")


def _pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def _corpus():
    rows = [json.loads(x) for x in (DATA / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(x)["text"] for x in (DATA / "queries.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["text"].strip()]
    return rows, queries


def _passage(text: str, words: int = 60) -> str:
    return " ".join(text.split()[:words])


class Bench:
    def __init__(self, out: Path, quick: bool, scaling_sizes: tuple[int, ...] = ()):
        self.out, self.quick, self.scaling_sizes = out, quick, scaling_sizes
        self.tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
        self.ce_path = minilm_cross_encoder(self.tmp / "minilm-ce")
        self.rows, self.queries = _corpus()
        self.seconds = 8 if quick else 12
        self.repeats = 2 if quick else 3
        self.report: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                         "cores": os.cpu_count(), "python": platform.python_version()},
                             "scenarios": {}}
        self._ce = None

    # -- helpers -----------------------------------------------------------------------------------------------
    def ce(self):
        if self._ce is None:
            import torch
            from sentence_transformers import CrossEncoder

            torch.set_num_threads(os.cpu_count())
            self._ce = CrossEncoder(self.ce_path, device="cpu")
        return self._ce

    def server(self, name, *args, milvus_uri: str = "") -> ServerProcess:
        """A server in its own directory; later flags override the defaults given here."""
        d = self.tmp / name
        default = () if "--reranker" in args else ("--reranker", self.ce_path)  # --reranker repeats, so it is added
        return ServerProcess(d, *default, "--milvus-uri", milvus_uri or str(d / "m.db"), *args,
                             env={"TANDEM_LOG_LEVEL": "WARNING"}).start()

    def turns(self, servers: dict, window) -> dict[str, list]:
        """`window(server)` on each server in turn, `repeats` rounds; drift then hits every server alike."""
        out: dict[str, list] = {label: [] for label in servers}
        for _ in range(self.repeats):
            for label, srv in servers.items():
                out[label].append(window(srv))
        return out

    def load(self, target, rpc, requests, concurrency, seconds=None, metrics_url: str = "") -> dict:
        """One measured window from the separate load-generator process (with the server's metrics at the
        window's edges when `metrics_url` is given)."""
        wl = self.tmp / f"wl-{rpc}-{len(requests)}-{random.random():.6f}.json"
        wl.write_text(json.dumps({"rpc": rpc, "requests": requests}))
        out = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", target, str(wl), "--concurrency",
                              str(concurrency), "--seconds", str(seconds or self.seconds), "--warmup", "3",
                              "--metrics-url", metrics_url],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    @staticmethod
    def raw_rate(fn, items, batch_size) -> float:
        """Items/s of one raw model call (`predict` or `encode`) over all of `items`."""
        t = time.perf_counter()
        fn(items, batch_size=batch_size)
        return len(items) / (time.perf_counter() - t)

    def raw_sweep(self, fn, items, batch_sizes) -> dict:
        """Median items/s per batch size, the sizes taken round-robin so drift hits them alike."""
        fn(items[:32], batch_size=32)  # warm-up
        rates: dict[int, list[float]] = {bs: [] for bs in batch_sizes}
        for _ in range(self.repeats):
            for bs in batch_sizes:
                rates[bs].append(self.raw_rate(fn, items, bs))
        return {bs: statistics.median(v) for bs, v in rates.items()}

    def rerank_requests(self, n, docs_range, texts, seed=0):
        rng = random.Random(seed)
        return [{"query": rng.choice(self.queries), "documents": rng.sample(texts, rng.randint(*docs_range))}
                for _ in range(n)]

    # -- scenarios ---------------------------------------------------------------------------------------------
    def s1_throughput(self):
        passages = [_passage(r["text"]) for r in self.rows]
        reqs = self.rerank_requests(64, (20, 50), passages)
        pairs = [(r["query"], d) for r in reqs[:8] for d in r["documents"]][:240]
        predict = self.ce().predict
        raw = self.raw_sweep(predict, pairs, (1, 4, 8, 16, 32))
        best_bs = max(raw, key=raw.get)
        srv = self.server("s1")
        rows = []
        try:
            for c in (1, 4, 16, 64):
                served, base, lat, errors = [], [], [], Counter()
                for _ in range(self.repeats):
                    base.append(self.raw_rate(predict, pairs, best_bs))  # the baseline, right before this window
                    r = self.load(srv.target, "rerank", reqs, c)
                    served.append(r["items"] / r["seconds"])
                    lat += r["latencies"]
                    errors.update(r["errors"])
                rows.append({"clients": c, "served_pairs_per_s": statistics.median(served),
                             "raw_best_pairs_per_s": statistics.median(base),
                             "ratio": statistics.median(s_ / b for s_, b in zip(served, base)),
                             "p50_s": _pct(lat, 50), "p99_s": _pct(lat, 99), "errors": dict(errors)})
            metrics = srv.metrics_text()
        finally:
            srv.terminate()
        from tests.support.metricsparse import histogram_buckets

        b = histogram_buckets(metrics, "tandem_batch_size", worker="reranker")
        self.report["scenarios"]["1_rerank_throughput"] = {
            "raw_pairs_per_s_by_batch": raw, "raw_best_batch": best_bs, "rows": rows,
            "reranker_batch_size_cumulative": {str(k): v for k, v in b.items()}}

    def s2_batching_gain(self):
        titles = [r["title"] for r in self.rows if r["title"].strip()]
        abstracts = [r["text"] for r in self.rows]
        workloads = {"short titles": self.rerank_requests(64, (1, 2), titles, seed=1),
                     "whole documents": self.rerank_requests(64, (1, 2), abstracts, seed=2)}
        # Both servers stay up (an idle one costs no CPU) and take turns, window by window.
        servers = {"max batch 1": self.server("s2-max-batch-1", "--max-batch-pairs", "1"),
                   "dynamic batching": self.server("s2-dynamic")}
        rows, gains = [], []
        try:
            for wl, reqs in workloads.items():
                for c in (16, 64):
                    runs = self.turns(servers, lambda srv: self.load(srv.target, "rerank", reqs, c))
                    rates = {label: [r["items"] / r["seconds"] for r in rs] for label, rs in runs.items()}
                    for label, rs in runs.items():
                        lat = [x for r in rs for x in r["latencies"]]
                        rows.append({"server": label, "workload": wl, "clients": c,
                                     "pairs_per_s": statistics.median(rates[label]),
                                     "p50_s": _pct(lat, 50), "p99_s": _pct(lat, 99)})
                    gains.append({"workload": wl, "clients": c, "gain": statistics.median(
                        d / o for d, o in zip(rates["dynamic batching"], rates["max batch 1"]))})
        finally:
            for srv in servers.values():
                srv.terminate()
        self.report["scenarios"]["2_batching_gain"] = {"rows": rows, "gains": gains}

    def s3_latency(self):
        """One client. Served and raw calls alternate on the same input, so drift cancels out of the gap.
        The served call is a plain blocking gRPC stub in this process, idle while the server computes."""
        import grpc

        from tandem.v1 import rerank_pb2, rerank_pb2_grpc

        passages = [_passage(r["text"]) for r in self.rows]
        srv = self.server("s3")
        ce = self.ce()
        rows = []
        try:
            with grpc.insecure_channel(srv.target) as ch:
                stub = rerank_pb2_grpc.RerankServiceStub(ch)
                for n, calls in ((1, 300 if not self.quick else 150), (20, 60 if not self.quick else 30)):
                    reqs = self.rerank_requests(32, (n, n), passages, seed=3)
                    served, raw = [], []
                    for i in range(calls + 10):
                        q = reqs[i % len(reqs)]
                        msg = rerank_pb2.RerankRequest(query=q["query"], documents=q["documents"])
                        t = time.perf_counter()
                        stub.Rerank(msg, timeout=60)
                        t1 = time.perf_counter()
                        ce.predict([(q["query"], d) for d in q["documents"]], batch_size=32)
                        t2 = time.perf_counter()
                        if i >= 10:  # warm-up
                            served.append(t1 - t)
                            raw.append(t2 - t1)
                    gaps = [a - b for a, b in zip(served, raw)]
                    rows.append({"documents": n, "calls": calls, "served_p50_s": _pct(served, 50),
                                 "served_p99_s": _pct(served, 99), "raw_p50_s": _pct(raw, 50),
                                 "raw_p99_s": _pct(raw, 99), "overhead_p50_ms": _pct(gaps, 50) * 1000})
        finally:
            srv.terminate()
        self.report["scenarios"]["3_latency"] = {"rows": rows}

    def s4_search(self, n_docs=100_000):
        import shutil

        from tests.support.metricsparse import value

        db = self.tmp / "s4" / "big.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        # Built in a child process: Milvus Lite holds its file lock until the process exits. Each server
        # gets its own copy, so both stay up and take turns window by window.
        subprocess.run([sys.executable, "-c", f"from benchmarks.run import build_collection; "
                        f"build_collection({str(db)!r}, {n_docs})"], cwd=REPO, check=True)
        reqs = [{"collection": "big", "query": q, "top_n": 10, "recall_k": 100, "rerank": False}
                for q in self.queries[:64]]
        servers = {}
        for label, extra in (("recall batching off", ("--recall-max-batch", "1")), ("recall batching on", ())):
            copy = db.parent / (label.replace(" ", "-") + ".db")
            (shutil.copytree if db.is_dir() else shutil.copy)(db, copy)  # milvus-lite 3: a folder; 2.5: a file
            servers[label] = self.server("s4-" + label.replace(" ", "-"), "--reranker", "none", *extra,
                                         milvus_uri=str(copy))

        def milvus(srv):  # cumulative Milvus search calls, queries and seconds, from the server's own metrics
            m = srv.metrics_text()
            return [value(m, f"tandem_batch_{k}", worker="recall")
                    for k in ("compute_seconds_count", "size_sum", "compute_seconds_sum")]

        def window(srv, clients):  # one load window, with the Milvus work it caused
            before = milvus(srv)
            r = self.load(srv.target, "search", reqs, clients)
            r["milvus"] = [a - b for a, b in zip(milvus(srv), before)]
            return r

        rows, cost = [], {}
        try:
            for c in (1, 16):
                for label, rs in self.turns(servers, lambda srv: window(srv, c)).items():
                    calls, queries, seconds = (sum(r["milvus"][i] for r in rs) for i in range(3))
                    lat = [x for r in rs for x in r["latencies"]]
                    rows.append({"recall": label, "clients": c,
                                 "qps": statistics.median(r["requests"] / r["seconds"] for r in rs),
                                 "p50_s": _pct(lat, 50), "p99_s": _pct(lat, 99),
                                 "embed_p50_s": _pct([x for r in rs for x in r["stages"]["embed"]], 50),
                                 "recall_p50_s": _pct([x for r in rs for x in r["stages"]["recall"]], 50),
                                 "milvus_calls": calls, "queries": queries,
                                 "mean_queries_per_call": queries / max(calls, 1),
                                 "milvus_seconds_per_query": seconds / max(queries, 1),
                                 "errors": dict(sum((Counter(r["errors"]) for r in rs), Counter()))})
                per_query = {r["recall"]: r["milvus_seconds_per_query"] for r in rows if r["clients"] == c}
                cost[c] = per_query["recall batching off"] / per_query["recall batching on"]
        finally:
            for srv in servers.values():
                srv.terminate()
        self.report["scenarios"]["4_search_100k"] = {
            "documents": n_docs, "vectors": "synthetic unit-norm 384-d; real Cranfield query text", "rows": rows,
            "recall_cost_reduction": cost[16], "recall_cost_reduction_by_clients": cost}

    def s5_ingest(self, n=300):
        from tandem.server.models import load_embedder
        from tandem import Client
        from tandem.ingest import ingest, to_document

        docs = [to_document(r) for r in self.rows[:n]]
        texts = [d.text for d in docs]
        # The baseline is the served embedder's own backend and precision (the same cached auto choice),
        # in-process at its best batch size on this machine, picked like scenario 1's predict.
        emb = load_embedder(bundled_encoder(), "cpu", False)

        def encode(items, batch_size):
            for i in range(0, len(items), batch_size):
                emb.run(items[i:i + batch_size])

        by_bs = self.raw_sweep(encode, texts, (8, 16, 32, 64))
        best_bs = max(by_bs, key=by_bs.get)
        corpus = self.tmp / "ingest.jsonl"
        corpus.write_text("\n".join(json.dumps(r) for r in self.rows[:n]))
        srv = self.server("s5", "--reranker", "none")
        raws, served, streamed = [], [], []
        try:
            for i in range(self.repeats):
                raws.append(self.raw_rate(encode, texts, best_bs))
                with Client(srv.target) as c:
                    served.append(ingest(c, f"ingest_{i}", corpus, progress=False)["docs_per_second"])
                    c.create_collection(f"stream_{i}")
                    t = time.perf_counter()
                    c.upsert_stream(f"stream_{i}", lambda: docs)
                    streamed.append(n / (time.perf_counter() - t))
        finally:
            srv.terminate()
        self.report["scenarios"]["5_ingest"] = {
            "documents": n, "embedder": f"{emb.backend} {emb.precision}", "raw_best_batch": best_bs,
            "raw_docs_per_s_by_batch": by_bs,
            "raw_encode_docs_per_s": statistics.median(raws),
            "served_ingest_docs_per_s": statistics.median(served),
            "served_upsertstream_docs_per_s": statistics.median(streamed),
            "ratio": statistics.median(s_ / r for s_, r in zip(served, raws)),
            "ratio_upsertstream": statistics.median(s_ / r for s_, r in zip(streamed, raws))}

    def s6_write_path(self):
        store_scenarios.s6_write_path(self)

    def s7_scaling(self):
        store_scenarios.s7_scaling(self)

    def s8_isolation(self):
        store_scenarios.s8_isolation(self)

    def s9_precision_raw(self):
        precision_scenarios.s9_precision_raw(self)

    def s10_precision_served(self):
        precision_scenarios.s10_precision_served(self)

    def s11_two_rerankers(self):
        model_scenarios.s11_two_rerankers(self)

    def s12_cascade(self):
        model_scenarios.s12_cascade(self)

    def s13_long_documents(self):
        chunking_scenarios.s13_long_documents(self)

    def s14_length_split(self):
        passes_scenarios.s14_length_split(self)

    def run(self, only: list[str]):
        for name in ("s1_throughput", "s2_batching_gain", "s3_latency", "s4_search", "s5_ingest", "s6_write_path",
                     "s7_scaling", "s8_isolation", "s9_precision_raw", "s10_precision_served", "s11_two_rerankers",
                     "s12_cascade", "s13_long_documents", "s14_length_split"):
            if not only or name.split("_")[0] in only:
                t = time.perf_counter()
                print(f"[bench] {name} ...", file=sys.stderr, flush=True)
                getattr(self, name)()
                print(f"[bench] {name} done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
                self.out.parent.mkdir(parents=True, exist_ok=True)  # keep what finished if a later one fails
                self.out.write_text(json.dumps(self.report, indent=2, default=str))
        return self.report


def table(rep: dict) -> str:
    s, out = rep["scenarios"], []
    if "1_rerank_throughput" in s:
        x = dict(s["1_rerank_throughput"])
        x["raw_pairs_per_s_by_batch"] = {int(k): v for k, v in x["raw_pairs_per_s_by_batch"].items()}
        x["raw_best_batch"] = int(x["raw_best_batch"])
        out += [f"### 1. Rerank throughput vs concurrency (raw best: batch {x['raw_best_batch']}, "
                f"{x['raw_pairs_per_s_by_batch'][x['raw_best_batch']]:.1f} pairs/s)", "",
                "| clients | served pairs/s | raw best pairs/s | served / raw | p50 | p99 |", "|---|---|---|---|---|---|"]
        out += [f"| {r['clients']} | {r['served_pairs_per_s']:.1f} | {r['raw_best_pairs_per_s']:.1f} | "
                f"**{r['ratio']:.2f}** | {r['p50_s']:.2f}s | {r['p99_s']:.2f}s |" for r in x["rows"]]
        out += ["", "Raw predict pairs/s by batch size: " +
                ", ".join(f"{k}: {v:.1f}" for k, v in x["raw_pairs_per_s_by_batch"].items()), ""]
    if "2_batching_gain" in s:
        x = s["2_batching_gain"]
        out += ["### 2. Batching gain (dynamic batching vs max batch 1)", "",
                "| workload | clients | max batch 1 pairs/s | dynamic pairs/s | gain |", "|---|---|---|---|---|"]
        for g in x["gains"]:
            one = next(r for r in x["rows"] if r["server"] == "max batch 1" and r["workload"] == g["workload"]
                       and r["clients"] == g["clients"])
            dyn = next(r for r in x["rows"] if r["server"] == "dynamic batching" and r["workload"] == g["workload"]
                       and r["clients"] == g["clients"])
            out.append(f"| {g['workload']} | {g['clients']} | {one['pairs_per_s']:.1f} | {dyn['pairs_per_s']:.1f} | "
                       f"**{g['gain']:.2f}x** |")
        out.append("")
    if "3_latency" in s:
        out += ["### 3. Latency at low load (one client; served and raw calls alternate)", "",
                "| documents | calls | served p50 | served p99 | raw p50 | raw p99 | overhead p50 |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r['documents']} | {r['calls']} | {r['served_p50_s'] * 1000:.1f} ms | "
                f"{r['served_p99_s'] * 1000:.1f} ms | {r['raw_p50_s'] * 1000:.1f} ms | {r['raw_p99_s'] * 1000:.1f} ms | "
                f"**{r['overhead_p50_ms']:.1f} ms** |" for r in s["3_latency"]["rows"]]
        out += ["", "Overhead p50 is the median of (served - raw) over the alternating pairs.", ""]
    if "4_search_100k" in s:
        x = s["4_search_100k"]
        out += [f"### 4. Search on {x['documents']:,} documents ({x['vectors']}; dense, top 100, no rerank)", "",
                "| recall | clients | queries/s | p50 | p99 | embed p50 | recall p50 | queries per Milvus call | "
                "Milvus s per query |", "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['recall']} | {r['clients']} | {r['qps']:.1f} | {r['p50_s'] * 1000:.0f} ms | "
                f"{r['p99_s'] * 1000:.0f} ms | {r['embed_p50_s'] * 1000:.1f} ms | {r['recall_p50_s'] * 1000:.0f} ms | "
                f"{r['mean_queries_per_call']:.1f} | {r['milvus_seconds_per_query'] * 1000:.1f} ms |"
                for r in x["rows"]]
        by = {int(k): v for k, v in x.get("recall_cost_reduction_by_clients", {}).items()}
        out += ["", "Per-query recall cost (Milvus seconds per query), batching off / on: " +
                ", ".join(f"{k} client{'s' if k > 1 else ''}: **{v:.1f}x**" for k, v in sorted(by.items())), ""]
    if "5_ingest" in s:
        x = s["5_ingest"]
        out += [f"### 5. Ingest ({x['embedder']}, served and raw alike)", "",
                "| documents | raw encode docs/s (batch " + str(x["raw_best_batch"]) + ") | `tandem ingest` docs/s "
                "| served / raw | UpsertStream docs/s | served / raw |", "|---|---|---|---|---|---|",
                f"| {x['documents']} | {x['raw_encode_docs_per_s']:.1f} | {x['served_ingest_docs_per_s']:.1f} | "
                f"**{x['ratio']:.2f}** | {x['served_upsertstream_docs_per_s']:.1f} | "
                f"**{x['ratio_upsertstream']:.2f}** |", "",
                "Raw encode docs/s by batch size: " +
                ", ".join(f"{k}: {v:.1f}" for k, v in x["raw_docs_per_s_by_batch"].items()), ""]
    out += store_scenarios.table(s)
    out += precision_scenarios.table(s)
    out += model_scenarios.table(s)
    out += chunking_scenarios.table(s)
    out += passes_scenarios.table(s)
    return "\n".join(out)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="served vs raw-model benchmarks (writes a table and JSON)")
    p.add_argument("--out", default="bench-results/bench.json")
    p.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. s1,s3")
    p.add_argument("--quick", action="store_true", help="one repeat, shorter windows")
    p.add_argument("--scaling-sizes", default="", help="collection sizes for s7, e.g. 10000,300000")

    def run(args) -> int:
        sizes = tuple(int(x) for x in args.scaling_sizes.split(",") if x)
        rep = Bench(Path(args.out), args.quick, sizes).run([x for x in args.only.split(",") if x])
        text = table(rep)
        print(text)
        Path(args.out).with_suffix(".md").write_text(text)
        return 0

    p.set_defaults(fn=run)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="tandem")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["bench", *sys.argv[1:]])
    sys.exit(args.fn(args))

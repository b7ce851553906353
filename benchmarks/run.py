"""`tandem bench`: served Tandem against the raw model, side by side in one run on one machine.

Scenarios (each measured after warm-up; the load generator is a separate process):
  1. rerank throughput vs concurrency (1, 4, 16, 64 clients; 20-50 passages per request)
     against raw CrossEncoder.predict at its best batch size;
  2. batching gain: max batch 1 vs dynamic batching, 16 and 64 clients, short titles and whole abstracts;
  3. latency at low load: one client, 1 and 20 documents, against raw predict of the same input;
  4. Search on a 100k-document collection (synthetic vectors, real query text): p50/p99 and stage split at
     1 and 16 clients, per-query recall cost with recall batching on and off;
  5. ingest: UpsertStream docs/s against raw bi-encoder encode docs/s.

The reranker is a MiniLM-L6-shaped cross-encoder built from the bundled encoder with a seeded head
(the size of cross-encoder/ms-marco-MiniLM-L6-v2). Its scores mean nothing; its compute cost is real.
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.checkpoints import bundled_encoder, minilm_cross_encoder
from tests.serverproc import REPO, ServerProcess

DATA = REPO / "datasets" / "cranfield"


def build_collection(db: str, n_docs: int) -> None:
    from server.storage import Store

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
    def __init__(self, out: Path, quick: bool):
        self.out, self.quick = out, quick
        self.tmp = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
        self.ce_path = minilm_cross_encoder(self.tmp / "minilm-ce")
        self.rows, self.queries = _corpus()
        self.seconds = 10 if quick else 15
        self.repeats = 1 if quick else 3
        self.report: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                         "cores": __import__("os").cpu_count(), "python": platform.python_version()},
                             "scenarios": {}}
        self._ce = None

    # -- helpers -----------------------------------------------------------------------------------------------
    def ce(self):
        if self._ce is None:
            import torch
            from sentence_transformers import CrossEncoder

            torch.set_num_threads(__import__("os").cpu_count())
            self._ce = CrossEncoder(self.ce_path, device="cpu")
        return self._ce

    def server(self, name, *args) -> ServerProcess:
        d = self.tmp / name
        return ServerProcess(d, "--reranker", self.ce_path, "--milvus-uri", str(d / "m.db"), *args,
                             env={"TANDEM_LOG_LEVEL": "WARNING"}).start()

    def load(self, target, rpc, requests, concurrency, seconds=None) -> dict:
        wl = self.tmp / f"wl-{rpc}-{len(requests)}-{random.random():.6f}.json"
        wl.write_text(json.dumps({"rpc": rpc, "requests": requests}))
        runs = []
        for _ in range(self.repeats):
            out = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", target, str(wl), "--concurrency",
                                  str(concurrency), "--seconds", str(seconds or self.seconds), "--warmup", "3"],
                                 cwd=REPO, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out))
        # Median over repeats, by throughput.
        runs.sort(key=lambda r: r["items"])
        return runs[len(runs) // 2]

    def raw_throughput(self, pairs, batch_sizes=(1, 8, 16, 32)) -> dict:
        ce = self.ce()
        ce.predict(pairs[:32], batch_size=32)
        out = {}
        for bs in batch_sizes:
            rates = []
            for _ in range(self.repeats):
                t = time.perf_counter()
                ce.predict(pairs, batch_size=bs)
                rates.append(len(pairs) / (time.perf_counter() - t))
            out[bs] = statistics.median(rates)
        return out

    def rerank_requests(self, n, docs_range, texts, seed=0):
        rng = random.Random(seed)
        return [{"query": rng.choice(self.queries), "documents": rng.sample(texts, rng.randint(*docs_range))}
                for _ in range(n)]

    # -- scenarios ---------------------------------------------------------------------------------------------
    def s1_throughput(self):
        passages = [_passage(r["text"]) for r in self.rows]
        reqs = self.rerank_requests(64, (20, 50), passages)
        pairs = [(r["query"], d) for r in reqs[:8] for d in r["documents"]][:240]
        raw = self.raw_throughput(pairs)
        best_bs = max(raw, key=raw.get)
        srv = self.server("s1")
        rows = []
        try:
            for c in (1, 4, 16, 64):
                r = self.load(srv.target, "rerank", reqs, c)
                served = r["items"] / r["seconds"]
                rows.append({"clients": c, "served_pairs_per_s": served, "raw_best_pairs_per_s": raw[best_bs],
                             "ratio": served / raw[best_bs], "p50_s": _pct(r["latencies"], 50),
                             "p99_s": _pct(r["latencies"], 99), "errors": r["errors"]})
            metrics = srv.metrics_text()
        finally:
            srv.terminate()
        from tests.metricsparse import histogram_buckets

        b = histogram_buckets(metrics, "tandem_batch_size", worker="reranker")
        self.report["scenarios"]["1_rerank_throughput"] = {
            "raw_pairs_per_s_by_batch": raw, "raw_best_batch": best_bs, "rows": rows,
            "reranker_batch_size_cumulative": {str(k): v for k, v in b.items()}}

    def s2_batching_gain(self):
        titles = [r["title"] for r in self.rows if r["title"].strip()]
        abstracts = [r["text"] for r in self.rows]
        workloads = {"short titles": self.rerank_requests(64, (1, 2), titles, seed=1),
                     "whole documents": self.rerank_requests(64, (1, 2), abstracts, seed=2)}
        rows = []
        for label, extra in (("max batch 1", ("--max-batch-pairs", "1")), ("dynamic batching", ())):
            srv = self.server("s2-" + label.replace(" ", "-"), *extra)
            try:
                for wl, reqs in workloads.items():
                    for c in (16, 64):
                        r = self.load(srv.target, "rerank", reqs, c)
                        rows.append({"server": label, "workload": wl, "clients": c,
                                     "pairs_per_s": r["items"] / r["seconds"], "p50_s": _pct(r["latencies"], 50),
                                     "p99_s": _pct(r["latencies"], 99)})
            finally:
                srv.terminate()
        gains = []
        for wl in workloads:
            for c in (16, 64):
                one = next(x for x in rows if x["server"] == "max batch 1" and x["workload"] == wl and x["clients"] == c)
                dyn = next(x for x in rows if x["server"] == "dynamic batching" and x["workload"] == wl and x["clients"] == c)
                gains.append({"workload": wl, "clients": c, "gain": dyn["pairs_per_s"] / one["pairs_per_s"]})
        self.report["scenarios"]["2_batching_gain"] = {"rows": rows, "gains": gains}

    def s3_latency(self):
        passages = [_passage(r["text"]) for r in self.rows]
        srv = self.server("s3")
        ce = self.ce()
        rows = []
        try:
            for n in (1, 20):
                reqs = self.rerank_requests(32, (n, n), passages, seed=3)
                r = self.load(srv.target, "rerank", reqs, 1)
                raw = []
                for q in reqs * 2:
                    t = time.perf_counter()
                    ce.predict([(q["query"], d) for d in q["documents"]], batch_size=32)
                    raw.append(time.perf_counter() - t)
                p50s, p50r = _pct(r["latencies"], 50), _pct(raw, 50)
                rows.append({"documents": n, "served_p50_s": p50s, "served_p99_s": _pct(r["latencies"], 99),
                             "raw_p50_s": p50r, "raw_p99_s": _pct(raw, 99), "overhead_p50_ms": (p50s - p50r) * 1000})
        finally:
            srv.terminate()
        self.report["scenarios"]["3_latency"] = {"rows": rows}

    def s4_search(self, n_docs=100_000):
        db = self.tmp / "s4" / "big.db"
        db.parent.mkdir(parents=True, exist_ok=True)
        # Built in a child process: Milvus Lite holds its data-dir lock until the process exits.
        subprocess.run([sys.executable, "-c", f"from benchmarks.run import build_collection; "
                        f"build_collection({str(db)!r}, {n_docs})"], cwd=REPO, check=True)
        reqs = [{"collection": "big", "query": q, "top_n": 10, "recall_k": 100, "rerank": False}
                for q in self.queries[:64]]
        rows = []
        for label, extra in (("recall batching off", ("--recall-max-batch", "1")), ("recall batching on", ())):
            srv = ServerProcess(self.tmp / "s4", "--reranker", self.ce_path, "--milvus-uri", str(db), *extra,
                                env={"TANDEM_LOG_LEVEL": "WARNING"}, log_name=f"{label}.log").start()
            try:
                for c in (1, 16):
                    r = self.load(srv.target, "search", reqs, c)
                    st = r["stages"]
                    rows.append({"recall": label, "clients": c, "qps": r["requests"] / r["seconds"],
                                 "p50_s": _pct(r["latencies"], 50), "p99_s": _pct(r["latencies"], 99),
                                 "embed_p50_s": _pct(st["embed"], 50), "recall_p50_s": _pct(st["recall"], 50),
                                 "errors": r["errors"]})
                m = srv.metrics_text()
                from tests.metricsparse import value

                calls = value(m, "tandem_batch_compute_seconds_count", worker="recall")
                secs = value(m, "tandem_batch_compute_seconds_sum", worker="recall")
                queries = value(m, "tandem_batch_size_sum", worker="recall")
                rows.append({"recall": label, "milvus_calls": calls, "queries": queries,
                             "milvus_seconds_per_query": secs / max(queries, 1),
                             "mean_queries_per_call": queries / max(calls, 1)})
            finally:
                srv.terminate()
        off = next(r for r in rows if r["recall"] == "recall batching off" and "milvus_calls" in r)
        on = next(r for r in rows if r["recall"] == "recall batching on" and "milvus_calls" in r)
        self.report["scenarios"]["4_search_100k"] = {
            "documents": n_docs, "vectors": "synthetic unit-norm 384-d; real Cranfield query text", "rows": rows,
            "recall_cost_reduction": off["milvus_seconds_per_query"] / on["milvus_seconds_per_query"]}

    def s5_ingest(self, n=300):
        from sentence_transformers import SentenceTransformer

        from server.ingest import to_document

        docs = [to_document(r) for r in self.rows[:n]]
        st = SentenceTransformer(bundled_encoder(), device="cpu")
        st.encode([d.text for d in docs[:64]], batch_size=64)
        raws = []
        for _ in range(self.repeats):
            t = time.perf_counter()
            st.encode([d.text for d in docs], batch_size=64)
            raws.append(n / (time.perf_counter() - t))
        corpus = self.tmp / "ingest.jsonl"
        corpus.write_text("\n".join(json.dumps(r) for r in self.rows[:n]))
        srv = self.server("s5", "--reranker", "none")
        served = []
        try:
            from server.ingest import ingest

            for i in range(self.repeats):
                served.append(ingest(srv.target, f"ingest_{i}", corpus, progress=False)["docs_per_second"])
        finally:
            srv.terminate()
        raw, srv_rate = statistics.median(raws), statistics.median(served)
        self.report["scenarios"]["5_ingest"] = {"documents": n, "raw_encode_docs_per_s": raw,
                                                "served_upsertstream_docs_per_s": srv_rate, "ratio": srv_rate / raw}

    def run(self, only: list[str]):
        for name in ("s1_throughput", "s2_batching_gain", "s3_latency", "s4_search", "s5_ingest"):
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
        out += ["### 3. Latency at low load (one client)", "",
                "| documents | served p50 | served p99 | raw p50 | raw p99 | overhead p50 |", "|---|---|---|---|---|---|"]
        out += [f"| {r['documents']} | {r['served_p50_s'] * 1000:.1f} ms | {r['served_p99_s'] * 1000:.1f} ms | "
                f"{r['raw_p50_s'] * 1000:.1f} ms | {r['raw_p99_s'] * 1000:.1f} ms | **{r['overhead_p50_ms']:.1f} ms** |"
                for r in s["3_latency"]["rows"]]
        out.append("")
    if "4_search_100k" in s:
        x = s["4_search_100k"]
        out += [f"### 4. Search on {x['documents']:,} documents ({x['vectors']}; dense, top 100, no rerank)", "",
                "| recall | clients | queries/s | p50 | p99 | embed p50 | recall p50 |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r['recall']} | {r['clients']} | {r['qps']:.1f} | {r['p50_s'] * 1000:.0f} ms | "
                f"{r['p99_s'] * 1000:.0f} ms | {r['embed_p50_s'] * 1000:.1f} ms | {r['recall_p50_s'] * 1000:.0f} ms |"
                for r in x["rows"] if "clients" in r]
        out += ["", "| recall | Milvus calls | queries | mean queries per call | Milvus seconds per query |",
                "|---|---|---|---|---|"]
        out += [f"| {r['recall']} | {r['milvus_calls']:.0f} | {r['queries']:.0f} | {r['mean_queries_per_call']:.1f} | "
                f"{r['milvus_seconds_per_query'] * 1000:.1f} ms |" for r in x["rows"] if "milvus_calls" in r]
        out += ["", f"Per-query recall cost, batching off / on: **{x['recall_cost_reduction']:.1f}x**", ""]
    if "5_ingest" in s:
        x = s["5_ingest"]
        out += ["### 5. Ingest", "", "| documents | raw encode docs/s | served UpsertStream docs/s | served / raw |",
                "|---|---|---|---|",
                f"| {x['documents']} | {x['raw_encode_docs_per_s']:.1f} | {x['served_upsertstream_docs_per_s']:.1f} | "
                f"**{x['ratio']:.2f}** |", ""]
    return "\n".join(out)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="served vs raw-model benchmarks (writes a table and JSON)")
    p.add_argument("--out", default="bench-results/bench.json")
    p.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. s1,s3")
    p.add_argument("--quick", action="store_true", help="one repeat, shorter windows")

    def run(args) -> int:
        rep = Bench(Path(args.out), args.quick).run([x for x in args.only.split(",") if x])
        text = table(rep)
        print(text)
        Path(args.out).with_suffix(".md").write_text(text)
        return 0

    p.set_defaults(fn=run)


if __name__ == "__main__":
    from server.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))

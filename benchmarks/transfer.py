"""Export and import against re-ingesting: rows per second for each, the server's memory while it exports, and the
file format (Parquet against JSONL with base64 vectors), paired in one run on one server.

    python -m benchmarks.transfer [--rows 100000] [--rss-rows 300000] [--ingest-docs 2000]

One Tandem server (embedded store, the bundled MiniLM embedder) serves every step in turn, with nothing else
running. The documents are Cranfield's and CISI's abstracts, repeated under new ids up to --rows; their vectors are
random unit vectors under the embedder's name (export and import move bytes; what the vectors mean does not change
their cost). Re-ingesting is timed on --ingest-docs of the same documents through UpsertStream, which embeds them:
the rate, not the 100k total, is what is compared (a full re-ingest would take about --rows / rate seconds). Then
--rss-rows are imported into a second collection, the server restarts, and the collection is exported while the
server's RSS is sampled every 50 ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.peers import cpu_model
from tandem import Client
from tandem.transfer import arrow_schema, export_collection, import_file
from tests.support.checkpoints import tiny_cross_encoder
from tests.support.data import load_beir
from tests.support.serverproc import REPO, ServerProcess


def corpus_texts() -> list[str]:
    out = []
    for name in ("cranfield", "cisi"):
        corpus, _ = load_beir(name)
        out += [f"{d.get('title', '')} {d['text']}".strip() for d in corpus if d["text"].strip()]
    return out


def synthetic_file(path: Path, name: str, rows: int, embedder: str, texts: list[str]) -> Path:
    rng = np.random.default_rng(0)
    record = {"format": "tandem-export", "format_version": 1, "collection": name, "embedder": embedder,
              "dimension": 384, "language": "english", "chunking": None, "documents": rows, "rows": rows}
    schema = arrow_schema(384, False, record)
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for start in range(0, rows, 16384):
            n = min(16384, rows - start)
            v = rng.standard_normal((n, 384)).astype("f4")
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            w.write_table(pa.Table.from_arrays([
                pa.array([f"d{i:07d}" for i in range(start, start + n)]),
                pa.array([texts[i % len(texts)] for i in range(start, start + n)]),
                pa.array([json.dumps({"i": i, "source": "bench"}) for i in range(start, start + n)]),
                pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 384)], schema=schema))
    return path


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


class Sampler:
    """Peak RSS of a process (and, separately, of its children) every 50 ms."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.child_peak, self._stop = pid, 0.0, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))
            self.child_peak = max(self.child_peak, sum(rss_mb(c) for c in children(self.pid)))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def formats(parquet: Path, tmp: Path) -> dict:
    """The same rows as Parquet (zstd) and as JSONL with base64 float32 vectors: size, write and read time."""
    t0 = time.perf_counter()
    table = pq.read_table(parquet)
    read_parquet = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = tmp / "again.parquet"
    pq.write_table(table, again, compression="zstd")
    write_parquet = time.perf_counter() - t0
    dense = table.column("dense").combine_chunks().flatten().to_numpy().reshape(-1, 384)
    ids, texts, metas = (table.column(n).to_pylist() for n in ("id", "text", "metadata"))
    jsonl = tmp / "rows.jsonl"
    t0 = time.perf_counter()
    with open(jsonl, "wb") as f:
        for i, t, m, v in zip(ids, texts, metas, dense):
            f.write(orjson.dumps({"id": i, "text": t, "metadata": m,
                                  "dense": base64.b64encode(v.astype("<f4").tobytes()).decode()}) + b"\n")
    write_jsonl = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = 0
    with open(jsonl, "rb") as f:
        for line in f:
            r = orjson.loads(line)
            np.frombuffer(base64.b64decode(r["dense"]), "<f4")
            n += 1
    read_jsonl = time.perf_counter() - t0
    return {"rows": n, "parquet_mb": again.stat().st_size / 1e6, "jsonl_mb": jsonl.stat().st_size / 1e6,
            "parquet_write_s": write_parquet, "jsonl_write_s": write_jsonl,
            "parquet_read_s": read_parquet, "jsonl_read_s": read_jsonl}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--rss-rows", type=int, default=300_000)
    p.add_argument("--ingest-docs", type=int, default=2000)
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "transfer.json")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tandem-transfer-"))
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
    texts = corpus_texts()
    srv = ServerProcess(tmp / "srv", "--reranker", tiny_cross_encoder(tmp / "ce"), "--warmup", "false",
                        "--milvus-uri", str(tmp / "srv" / "m.db")).start(timeout=900)
    report: dict = {"cpu": cpu_model(), "rows": args.rows}
    try:
        with Client(srv.target, timeout=3600) as c:
            embedder = next(m.name for m in c.info().models if m.kind == "embedder")
            src = synthetic_file(tmp / "rows.parquet", "moved", args.rows, embedder, texts)

            # Re-ingesting: the same documents through the embedder.
            c.create_collection("ingested")
            docs = [{"id": f"d{i:07d}", "text": texts[i % len(texts)]} for i in range(args.ingest_docs)]
            t0 = time.perf_counter()
            c.upsert_stream("ingested", lambda: docs, batch_size=64)
            ingest_s = time.perf_counter() - t0
            report["reingest"] = {"docs": args.ingest_docs, "seconds": ingest_s, "docs_per_s": args.ingest_docs / ingest_s}

            r = import_file(c, src, progress=False, say=lambda *a: None)
            report["import"] = {**r, "rows_per_s": r["rows"] / r["seconds"]}
            out = tmp / "moved.parquet"
            e = export_collection(c, "moved", out, progress=False)
            report["export"] = {**e, "rows_per_s": e["rows"] / e["seconds"]}
            report["import_vs_reingest"] = report["import"]["rows_per_s"] / report["reingest"]["docs_per_s"]
            report["formats"] = formats(out, tmp)

            if args.rss_rows:
                big = synthetic_file(tmp / "big.parquet", "big", args.rss_rows, embedder, texts)
                import_file(c, big, progress=False, say=lambda *a: None)
                c.drop_collection("moved")
        # Idle is measured on a restarted server (the imports' allocations would otherwise count as idle).
        if args.rss_rows:
            srv.terminate()
            srv.start(timeout=900)
            with Client(srv.target, timeout=3600) as c:
                c.describe("big")  # loaded
                time.sleep(5)
                idle, idle_child = rss_mb(srv.proc.pid), sum(rss_mb(x) for x in children(srv.proc.pid))
                with Sampler(srv.proc.pid) as s:
                    e = export_collection(c, "big", tmp / "big-out.parquet", progress=False)
                report["rss"] = {"rows": e["rows"], "export_s": e["seconds"], "server_idle_mb": idle,
                                 "server_peak_mb": s.peak, "server_growth_mb": s.peak - idle,
                                 "engine_idle_mb": idle_child, "engine_peak_mb": s.child_peak}
    finally:
        srv.terminate()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report))
    return report


def table(r: dict) -> str:
    f = r["formats"]
    lines = [f"CPU: {r['cpu']}",
             f"| step | rows | seconds | rows/s |", "|---|---|---|---|",
             f"| re-ingest (UpsertStream, embeds) | {r['reingest']['docs']} | {r['reingest']['seconds']:.1f} | "
             f"{r['reingest']['docs_per_s']:.0f} |",
             f"| import (no embedding) | {r['import']['rows']} | {r['import']['seconds']:.1f} | "
             f"{r['import']['rows_per_s']:.0f} |",
             f"| export | {r['export']['rows']} | {r['export']['seconds']:.1f} | {r['export']['rows_per_s']:.0f} |",
             f"\nimport / re-ingest: {r['import_vs_reingest']:.0f}x",
             f"\n| format ({f['rows']} rows) | MB | write s | read s |", "|---|---|---|---|",
             f"| Parquet, zstd | {f['parquet_mb']:.0f} | {f['parquet_write_s']:.2f} | {f['parquet_read_s']:.2f} |",
             f"| JSONL, base64 vectors | {f['jsonl_mb']:.0f} | {f['jsonl_write_s']:.2f} | {f['jsonl_read_s']:.2f} |"]
    if "rss" in r:
        s = r["rss"]
        lines.append(f"\nexport of {s['rows']} rows in {s['export_s']:.0f} s: server RSS {s['server_idle_mb']:.0f} MB "
                     f"idle, {s['server_peak_mb']:.0f} MB peak (+{s['server_growth_mb']:.0f} MB); embedded engine "
                     f"{s['engine_idle_mb']:.0f} -> {s['engine_peak_mb']:.0f} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

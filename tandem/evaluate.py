"""`tandem eval`: retrieval quality of a running server on a BEIR-layout folder.

Ingests corpus.jsonl through the server, runs every judged query through Search
in each mode, with and without rerank, and scores the runs with ir-measures.
`--baseline` adds the same bi-encoder run in-process (exact cosine over all
documents), the reference the served dense figures must reproduce.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ir_measures
from ir_measures import MRR, R, nDCG

from tandem.client import Client
from tandem.errors import TandemError
from tandem.ingest import documents, ingest

MEASURES = [nDCG @ 10, MRR @ 10, R @ 100]
MODES = ("dense", "hybrid", "sparse")


def load_queries(folder: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        qrels.setdefault(q, {})[d] = int(s)
    queries = {}
    for line in (folder / "queries.jsonl").read_text().splitlines():
        row = json.loads(line)
        if str(row["_id"]) in qrels:
            queries[str(row["_id"])] = row["text"]
    return queries, qrels


def score(run: dict[str, dict[str, float]], qrels) -> dict[str, float]:
    agg = ir_measures.calc_aggregate(MEASURES, qrels, run)
    return {"nDCG@10": agg[nDCG @ 10], "MRR@10": agg[MRR @ 10], "R@100": agg[R @ 100]}


def served_run(client: Client, collection: str, queries: dict[str, str], mode: str, rerank: bool,
               depth: int = 100, concurrency: int = 16) -> tuple[dict, dict]:
    def one(item):
        qid, text = item
        return qid, client.search(collection, text, top_n=depth, recall_k=depth, mode=mode, rerank=rerank,
                                  require_rerank=rerank, timeout=600)

    run, timings = {}, {"embed": 0.0, "recall": 0.0, "rerank": 0.0, "total": 0.0}
    with ThreadPoolExecutor(concurrency) as pool:
        for qid, hits in pool.map(one, queries.items()):
            # Rank order is what counts; scores only need to decrease down the list.
            run[qid] = {h.id: float(depth - i) for i, h in enumerate(hits)}
            for k in timings:
                timings[k] += getattr(hits.timings, f"{k}_seconds")
    return run, {k: v / max(1, len(queries)) for k, v in timings.items()}


def baseline_run(folder: Path, queries: dict[str, str], embedder: str, depth: int = 100) -> dict:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from tandem.server.models import resolve

    model = SentenceTransformer(resolve(embedder).path, device="cpu")
    docs = [d for d in documents(folder) if d.text.strip()]
    d = model.encode([x.text for x in docs], batch_size=64, normalize_embeddings=True)
    q = model.encode(list(queries.values()), batch_size=64, normalize_embeddings=True)
    sims = q @ d.T
    run = {}
    for qid, row in zip(queries, sims):
        top = np.argsort(-row)[:depth]
        run[qid] = {docs[i].id: float(row[i]) for i in top}
    return run


def evaluate(client: Client, folder: Path, *, collection: str = "", baseline: bool = False, modes=MODES,
             concurrency: int = 16, progress: bool = True, language: str = "", rerank: bool = True) -> dict:
    collection = collection or "eval_" + "".join(ch if ch.isalnum() else "_" for ch in folder.name)
    queries, qrels = load_queries(folder)
    info = client.info(timeout=30)
    try:
        stored = client.describe(collection).documents
    except TandemError as exc:
        if exc.code.name != "NOT_FOUND":
            raise
        stored = 0
    n_docs = sum(1 for d in documents(folder) if d.text.strip())
    ingest_report = None
    if stored != n_docs:
        ingest_report = ingest(client, collection, folder, progress=progress, language=language)
    results = []
    rerank_options = [False, True] if info.default_reranker and rerank else [False]
    for mode in modes:
        for rr in rerank_options:
            t0 = time.perf_counter()
            run, timings = served_run(client, collection, queries, mode, rr, concurrency=concurrency)
            results.append({"run": f"served {mode}" + (" + rerank" if rr else ""), **score(run, qrels),
                            "seconds": time.perf_counter() - t0, "mean_stage_seconds": timings})
    if baseline:
        results.append({"run": "in-process dense (exact)",
                        **score(baseline_run(folder, queries, info.default_embedder), qrels)})
    return {"dataset": folder.name, "documents": n_docs, "queries": len(queries), "embedder": info.default_embedder,
            "reranker": info.default_reranker or "none", "ingest": ingest_report, "results": results}


def table(report: dict) -> str:
    lines = [f"{report['dataset']}: {report['documents']} documents, {report['queries']} judged queries, "
             f"embedder {report['embedder']}, reranker {report['reranker']}",
             "| run | nDCG@10 | MRR@10 | R@100 |", "|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['run']} | {r['nDCG@10']:.4f} | {r['MRR@10']:.4f} | {r['R@100']:.4f} |")
    return "\n".join(lines)

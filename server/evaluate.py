"""`tandem eval`: retrieval quality of a running server on a BEIR-layout folder.

Ingests corpus.jsonl through the server, runs every judged query through Search
in each mode, with and without rerank, and scores the runs with ir-measures.
`--baseline` adds the same bi-encoder run in-process (exact cosine over all
documents), the reference the served dense figures must reproduce.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import ir_measures
from ir_measures import MRR, R, nDCG

from server.client import channel
from server.ingest import add_client_flags, ingest, read_corpus, to_document
from tandem.v1 import index_pb2, index_pb2_grpc, info_pb2, info_pb2_grpc, search_pb2, search_pb2_grpc

MEASURES = [nDCG @ 10, MRR @ 10, R @ 100]
MODES = {"dense": search_pb2.SEARCH_MODE_DENSE, "hybrid": search_pb2.SEARCH_MODE_HYBRID,
         "sparse": search_pb2.SEARCH_MODE_SPARSE}


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


def served_run(stub, collection: str, queries: dict[str, str], mode: str, rerank: bool,
               depth: int = 100, concurrency: int = 16) -> tuple[dict, dict]:
    def one(item):
        qid, text = item
        r = stub.Search(search_pb2.SearchRequest(collection=collection, query=text, top_n=depth, recall_k=depth,
                                                 mode=MODES[mode], rerank=rerank, require_rerank=rerank),
                        timeout=600)
        return qid, r

    run, timings = {}, {"embed": 0.0, "recall": 0.0, "rerank": 0.0, "total": 0.0}
    with ThreadPoolExecutor(concurrency) as pool:
        for qid, r in pool.map(one, queries.items()):
            # Rank order is what counts; scores only need to decrease down the list.
            run[qid] = {h.id: float(depth - i) for i, h in enumerate(r.hits)}
            for k in timings:
                timings[k] += getattr(r.timings, f"{k}_seconds")
    return run, {k: v / max(1, len(queries)) for k, v in timings.items()}


def baseline_run(folder: Path, queries: dict[str, str], embedder: str, depth: int = 100) -> dict:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from server.models import resolve

    model = SentenceTransformer(resolve(embedder).path, device="cpu")
    docs = [to_document(r) for r in read_corpus(folder / "corpus.jsonl")]
    d = model.encode([x.text for x in docs], batch_size=64, normalize_embeddings=True)
    q = model.encode(list(queries.values()), batch_size=64, normalize_embeddings=True)
    sims = q @ d.T
    run = {}
    for qid, row in zip(queries, sims):
        top = np.argsort(-row)[:depth]
        run[qid] = {docs[i].id: float(row[i]) for i in top}
    return run


def evaluate(target: str, folder: Path, *, collection: str = "", baseline: bool = False,
             modes=("dense", "hybrid", "sparse"), token: str = "", tls: bool = False, tls_ca: str = "",
             concurrency: int = 16, progress: bool = True, language: str = "", rerank: bool = True) -> dict:
    collection = collection or "eval_" + "".join(ch if ch.isalnum() else "_" for ch in folder.name)
    queries, qrels = load_queries(folder)
    with channel(target, tls=tls, tls_ca=tls_ca, token=token) as ch:
        info = info_pb2_grpc.InfoServiceStub(ch).Info(info_pb2.InfoRequest(), timeout=30)
        index = index_pb2_grpc.IndexServiceStub(ch)
        try:
            rows = index.DescribeCollection(index_pb2.DescribeCollectionRequest(collection=collection),
                                            timeout=60).info.row_count
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            rows = 0
        n_docs = sum(1 for r in read_corpus(folder / "corpus.jsonl") if to_document(r).text.strip())
        ingest_report = None
        if rows != n_docs:
            ingest_report = ingest(target, collection, folder / "corpus.jsonl", token=token, tls=tls,
                                   tls_ca=tls_ca, progress=progress, language=language)
        stub = search_pb2_grpc.SearchServiceStub(ch)
        results = []
        rerank_options = [False, True] if info.default_reranker and rerank else [False]
        for mode in modes:
            for rerank in rerank_options:
                t0 = time.perf_counter()
                run, timings = served_run(stub, collection, queries, mode, rerank, concurrency=concurrency)
                results.append({"run": f"served {mode}" + (" + rerank" if rerank else ""), **score(run, qrels),
                                "seconds": time.perf_counter() - t0, "mean_stage_seconds": timings})
    if baseline:
        results.append({"run": "in-process dense (exact)", **score(baseline_run(folder, queries, info.default_embedder), qrels)})
    return {"dataset": folder.name, "documents": n_docs, "queries": len(queries), "embedder": info.default_embedder,
            "reranker": info.default_reranker or "none", "ingest": ingest_report, "results": results}


def table(report: dict) -> str:
    lines = [f"{report['dataset']}: {report['documents']} documents, {report['queries']} judged queries, "
             f"embedder {report['embedder']}, reranker {report['reranker']}",
             "| run | nDCG@10 | MRR@10 | R@100 |", "|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['run']} | {r['nDCG@10']:.4f} | {r['MRR@10']:.4f} | {r['R@100']:.4f} |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="nDCG@10 / MRR@10 / R@100 of a running server on a BEIR folder")
    p.add_argument("dataset", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv")
    p.add_argument("--collection", default="", help="collection to use (default eval_<folder name>)")
    p.add_argument("--modes", default="dense,hybrid,sparse")
    p.add_argument("--baseline", action="store_true", help="also run the embedder in-process (exact search)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--language", default="", help="BM25 analyzer when the collection is created (default english)")
    p.add_argument("--no-rerank", action="store_true", help="recall runs only")
    p.add_argument("--json", default="", help="also write the report here")
    add_client_flags(p)

    def run(args) -> int:
        report = evaluate(args.target, Path(args.dataset), collection=args.collection, baseline=args.baseline,
                          modes=tuple(args.modes.split(",")), token=args.token, tls=args.tls, tls_ca=args.tls_ca,
                          concurrency=args.concurrency, language=args.language, rerank=not args.no_rerank)
        print(table(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
        return 0

    p.set_defaults(fn=run)



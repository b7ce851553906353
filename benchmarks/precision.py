"""Precision and backend scenarios for `tandem bench` (s9, s10).

  9. raw, in-process, variants taking turns: the MiniLM-shaped cross-encoder's pairs/s at batch 1, 8 and 16 on
     Cranfield (query, 60-word passage) pairs for torch fp32/bf16/int8 and OpenVINO fp32/bf16, with agreement
     against torch fp32 (Spearman, same top document per query, largest difference); the bundled embedder's
     docs/s and exact-search nDCG@10 on Cranfield per variant.
 10. served: default precision (auto) against --precision fp32 (and --backend openvino): Rerank throughput at
     16 clients on passages, ranking agreement of the served scores, Search p50 with rerank of the top 20 at
     one client. (Tiny requests against raw throughput: scenario 14, benchmarks/passes.py.)
"""

from __future__ import annotations

import random
import statistics
import sys
import time

import numpy as np

VARIANTS = [("torch", "fp32"), ("torch", "bf16"), ("torch", "int8"), ("openvino", "fp32"), ("openvino", "bf16")]


def _passage(text: str, words: int = 60) -> str:
    return " ".join(text.split()[:words])


def _available(backend: str) -> bool:
    if backend != "openvino":
        return True
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _agreement(ref: np.ndarray, got: np.ndarray, group: int) -> dict:
    from scipy.stats import spearmanr

    tops = [np.argmax(ref[i:i + group]) == np.argmax(got[i:i + group]) for i in range(0, len(ref), group)]
    return {"spearman": float(spearmanr(ref, got).correlation), "same_top": float(np.mean(tops)),
            "max_abs_diff": float(np.abs(ref - got).max())}


def s9_precision_raw(bench) -> None:
    from tandem.evaluate import load_queries, score
    from tandem.server.models import load_embedder, load_reranker
    from tandem.server.precision import Precision
    from tests.support.checkpoints import bundled_encoder

    variants = [v for v in VARIANTS if _available(v[0])]
    rng = random.Random(0)
    passages = [_passage(r["text"]) for r in bench.rows]
    groups = [(q, rng.sample(passages, 10)) for q in bench.queries[:30]]
    agree_pairs = [(q, p) for q, ps in groups for p in ps]
    speed_pairs = [(rng.choice(bench.queries), rng.choice(passages)) for _ in range(128)]
    models = {v: load_reranker(bench.ce_path, "cpu", False, Precision(v[1], "bench"), v[0], str(bench.tmp / "cache"))
              for v in variants}
    sizes = (1, 8, 16)
    rates: dict = {(v, bs): [] for v in variants for bs in sizes}
    for m in models.values():
        m.run(speed_pairs[:16])  # warm-up
    for _ in range(bench.repeats):
        for bs in sizes:
            items = speed_pairs[:32] if bs == 1 else speed_pairs
            for v, m in models.items():  # variants take turns
                t = time.perf_counter()
                for i in range(0, len(items), bs):
                    m.run(items[i:i + bs])
                rates[(v, bs)].append(len(items) / (time.perf_counter() - t))
    scores = {v: np.concatenate([m.run(agree_pairs[i:i + 10]) for i in range(0, len(agree_pairs), 10)])
              for v, m in models.items()}
    del models
    rerank_rows = [{"backend": v[0], "precision": v[1],
                    **{f"pairs_per_s_b{bs}": statistics.median(rates[(v, bs)]) for bs in sizes},
                    **_agreement(scores[("torch", "fp32")], scores[v], 10)} for v in variants]

    # Embedder: docs/s and exact-search nDCG@10 on the whole of Cranfield, per variant.
    from tests.support.serverproc import REPO

    folder = REPO / "datasets" / "cranfield"
    docs = [(r["_id"], f"{r['title']} {r['text']}".strip()) for r in bench.rows]
    queries, qrels = load_queries(folder)
    order = sorted(range(len(docs)), key=lambda i: len(docs[i][1]))
    embed_rows = []
    for v in variants:
        print(f"[bench] s9 embedder {v}", file=sys.stderr, flush=True)
        m = load_embedder(bundled_encoder(), "cpu", False, Precision(v[1], "bench"), v[0], str(bench.tmp / "cache"))
        vecs = np.zeros((len(docs), m.dimension), dtype=np.float32)
        t = time.perf_counter()
        for i in range(0, len(order), 32):
            idx = order[i:i + 32]
            vecs[idx] = np.stack(m.run([docs[j][1] for j in idx]))
        seconds = time.perf_counter() - t
        q = np.stack(m.run(list(queries.values())))
        sims = q @ vecs.T
        run = {qid: {docs[j][0]: float(row[j]) for j in np.argsort(-row)[:100]} for qid, row in zip(queries, sims)}
        embed_rows.append({"backend": v[0], "precision": v[1], "docs_per_s": len(docs) / seconds,
                           "ndcg10": score(run, qrels)["nDCG@10"]})
    bench.report["scenarios"]["9_precision_raw"] = {"pairs": "Cranfield (query, 60-word passage)",
                                                    "reranker": rerank_rows, "embedder": embed_rows,
                                                    "embedder_documents": len(docs)}


def s10_precision_served(bench) -> None:
    from tandem.v1 import rerank_pb2, rerank_pb2_grpc, search_pb2, search_pb2_grpc

    from tandem import Client
    from tandem.ingest import to_document
    from tandem.server.models import load_reranker
    from tandem.server.precision import Precision

    d = load_reranker(bench.ce_path, "cpu", False)  # what the auto server will serve (the same cached choice)
    default = Precision(d.precision, f"auto: {d.backend} {d.precision}, measured fastest that agrees with fp32")
    servers = {"fp32": bench.server("s10-fp32", "--precision", "fp32"),
               f"auto ({default.name})": bench.server("s10-auto")}
    if _available("openvino"):
        servers["openvino bf16"] = bench.server("s10-ov", "--backend", "openvino", "--precision", "bf16",
                                                "--cache-dir", str(bench.tmp / "cache"))
    out: dict = {"default_precision": default.name, "default_reason": default.reason}
    try:
        passages = [_passage(r["text"]) for r in bench.rows]
        reqs = bench.rerank_requests(64, (20, 50), passages)
        thr = bench.turns(servers, lambda s: bench.load(s.target, "rerank", reqs, 16))
        out["rerank_16_clients"] = {k: {"pairs_per_s": statistics.median(r["items"] / r["seconds"] for r in v),
                                        "p50_s": float(np.percentile([x for r in v for x in r["latencies"]], 50))}
                                    for k, v in thr.items()}
        base = thr["fp32"]
        out["rerank_ratio_vs_fp32"] = {k: statistics.median(a["items"] / b["items"] for a, b in zip(v, base))
                                       for k, v in thr.items() if k != "fp32"}

        # Ranking agreement of served scores: the same 100 calls on each server, against fp32.
        rng = random.Random(5)
        calls = [(rng.choice(bench.queries), rng.sample(passages, 20)) for _ in range(100)]
        served: dict = {}
        for k, s in servers.items():
            with s.channel() as ch:
                stub = rerank_pb2_grpc.RerankServiceStub(ch)
                served[k] = []
                for q, ds in calls:
                    r = stub.Rerank(rerank_pb2.RerankRequest(query=q, documents=ds, raw_scores=True), timeout=120)
                    by_index = sorted(r.results, key=lambda x: x.index)
                    served[k].append(np.array([x.relevance_score for x in by_index]))
        out["served_agreement_vs_fp32"] = {
            k: {"spearman_median": float(np.median([_agreement(a, b, 20)["spearman"]
                                                    for a, b in zip(served["fp32"], v)])),
                "spearman_all": _agreement(np.concatenate(served["fp32"]), np.concatenate(v), 20)["spearman"],
                "same_top": float(np.mean([np.argmax(a) == np.argmax(b) for a, b in zip(served["fp32"], v)]))}
            for k, v in served.items() if k != "fp32"}

        # Search with rerank of the top 20, one client, on Cranfield.
        docs = [to_document(r) for r in bench.rows]
        for s in servers.values():
            with Client(s.target) as c:
                c.create_collection("cran")
                c.upsert("cran", docs)
        lat: dict = {k: [] for k in servers}
        chans = {k: s.channel() for k, s in servers.items()}
        stubs = {k: search_pb2_grpc.SearchServiceStub(c) for k, c in chans.items()}
        for q in bench.queries[: 40 if bench.quick else 80]:
            for k, stub in stubs.items():  # servers alternate query by query
                t = time.perf_counter()
                stub.Search(search_pb2.SearchRequest(collection="cran", query=q, recall_k=20, top_n=10,
                                                     require_rerank=True), timeout=120)
                lat[k].append(time.perf_counter() - t)
        for c in chans.values():
            c.close()
        out["search_rerank20_p50_s"] = {k: float(np.percentile(v, 50)) for k, v in lat.items()}
        out["search_p50_speedup_vs_fp32"] = {k: out["search_rerank20_p50_s"]["fp32"] / v
                                             for k, v in out["search_rerank20_p50_s"].items() if k != "fp32"}
    finally:
        for s in servers.values():
            s.terminate()
    bench.report["scenarios"]["10_precision_served"] = out


def table(s: dict) -> list[str]:
    out = []
    if "9_precision_raw" in s:
        x = s["9_precision_raw"]
        out += [f"### 9. Precision and backend, raw in-process ({x['pairs']}; variants take turns)", "",
                "| backend | precision | pairs/s b1 | b8 | b16 | Spearman vs torch fp32 | same top | max abs diff |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['backend']} | {r['precision']} | {r['pairs_per_s_b1']:.1f} | {r['pairs_per_s_b8']:.1f} | "
                f"{r['pairs_per_s_b16']:.1f} | {r['spearman']:.5f} | {r['same_top']:.2f} | {r['max_abs_diff']:.1e} |"
                for r in x["reranker"]]
        out += ["", f"Embedder (bundled all-MiniLM-L6-v2) on all {x['embedder_documents']} Cranfield documents, "
                "exact cosine search:", "", "| backend | precision | docs/s | nDCG@10 |", "|---|---|---|---|"]
        out += [f"| {r['backend']} | {r['precision']} | {r['docs_per_s']:.1f} | {r['ndcg10']:.4f} |"
                for r in x["embedder"]]
        out.append("")
    if "10_precision_served" in s:
        x = s["10_precision_served"]
        out += [f"### 10. Served precision (default here: {x['default_precision']}; {x['default_reason']})", "",
                "| server | Rerank pairs/s, 16 clients | vs fp32 | p50 | Search+rerank20 p50 | speed-up vs fp32 |",
                "|---|---|---|---|---|---|"]
        for k, r in x["rerank_16_clients"].items():
            ratio = x["rerank_ratio_vs_fp32"].get(k)
            sp = x["search_p50_speedup_vs_fp32"].get(k)
            out.append(f"| {k} | {r['pairs_per_s']:.1f} | {'**%.2fx**' % ratio if ratio else '1'} | "
                       f"{r['p50_s']:.2f}s | {x['search_rerank20_p50_s'][k] * 1000:.0f} ms | "
                       f"{'**%.2fx**' % sp if sp else '1'} |")
        out += ["", "| server | served Spearman vs fp32 (median per call) | over all scores | same top document |",
                "|---|---|---|---|"]
        out += [f"| {k} | {r['spearman_median']:.5f} | {r['spearman_all']:.5f} | {r['same_top']:.2f} |"
                for k, r in x["served_agreement_vs_fp32"].items()]
        t = x.get("titles_32_clients")  # reports before scenario 14 measured tiny requests here
        if t:
            out += ["", f"1 title x 32 clients at {x['default_precision']}: served {t['served_pairs_per_s']:.1f} "
                    f"pairs/s against raw best batch {t['raw_best_pairs_per_s']:.1f}: **{t['ratio']:.2f}x**."]
        out.append("")
    return out

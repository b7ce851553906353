"""Several models in one server (scenarios 11-12, run by `tandem bench --only s11,s12`).

  11. Two rerankers sharing the device: 16 clients on passages, every request to one MiniLM-shaped reranker,
      against the same load split evenly between two of them (different seeds) in another server. The servers
      take turns; the ratio is total throughput, two over one.
  12. A rerank cascade in Search on Cranfield, one client: a tiny model over 100 candidates keeping 20, then the
      MiniLM-shaped model over those 20, against the MiniLM-shaped model over all 100. Queries alternate
      between the two request forms on one server, so drift hits both alike.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from tests.support.checkpoints import minilm_cross_encoder, tiny_cross_encoder


def _passage(text: str, words: int = 60) -> str:
    return " ".join(text.split()[:words])


def s11_two_rerankers(bench) -> None:
    second = minilm_cross_encoder(bench.tmp / "minilm-ce-2", seed=1)
    one = bench.server("s11-one", "--reranker", f"mini={bench.ce_path}")
    two = bench.server("s11-two", "--reranker", f"mini={bench.ce_path}", "--reranker", f"mini2={second}")
    try:
        passages = [_passage(r["text"]) for r in bench.rows]
        reqs = bench.rerank_requests(64, (20, 50), passages)
        split = [dict(r, model="mini" if i % 2 else "mini2") for i, r in enumerate(reqs)]
        runs = bench.turns({"one reranker": one, "two rerankers": two},
                           lambda s: bench.load(s.target, "rerank", split if s is two else reqs, 16))
    finally:
        one.terminate()
        two.terminate()
    rate = {k: [r["items"] / r["seconds"] for r in v] for k, v in runs.items()}
    bench.report["scenarios"]["11_two_rerankers"] = {
        "pairs_per_s": {k: statistics.median(v) for k, v in rate.items()},
        "p50_s": {k: float(np.percentile([x for r in v for x in r["latencies"]], 50)) for k, v in runs.items()},
        "ratio": statistics.median(a / b for a, b in zip(rate["two rerankers"], rate["one reranker"])),
        "errors": {k: [r["errors"] for r in v] for k, v in runs.items()},
    }


def s12_cascade(bench) -> None:
    from tandem.v1 import search_pb2, search_pb2_grpc

    from tandem import Client
    from tandem.ingest import to_document

    tiny = tiny_cross_encoder(bench.tmp / "tiny-ce")
    srv = bench.server("s12", "--reranker", f"mini={bench.ce_path}", "--reranker", f"tiny={tiny}")
    lat: dict[str, list[float]] = {"mini over 100": [], "tiny over 100, then mini over 20": []}
    stage_s: list[tuple[float, float]] = []
    try:
        with Client(srv.target) as c:
            c.create_collection("cran")
            c.upsert("cran", [to_document(r) for r in bench.rows])
        with srv.channel() as ch:
            search = search_pb2_grpc.SearchServiceStub(ch)
            forms = {"mini over 100": dict(reranker="mini"),
                     "tiny over 100, then mini over 20": dict(rerank_stages=[
                         search_pb2.RerankStage(model="tiny", keep=20), search_pb2.RerankStage(model="mini")])}
            queries = bench.queries[: 40 if bench.quick else 100]
            for q in queries[:5]:  # warm-up
                for kw in forms.values():
                    search.Search(search_pb2.SearchRequest(collection="cran", query=q, recall_k=100, top_n=10,
                                                           require_rerank=True, **kw), timeout=120)
            for i, q in enumerate(queries):
                order = list(forms.items()) if i % 2 == 0 else list(forms.items())[::-1]
                for label, kw in order:
                    t = time.perf_counter()
                    r = search.Search(search_pb2.SearchRequest(collection="cran", query=q, recall_k=100, top_n=10,
                                                               require_rerank=True, **kw), timeout=120)
                    lat[label].append(time.perf_counter() - t)
                    if "rerank_stages" in kw:
                        stage_s.append(tuple(s.seconds for s in r.timings.rerank_stages))
    finally:
        srv.terminate()
    p50 = {k: float(np.percentile(v, 50)) for k, v in lat.items()}
    bench.report["scenarios"]["12_cascade"] = {
        "queries": len(lat["mini over 100"]), "p50_s": p50,
        "stage_p50_s": {"tiny over 100": float(np.median([a for a, _ in stage_s])),
                        "mini over 20": float(np.median([b for _, b in stage_s]))},
        "ratio": p50["tiny over 100, then mini over 20"] / p50["mini over 100"],
    }


def table(s: dict) -> list[str]:
    out = []
    if "11_two_rerankers" in s:
        x = s["11_two_rerankers"]
        out += ["### 11. Two rerankers on one device (16 clients, passages; servers take turns)", "",
                "| server | Rerank pairs/s | p50 |", "|---|---|---|"]
        out += [f"| {k} | {v:.1f} | {x['p50_s'][k]:.2f}s |" for k, v in x["pairs_per_s"].items()]
        out += ["", f"Two rerankers, load split evenly, against one: **{x['ratio']:.2f}x** total throughput.", ""]
    if "12_cascade" in s:
        x = s["12_cascade"]
        out += [f"### 12. Rerank cascade in Search (Cranfield, one client, {x['queries']} queries, forms alternate)",
                "", "| rerank | Search p50 |", "|---|---|"]
        out += [f"| {k} | {v * 1000:.1f} ms |" for k, v in x["p50_s"].items()]
        out += ["", "Cascade stage p50: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in x["stage_p50_s"].items()),
                f"Cascade against the MiniLM-shaped model over all 100: **{x['ratio']:.2f}x** the time.", ""]
    return out

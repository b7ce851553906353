"""Long documents (scenario 13, `tandem bench --only s13`).

Every Cranfield abstract behind at least 1,000 tokens of CISI filler (tests/support/longdocs.py), in three collections
on one server: the plain abstracts, the long documents chunked (128-token passages, 16 overlapping), and the
long documents unchunked. It reports:
  - nDCG@10, MRR@10 and R@100 of dense recall (no rerank: the test reranker is untrained) on each;
  - ingest: served UpsertStream passages/s into the chunked collection against raw `encode` of the same
    passages at its best batch, in turns on the first 300 long documents;
  - Search p50 (rerank of the top 50 on) on the chunked and the unchunked long collection, one client,
    queries alternating between the two.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from tests.support.longdocs import cranfield, lengthen

CHUNK = (128, 16)


def s13_long_documents(bench) -> None:
    from sentence_transformers import SentenceTransformer

    from tandem.server.chunking import Splitter
    from tandem.evaluate import score
    from tandem.server.models import resolve
    from tandem.server.models import load_embedder
    from tandem.v1 import document_pb2, index_pb2, index_pb2_grpc, search_pb2, search_pb2_grpc

    prec = load_embedder(resolve("sentence-transformers/all-MiniLM-L6-v2").path, "cpu", False)  # the served default
    st = SentenceTransformer(resolve("sentence-transformers/all-MiniLM-L6-v2").path, device="cpu")
    sp = Splitter(st.tokenizer)
    docs, queries, qrels = cranfield()
    long = lengthen(docs, sp.count)
    srv = bench.server("s13")
    out: dict = {"documents": len(docs), "queries": len(queries), "chunking": list(CHUNK), "precision": prec.precision}

    def stream(index, name, corpus):
        t = time.perf_counter()
        r = index.UpsertStream((index_pb2.UpsertStreamRequest(collection=name, documents=[
            document_pb2.Document(id=d["id"], text=d["text"]) for d in corpus[i:i + 32]])
            for i in range(0, len(corpus), 32)), timeout=7200)
        return r, time.perf_counter() - t

    try:
        with srv.channel() as ch:
            index = index_pb2_grpc.IndexServiceStub(ch)
            search = search_pb2_grpc.SearchServiceStub(ch)
            chunking = index_pb2.Chunking(max_tokens=CHUNK[0], overlap_tokens=CHUNK[1])
            sets = {"plain abstracts": ("plain", None, docs), "long, chunked": ("long_chunked", chunking, long),
                    "long, unchunked": ("long_whole", None, long)}
            for name, ck, corpus in sets.values():
                index.CreateCollection(index_pb2.CreateCollectionRequest(collection=name, chunking=ck), timeout=60)
                r, _ = stream(index, name, corpus)
                assert r.upserted == len(corpus)
            info = index.DescribeCollection(index_pb2.DescribeCollectionRequest(collection="long_chunked"),
                                            timeout=60).info
            out["passages"] = info.passages
            out["quality"] = {}
            for label, (name, _, _) in sets.items():
                run = {}
                for qid, q in queries.items():
                    r = search.Search(search_pb2.SearchRequest(collection=name, query=q, top_n=100, recall_k=100,
                                                               rerank=False), timeout=120)
                    run[qid] = {h.id: float(100 - i) for i, h in enumerate(r.hits)}
                out["quality"][label] = score(run, qrels)

            # Ingest: served passages/s against raw encode of the same passages, in turns.
            part = long[:300]
            passages = [w.of(d["text"]) for d in part for w in sp.split(d["text"], *CHUNK)]

            def encode(texts, batch_size):  # the served backend's own forward, in-process
                for i in range(0, len(texts), batch_size):
                    prec.run(texts[i:i + batch_size])
            by_bs = {}
            for bs in (16, 32, 64):
                t = time.perf_counter()
                encode(passages[:512], batch_size=bs)
                by_bs[bs] = 512 / (time.perf_counter() - t)
            best = max(by_bs, key=by_bs.get)
            raws, served = [], []
            for i in range(bench.repeats):
                t = time.perf_counter()
                encode(passages, batch_size=best)
                raws.append(len(passages) / (time.perf_counter() - t))
                name = f"ingest_{i}"
                index.CreateCollection(index_pb2.CreateCollectionRequest(collection=name, chunking=chunking),
                                       timeout=60)
                r, seconds = stream(index, name, part)
                assert r.passages == len(passages)
                served.append(r.passages / seconds)
            out["ingest"] = {"documents": len(part), "passages": len(passages), "raw_best_batch": best,
                             "raw_passages_per_s": statistics.median(raws),
                             "served_passages_per_s": statistics.median(served),
                             "served_docs_per_s": statistics.median(served) * len(part) / len(passages),
                             "ratio": statistics.median(s / r for s, r in zip(served, raws))}

            # Search p50 with rerank of the top 50, chunked against unchunked, alternating.
            lat: dict[str, list[float]] = {"long, chunked": [], "long, unchunked": []}
            qs = list(queries.values())[: 40 if bench.quick else 80]
            for i, q in enumerate(qs):
                pairs = [("long, chunked", "long_chunked"), ("long, unchunked", "long_whole")]
                for label, name in pairs if i % 2 == 0 else pairs[::-1]:
                    t = time.perf_counter()
                    search.Search(search_pb2.SearchRequest(collection=name, query=q, top_n=10, recall_k=50,
                                                           require_rerank=True), timeout=120)
                    lat[label].append(time.perf_counter() - t)
            out["search_rerank50_p50_s"] = {k: float(np.percentile(v, 50)) for k, v in lat.items()}
    finally:
        srv.terminate()
    bench.report["scenarios"]["13_long_documents"] = out


def table(s: dict) -> list[str]:
    if "13_long_documents" not in s:
        return []
    x = s["13_long_documents"]
    out = [f"### 13. Long documents (all {x['documents']} Cranfield abstracts behind 1,000+ tokens of CISI; "
           f"{x['queries']} queries; dense recall, no rerank)", "",
           "| collection | nDCG@10 | MRR@10 | R@100 |", "|---|---|---|---|"]
    out += [f"| {k} | {v['nDCG@10']:.4f} | {v['MRR@10']:.4f} | {v['R@100']:.4f} |" for k, v in x["quality"].items()]
    g = x["ingest"]
    out += ["", f"Chunked: {x['passages']} passages of at most {x['chunking'][0]} tokens ({x['chunking'][1]} "
            "overlapping).", "",
            f"Ingest of {g['documents']} long documents ({g['passages']} passages) into a chunked collection: served "
            f"{g['served_passages_per_s']:.1f} passages/s ({g['served_docs_per_s']:.1f} docs/s) against raw encode "
            f"{g['raw_passages_per_s']:.1f} passages/s at batch {g['raw_best_batch']}: **{g['ratio']:.2f}x**.", "",
            "Search p50, rerank of the top 50, one client: " + ", ".join(
                f"{k} {v * 1000:.0f} ms" for k, v in x["search_rerank50_p50_s"].items()), ""]
    return out

"""How deep and how long Search reranks on a CPU: the measurement behind the defaults of --rerank-depth and
--max-tokens-per-doc (scenario 17).

    .venv/bin/python -m benchmarks.depth [--queries 20] [--out bench-results/depth.json]

One server on the defaults (backend and precision auto) with all of Cranfield ingested; one client runs the same
Cranfield queries through Search at each rerank depth and token budget (dense recall of 100, top 10), the
settings taking turns query by query, and the p50 and p90 of each are reported with the server's own rerank
time. The reranker is the MiniLM-L6-shaped test cross-encoder (untrained head): cost only, no quality claim.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from tests.support.checkpoints import minilm_cross_encoder
from tests.support.serverproc import REPO, ServerProcess

DEPTHS = (25, 50, 100)
TOKENS = (64, 128, 256, 512)  # 512: the model's whole window, i.e. no cut


def main(argv=None) -> dict:
    from benchmarks.peers import cpu_model
    from tandem import Client
    from tandem.ingest import ingest

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "depth.json")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tandem-depth-"))
    srv = ServerProcess(tmp, "--reranker", minilm_cross_encoder(tmp / "ce"), "--milvus-uri", str(tmp / "m.db"),
                        env={"TANDEM_LOG_LEVEL": "WARNING"}).start(timeout=900)
    queries = [json.loads(x)["text"] for x in (REPO / "datasets" / "cranfield" / "queries.jsonl").read_text()
               .splitlines()][:args.queries]
    settings = [(d, t) for d in DEPTHS for t in TOKENS]
    lat: dict = {s: [] for s in settings}
    rerank: dict = {s: [] for s in settings}
    try:
        with Client(srv.target, timeout=600) as c:
            ingest(c, "cranfield", REPO / "datasets" / "cranfield", progress=False)
            limits = c.info().limits
            for q in queries[:2]:  # warm-up
                c.search("cranfield", q)
            for q in queries:
                for s in settings:
                    t = time.perf_counter()
                    r = c.search("cranfield", q, top_n=10, recall_k=100, rerank_depth=s[0], max_tokens_per_doc=s[1])
                    lat[s].append(time.perf_counter() - t)
                    rerank[s].append(r.response.timings.rerank_seconds)
                    assert r.response.reranked, r.response.degraded_reason
    finally:
        srv.terminate()
    rows = [{"depth": d, "tokens_per_doc": t, "p50_s": statistics.median(lat[(d, t)]),
             "p90_s": sorted(lat[(d, t)])[int(0.9 * (len(lat[(d, t)]) - 1))],
             "rerank_p50_s": statistics.median(rerank[(d, t)])} for d, t in settings]
    report = {"cpu": cpu_model(), "queries": len(queries), "server_defaults": {
        "rerank_depth": limits.rerank_depth, "max_tokens_per_doc": limits.max_tokens_per_doc}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"CPU: {report['cpu']}; {len(queries)} Cranfield queries, one client, settings in turns; server "
          f"defaults: depth {limits.rerank_depth}, {limits.max_tokens_per_doc} tokens per document")
    print("| rerank depth | tokens per document | Search p50 | p90 | rerank p50 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['depth']} | {r['tokens_per_doc']}{' (no cut)' if r['tokens_per_doc'] == 512 else ''} | "
              f"{r['p50_s']:.2f} s | {r['p90_s']:.2f} s | {r['rerank_p50_s']:.2f} s |")
    return report


if __name__ == "__main__":
    main()

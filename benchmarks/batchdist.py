"""Batch-size distribution under N concurrent Rerank calls (MiniLM-sized reranker), read from /metrics.

    python -m benchmarks.batchdist --clients 32
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from tandem.v1 import rerank_pb2, rerank_pb2_grpc
from tests.support.checkpoints import minilm_cross_encoder
from tests.support.data import load_beir
from tests.support.metricsparse import histogram_buckets
from tests.support.serverproc import ServerProcess


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tandem-batchdist-"))
    srv = ServerProcess(tmp, "--reranker", minilm_cross_encoder(tmp / "ce"), "--milvus-uri", str(tmp / "m.db")).start()
    corpus, queries = load_beir("cranfield", limit=400)
    texts = [d["title"] for d in corpus] + [" ".join(d["text"].split()[:80]) for d in corpus]
    rng = random.Random(0)
    try:
        before = histogram_buckets(srv.metrics_text(), "tandem_batch_size", worker="reranker")
        with srv.channel() as ch:
            stub = rerank_pb2_grpc.RerankServiceStub(ch)
            for _ in range(a.rounds):
                fs = [stub.Rerank.future(rerank_pb2.RerankRequest(query=rng.choice(queries)["text"],
                                                                  documents=rng.sample(texts, rng.randint(1, 4))),
                                         timeout=300) for _ in range(a.clients)]
                for f in fs:
                    f.result()
        after = histogram_buckets(srv.metrics_text(), "tandem_batch_size", worker="reranker")
    finally:
        srv.terminate()
    cum = {k: after[k] - before.get(k, 0) for k in sorted(after)}
    prev, total = 0.0, cum[float("inf")]
    print(f"{a.rounds} rounds of {a.clients} concurrent Rerank calls (1-4 documents each): {total:.0f} batches")
    print("| batch size | batches |\n|---|---|")
    lo = 0
    for le, c in cum.items():
        if c - prev:
            label = f"{int(lo) + 1}-{int(le)}" if le != float("inf") and le > lo + 1 else f"{int(le)}" if le != float("inf") else f">{int(lo)}"
            print(f"| {label} | {c - prev:.0f} |")
        prev, lo = c, le


if __name__ == "__main__":
    main()

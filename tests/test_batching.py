"""Dynamic batching with a MiniLM-L6-sized cross-encoder: concurrency, exactness, splitting,
backpressure and cancellation, observed through the server's own metrics."""

from __future__ import annotations

import random
import threading
import time

import grpc
import pytest
from sentence_transformers import CrossEncoder

from tandem.v1 import rerank_pb2, rerank_pb2_grpc
from tests.support.data import load_beir
from tests.support.metricsparse import histogram_buckets, value
from tests.support.serverproc import REFERENCE_RERANKER, ServerProcess

MAX_BATCH = 8
CAPACITY = 64


@pytest.fixture(scope="module")
def ce_server(make_module_server, minilm_ce, tmp_path_factory):
    d = tmp_path_factory.mktemp("ce-server")
    # torch fp32: batching must not move a score at all (1e-4), against sentence-transformers' own predict
    # (tests/support/serverproc.py). Other backends and precisions: tests/test_precision_served.py.
    # An idle model waits up to 300 ms for a batch to fill, so a burst shares batches however fast
    # this CPU finishes each one (with no wait, a quick model can take the burst one request at a time).
    s = make_module_server("--reranker", minilm_ce, "--milvus-uri", str(d / "m.db"), *REFERENCE_RERANKER,
                           "--max-batch-pairs", str(MAX_BATCH), "--queue-capacity", str(CAPACITY),
                           "--max-wait-ms", "300", "--max-documents-per-request", "48", dir=d)
    yield s
    s.terminate()


@pytest.fixture(scope="module")
def stub(ce_server):
    with ce_server.channel() as ch:
        yield rerank_pb2_grpc.RerankServiceStub(ch)


@pytest.fixture(scope="module")
def texts():
    corpus, queries = load_beir("cranfield", limit=300)
    return [q["text"] for q in queries], [d["text"] for d in corpus] + [d["title"] for d in corpus]


def test_concurrent_requests_share_batches_and_match_predict(stub, ce_server, texts, minilm_ce):
    queries, docs = texts
    rng = random.Random(7)
    # 32 concurrent requests of 1-2 documents with mixed lengths (titles to full abstracts).
    reqs = [rerank_pb2.RerankRequest(query=rng.choice(queries), documents=rng.sample(docs, rng.randint(1, 2)),
                                     raw_scores=bool(i % 2)) for i in range(32)]
    before = ce_server.metrics_text()
    futures = [stub.Rerank.future(r, timeout=120) for r in reqs]
    results = [f.result() for f in futures]
    after = ce_server.metrics_text()

    batches = value(after, "tandem_batch_size_count", worker="reranker") - \
        value(before, "tandem_batch_size_count", worker="reranker")
    pairs = value(after, "tandem_batch_size_sum", worker="reranker") - \
        value(before, "tandem_batch_size_sum", worker="reranker")
    assert pairs == sum(len(r.documents) for r in reqs)
    assert batches < pairs / 2, f"{pairs} pairs in {batches} batches: requests were not batched together"
    b = histogram_buckets(after, "tandem_batch_size", worker="reranker")
    assert b[float("inf")] - b[1.0] > 0  # some batches larger than 1

    ce = CrossEncoder(minilm_ce, device="cpu")
    for req, res in zip(reqs, results):
        assert len(res.results) == len(req.documents)
        for r in res.results:
            alone = ce.predict([(req.query, req.documents[r.index])],
                               activation_fn=None if not req.raw_scores else __import__("torch").nn.Identity())[0]
            assert r.relevance_score == pytest.approx(float(alone), abs=1e-4)


def test_request_larger_than_a_batch_is_split_and_reassembled(stub, ce_server, texts, minilm_ce):
    queries, docs = texts
    req = rerank_pb2.RerankRequest(query=queries[0], documents=docs[:40], raw_scores=True)
    before = value(ce_server.metrics_text(), "tandem_batch_size_count", worker="reranker")
    res = stub.Rerank(req, timeout=120)
    after = value(ce_server.metrics_text(), "tandem_batch_size_count", worker="reranker")
    assert after - before >= 40 / MAX_BATCH
    ce = CrossEncoder(minilm_ce, device="cpu")
    import torch

    expected = ce.predict([(req.query, d) for d in req.documents], activation_fn=torch.nn.Identity())
    got = {r.index: r.relevance_score for r in res.results}
    assert [got[i] for i in range(40)] == pytest.approx(list(map(float, expected)), abs=1e-4)
    assert [r.index for r in res.results] == sorted(range(40), key=lambda i: -expected[i])


def _busy(stub, docs, query, server, n=40):
    """Occupy the model with long documents; returns a join()able thread once their pairs wait in the queue
    (polled, not slept: a fast CPU would have finished them, and a slow one not yet queued them)."""
    long_docs = sorted(docs, key=len)[-n:]
    t = threading.Thread(target=lambda: stub.Rerank(
        rerank_pb2.RerankRequest(query=query, documents=long_docs), timeout=120))
    t.start()
    end = time.monotonic() + 60
    while time.monotonic() < end and not value(server.metrics_text(), "tandem_queue_depth", worker="reranker"):
        time.sleep(0.01)
    return t


def test_full_queue_refuses_at_once(stub, ce_server, texts):
    queries, docs = texts
    t = _busy(stub, docs, queries[0], ce_server, n=48)
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        stub.Rerank(rerank_pb2.RerankRequest(query="q", documents=docs[:32]), timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue full" in e.value.details() and str(CAPACITY) in e.value.details()
    assert time.monotonic() - start < 0.5
    t.join()
    assert value(ce_server.metrics_text(), "tandem_dropped_items_total", worker="reranker", reason="overload") > 0


def test_expired_and_cancelled_requests_are_dropped_before_inference(stub, ce_server, texts):
    queries, docs = texts
    m0 = ce_server.metrics_text()
    t = _busy(stub, docs, queries[0], ce_server, n=32)
    # Short deadlines: they expire while queued behind the busy model.
    short = [stub.Rerank.future(rerank_pb2.RerankRequest(query="q", documents=["d1", "d2"]), timeout=0.2)
             for _ in range(5)]
    # Cancelled by the client while queued.
    cancelled = [stub.Rerank.future(rerank_pb2.RerankRequest(query="q", documents=["d3"]), timeout=60)
                 for _ in range(3)]
    time.sleep(0.1)
    for f in cancelled:
        f.cancel()
    for f in short:
        with pytest.raises(grpc.RpcError) as e:
            f.result()
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    t.join()
    time.sleep(0.3)
    m1 = ce_server.metrics_text()
    dropped = sum(value(m1, "tandem_dropped_items_total", worker="reranker", reason=r) -
                  value(m0, "tandem_dropped_items_total", worker="reranker", reason=r)
                  for r in ("deadline", "cancelled"))
    assert dropped >= 5 * 2 + 3
    computed = value(m1, "tandem_batch_size_sum", worker="reranker") - value(m0, "tandem_batch_size_sum", worker="reranker")
    assert computed == 32  # only the busy request's pairs reached the model
    assert value(m1, "tandem_queue_depth", worker="reranker") == 0

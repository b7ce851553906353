"""RerankService, InfoService, health and reflection against a real server process."""

from __future__ import annotations

import math

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tandem.v1 import info_pb2, rerank_pb2

DOCS = ["the cat sat on the mat", "aerodynamics of a wing in a slipstream", "boundary layer transition",
        "a dog chased the cat", "heat transfer in hypersonic flow"]


def rerank(stubs, **kw):
    return stubs.rerank.Rerank(rerank_pb2.RerankRequest(**kw), timeout=30)


def test_rerank_contract(stubs, tiny_ce):
    r = rerank(stubs, query="cat", documents=DOCS, return_documents=True)
    assert r.model == tiny_ce
    assert sorted(x.index for x in r.results) == list(range(len(DOCS)))
    scores = [x.relevance_score for x in r.results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(x.document == DOCS[x.index] for x in r.results)
    assert r.usage.pairs == len(DOCS) and r.usage.tokens > len(DOCS) and r.usage.truncated == 0
    assert r.usage.total_seconds >= r.usage.inference_seconds > 0

    raw = rerank(stubs, query="cat", documents=DOCS, raw_scores=True)
    by_index = {x.index: x.relevance_score for x in raw.results}
    for x in r.results:
        assert x.relevance_score == pytest.approx(1 / (1 + math.exp(-by_index[x.index])), abs=1e-6)
        assert x.document == DOCS[x.index]
    assert [x.document for x in raw.results] == [""] * len(DOCS)  # only when asked

    top = rerank(stubs, query="cat", documents=DOCS, top_n=2)
    assert [x.index for x in top.results] == [x.index for x in r.results[:2]]


def test_timings_in_trailing_metadata(stubs):
    _, call = stubs.rerank.Rerank.with_call(rerank_pb2.RerankRequest(query="q", documents=DOCS), timeout=30)
    md = dict(call.trailing_metadata())
    assert float(md["tandem-total-seconds"]) > 0
    assert float(md["tandem-inference-seconds"]) > 0
    assert "tandem-queue-seconds" in md


def test_truncation_is_reported(stubs):
    long_doc = "word " * 2000
    r = rerank(stubs, query="cat", documents=[long_doc, "short"])
    assert r.usage.truncated == 1
    assert r.usage.tokens <= 128 + 10  # tiny model: max_length 128


@pytest.mark.parametrize("kw, code, words", [
    (dict(query="", documents=["a"]), grpc.StatusCode.INVALID_ARGUMENT, "query is empty"),
    (dict(query="   ", documents=["a"]), grpc.StatusCode.INVALID_ARGUMENT, "query is empty"),
    (dict(query="q", documents=[]), grpc.StatusCode.INVALID_ARGUMENT, "documents is empty"),
    (dict(query="q", documents=["d"] * 257), grpc.StatusCode.INVALID_ARGUMENT, "limit is 256"),
    (dict(query="q", documents=["d"], top_n=100000), grpc.StatusCode.INVALID_ARGUMENT, "top_n"),
    (dict(query="q", documents=["d"], model="no-such-model"), grpc.StatusCode.NOT_FOUND, "not loaded"),
    (dict(query="q\x00", documents=["d"]), grpc.StatusCode.INVALID_ARGUMENT, "NUL"),
    (dict(query="q", documents=["x" * 300_000]), grpc.StatusCode.INVALID_ARGUMENT, "max_text_bytes"),
])
def test_rerank_errors(stubs, kw, code, words):
    with pytest.raises(grpc.RpcError) as e:
        rerank(stubs, **kw)
    assert e.value.code() == code
    assert words in e.value.details()
    assert rerank(stubs, query="still up", documents=["yes"]).results  # server unaffected


def test_info(stubs, tiny_ce, server):
    info = stubs.info.Info(info_pb2.InfoRequest(), timeout=10)
    kinds = {m.kind: m for m in info.models}
    assert kinds["reranker"].name == tiny_ce and kinds["reranker"].device == "cpu"
    assert kinds["reranker"].max_seq_length == 128
    # `auto` is measured on this CPU: any option that passes the loss gate (workers/backend_choice.py), as logged.
    for m in info.models:
        assert (m.backend, m.precision) in {("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"),
                                            ("openvino", "bf16"), ("onnxruntime", "fp32")}, m
        assert m.dtype == {"bf16": "bfloat16", "fp32": "float32"}[m.precision]
        assert f"chosen {m.backend} {m.precision} (" in server.log()
        # Info carries the measured table: one option per row, the served one marked, each with the gate's verdict.
        assert "measured" in m.choice or "cached" in m.choice, m.choice
        chosen = [t for t in m.trials if t.chosen]
        assert len(chosen) == 1 and (chosen[0].backend, chosen[0].precision) == (m.backend, m.precision), m.trials
        assert chosen[0].judged and chosen[0].verdict in ("reference", "agrees"), chosen[0]
        assert {(t.backend, t.precision) for t in m.trials} >= {("torch", "fp32")}
    assert kinds["embedder"].dimension == 384 and kinds["embedder"].source.startswith("package:")
    assert info.limits.max_documents_per_request == 256
    assert info.limits.queue_capacity == 512
    assert info.limits.max_batch_size == 32 and info.limits.max_batch_tokens == 1024  # auto on CPU
    assert info.limits.max_concurrent_requests == 512
    assert info.default_reranker == tiny_ce and info.storage == "milvus-lite"
    # No access checks on this server: the caller is nobody in particular, and may do everything.
    assert info.caller.principal == "" and list(info.caller.admin) == ["*"] and list(info.caller.write) == ["*"]


def test_health_per_service(stubs):
    h = health_pb2_grpc.HealthStub(stubs.channel)
    for svc in ["", "tandem.v1.RerankService", "tandem.v1.SearchService", "tandem.v1.IndexService",
                "tandem.v1.EmbedService", "tandem.v1.InfoService"]:
        assert h.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING, svc
    with pytest.raises(grpc.RpcError) as e:
        h.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_streams_the_status(server, stubs):
    """Watch is what gRPC's client-side health checking (round_robin over replicas) calls; it was INTERNAL
    until v0.3 (the interceptor expected a generator), which made every balanced client fail."""
    h = health_pb2_grpc.HealthStub(stubs.channel)
    watches = [h.Watch(health_pb2.HealthCheckRequest(service="tandem.v1.SearchService"), timeout=30)
               for _ in range(3)]
    try:
        for w in watches:
            assert next(w).status == health_pb2.HealthCheckResponse.SERVING
        text = server.metrics_text()
        assert 'tandem_requests_in_flight{method="/grpc.health.v1.Health/Watch"} 3.0' in text
        assert stubs.info.Info(info_pb2.InfoRequest(), timeout=30).default_reranker
    finally:
        for w in watches:
            w.cancel()


def test_reflection_lists_and_describes_services(stubs):
    db = ProtoReflectionDescriptorDatabase(stubs.channel)
    services = set(db.get_services())
    assert {"tandem.v1.RerankService", "tandem.v1.SearchService", "tandem.v1.IndexService",
            "tandem.v1.EmbedService", "tandem.v1.InfoService", "grpc.health.v1.Health"} <= services
    fd = db.FindFileContainingSymbol("tandem.v1.RerankService")
    assert fd.package == "tandem.v1"

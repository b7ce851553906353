"""OpenTelemetry tracing against real OTLP receivers (the collector's gRPC TraceService and its http/protobuf
endpoint, built from opentelemetry-proto): spans join the caller's trace, stages are children of the call, a batch
is one span linked to every request it served, errors and degraded answers say why, tracing off records nothing,
and a collector that goes away neither fails nor slows a call."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import statistics
import time

import grpc
import httpx
import pytest

from tandem.v1 import document_pb2, index_pb2, index_pb2_grpc, rerank_pb2, rerank_pb2_grpc, search_pb2, \
    search_pb2_grpc
from tests.support.otlp import GrpcReceiver, HttpReceiver, traceparent

CALLER_SPAN = "b7ad6b7169203331"
# Spans leave the server within 100 ms of ending, so a test waits for them briefly.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "2"}
DOCS = ["wing stall at low speed", "boundary layer transition on a flat plate", "heat transfer in rocket nozzles"]
REQUESTS = 6


def _trace_id(n: int) -> str:
    return f"{0x4bf92f3577b34da6a3ce929d0e0e4736 + n:032x}"


def _by_name(spans, name):
    return [s for s in spans if s.name == name]


def _one(spans, name):
    found = _by_name(spans, name)
    assert len(found) == 1, f"expected one {name!r} span, got {[(s.name, s.parent) for s in spans]}"
    return found[0]


@pytest.fixture(scope="module")
def grpc_receiver():
    r = GrpcReceiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def traced(make_module_server, tiny_ce, grpc_receiver):
    """Tracing to the gRPC receiver by the flag; an idle reranker waits up to 1 s for a batch to fill, so a burst
    of concurrent requests shares one batch however fast this CPU is."""
    s = make_module_server("--reranker", f"tiny={tiny_ce}", "--otlp-endpoint", grpc_receiver.endpoint,
                           "--max-wait-ms", "1000", env={**FAST_EXPORT, "OTEL_SERVICE_NAME": "tandem-test"})
    with s.channel() as ch:
        index = index_pb2_grpc.IndexServiceStub(ch)
        index.CreateCollection(index_pb2.CreateCollectionRequest(collection="docs"), timeout=60)
        index.Upsert(index_pb2.UpsertRequest(collection="docs", documents=[
            document_pb2.Document(id=str(i), text=t) for i, t in enumerate(DOCS)]), timeout=60)
        yield s, ch


def test_search_with_traceparent_joins_the_callers_trace(traced, grpc_receiver):
    s, ch = traced
    tid = _trace_id(1)
    reply = search_pb2_grpc.SearchServiceStub(ch).Search(
        search_pb2.SearchRequest(collection="docs", query="stall at low speed", top_n=2),
        metadata=[("traceparent", traceparent(tid, CALLER_SPAN)), ("tracestate", "vendor=1")], timeout=60)
    assert len(reply.hits) == 2
    spans = grpc_receiver.trace(tid, lambda sp: {"tandem.v1.SearchService/Search", "compute"} <= {x.name for x in sp}
                                and len(_by_name(sp, "compute")) == 3)
    root = _one(spans, "tandem.v1.SearchService/Search")
    assert root.parent == CALLER_SPAN and root.kind == "SERVER" and root.service == "tandem-test"
    assert root.attributes["rpc.system.name"] == "grpc"
    assert root.attributes["rpc.method"] == "tandem.v1.SearchService/Search"
    assert root.attributes["rpc.response.status_code"] == "OK" and "error.type" not in root.attributes
    assert root.attributes["tandem.collection"] == "docs" and root.attributes["tandem.mode"] == "dense"
    assert root.attributes["tandem.recall_k"] == 100 and root.attributes["tandem.recalled"] == 3
    assert root.attributes["tandem.reranked"] is True and "tandem.degraded_reason" not in root.attributes
    assert root.status == "UNSET"
    stages = {x.name: x for x in spans if x.parent == root.span_id}
    assert set(stages) == {"validate", "embed", "recall", "rerank"}, sorted(stages)
    order = sorted(stages.values(), key=lambda x: x.start_ns)
    assert [x.name for x in order] == ["validate", "embed", "recall", "rerank"]
    assert all(root.start_ns <= x.start_ns and x.end_ns <= root.end_ns for x in order)
    recall = stages["recall"]
    assert recall.attributes["db.system.name"] == "milvus" and recall.attributes["db.operation.name"] == "search"
    assert recall.attributes["db.collection.name"] == "docs" and recall.attributes["tandem.recalled"] == 3
    assert stages["rerank"].attributes["tandem.model"] == "tiny" and stages["rerank"].attributes["tandem.pairs"] == 3
    # Each batched stage waits in a queue and computes in a batch: children of the stage, the compute linked to a
    # batch span that links back to the stage, in a trace of the batch's own.
    for name, kind in (("embed", "embedder"), ("recall", "recall"), ("rerank", "reranker")):
        stage = stages[name]
        kids = {x.name: x for x in spans if x.parent == stage.span_id}
        assert set(kids) == {"queue", "compute"}, (name, sorted(kids))
        assert kids["queue"].end_ns <= kids["compute"].start_ns + 1000
        (batch_ref,) = kids["compute"].links
        batch = grpc_receiver.wait(lambda x: x.span_id == batch_ref[1], what=f"{name} batch")[0]
        assert batch.name == f"{kind} batch" and batch.trace_id == batch_ref[0] != tid and batch.parent == ""
        assert (tid, stage.span_id) in batch.links
        assert batch.attributes["tandem.batch.size"] >= 1 and batch.attributes["tandem.batch.passes"] >= 1
        assert batch.attributes["tandem.batch.compute_seconds"] > 0
    recall_batch = grpc_receiver.wait(lambda x: x.span_id == _by_name(
        [x for x in spans if x.parent == stages["recall"].span_id], "compute")[0].links[0][1])[0]
    assert recall_batch.attributes["db.system.name"] == "milvus"
    assert recall_batch.attributes["db.collection.name"] == "docs"


def test_a_rerank_burst_is_one_batch_span_linked_to_every_request(traced, grpc_receiver):
    s, ch = traced
    stub = rerank_pb2_grpc.RerankServiceStub(ch)
    ids = [_trace_id(100 + i) for i in range(REQUESTS)]
    futures = [stub.Rerank.future(rerank_pb2.RerankRequest(query=f"query {i}", documents=DOCS[:2]), timeout=60,
                                  metadata=[("traceparent", traceparent(t, CALLER_SPAN))]) for i, t in enumerate(ids)]
    assert all(len(f.result().results) == 2 for f in futures)
    stage_of = {}
    batches = set()
    for t in ids:
        spans = grpc_receiver.trace(t, lambda sp: bool(_by_name(sp, "compute")))
        root = _one(spans, "tandem.v1.RerankService/Rerank")
        assert root.parent == CALLER_SPAN
        rerank = _one(spans, "rerank")
        assert rerank.parent == root.span_id
        assert rerank.attributes["tandem.documents"] == 2 and rerank.attributes["tandem.pairs"] == 2
        assert _one(spans, "validate").parent == root.span_id
        compute = _one(spans, "compute")
        assert compute.parent == rerank.span_id and len(compute.links) == 1
        stage_of[t] = rerank.span_id
        batches.add(compute.links[0])
    assert len(batches) == 1, f"the burst rode {len(batches)} batches"
    ((batch_trace, batch_id),) = batches
    batch = grpc_receiver.wait(lambda x: x.span_id == batch_id, what="the burst's batch span")[0]
    assert batch.name == "reranker batch" and batch.trace_id == batch_trace
    assert sorted(batch.links) == sorted((t, stage_of[t]) for t in ids)
    assert batch.attributes["tandem.batch.size"] == 2 * REQUESTS
    assert batch.attributes["tandem.batch.traced_requests"] == REQUESTS
    assert batch.attributes["tandem.model"] == "tiny" and batch.attributes["tandem.batch.padded_tokens"] > 0


def test_an_error_marks_the_span_with_its_status_and_message(traced, grpc_receiver):
    s, ch = traced
    tid = _trace_id(200)
    with pytest.raises(grpc.RpcError) as err:
        rerank_pb2_grpc.RerankServiceStub(ch).Rerank(rerank_pb2.RerankRequest(query="", documents=["x"]),
                                                     metadata=[("traceparent", traceparent(tid, CALLER_SPAN))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    spans = grpc_receiver.trace(tid, lambda sp: bool(_by_name(sp, "tandem.v1.RerankService/Rerank")))
    root = _one(spans, "tandem.v1.RerankService/Rerank")
    assert root.attributes["rpc.response.status_code"] == "INVALID_ARGUMENT"
    assert root.attributes["error.type"] == "INVALID_ARGUMENT" and root.status == "UNSET"
    validate = _one(spans, "validate")
    assert validate.status == "ERROR" and "query is empty" in validate.message
    assert "exception" in validate.events
    assert not _by_name(spans, "rerank")  # the call stopped at validation

    # NOT_FOUND is the caller's error too: named on the span, whose status stays unset (gRPC's conventions mark
    # ERROR only for a server's faults, such as UNAVAILABLE or INTERNAL).
    tid = _trace_id(201)
    with pytest.raises(grpc.RpcError) as err:
        rerank_pb2_grpc.RerankServiceStub(ch).Rerank(rerank_pb2.RerankRequest(query="q", documents=["x"],
                                                                              model="nope"),
                                                     metadata=[("traceparent", traceparent(tid, CALLER_SPAN))])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    root = _one(grpc_receiver.trace(tid, lambda sp: bool(sp)), "tandem.v1.RerankService/Rerank")
    assert root.attributes["rpc.response.status_code"] == "NOT_FOUND" and root.status == "UNSET"


def test_a_call_without_traceparent_starts_its_own_trace_and_probes_make_none(traced, grpc_receiver):
    s, ch = traced
    stub = rerank_pb2_grpc.RerankServiceStub(ch)
    stub.Rerank(rerank_pb2.RerankRequest(query="untraced caller", documents=["a"]), timeout=60)
    root = grpc_receiver.wait(lambda x: x.name == "tandem.v1.RerankService/Rerank" and x.parent == "" and
                              x.attributes.get("rpc.response.status_code") == "OK", what="a root Rerank span")[0]
    assert root.kind == "SERVER"
    s.wait_ready(10)  # a health probe
    time.sleep(0.5)
    assert not [x for x in grpc_receiver.spans if "Health" in x.name or "reflection" in x.name]


# -- http/protobuf, HTTP headers, a degraded Search, and a collector that goes away -------------------------------

@pytest.fixture(scope="module")
def http_receiver():
    r = HttpReceiver()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def recall_only(make_module_server, http_receiver):
    """Recall-only (a Search degrades), tracing by the standard variables over http/protobuf."""
    s = make_module_server("--reranker", "none", env={
        **FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    with s.channel() as ch:
        index_pb2_grpc.IndexServiceStub(ch).CreateCollection(index_pb2.CreateCollectionRequest(collection="docs"),
                                                             timeout=60)
        index_pb2_grpc.IndexServiceStub(ch).Upsert(index_pb2.UpsertRequest(collection="docs", documents=[
            document_pb2.Document(id=str(i), text=t) for i, t in enumerate(DOCS)]), timeout=60)
    return s


def _search_http(s, tid: str, timeout: float = 60):
    return httpx.post(f"{s.http_url}/tandem.v1.SearchService/Search", json={"collection": "docs", "query": "stall"},
                      headers={"traceparent": traceparent(tid, CALLER_SPAN)}, timeout=timeout)


def test_http_headers_carry_the_trace_and_a_degraded_search_says_why(recall_only, http_receiver):
    tid = _trace_id(300)
    r = _search_http(recall_only, tid)
    assert r.status_code == 200, r.text
    assert r.json()["degradedReason"].startswith("rerank skipped because no reranker is loaded")
    spans = http_receiver.trace(tid, lambda sp: bool(_by_name(sp, "rerank")) and
                                bool(_by_name(sp, "POST /tandem.v1.SearchService/Search")))
    root = _one(spans, "POST /tandem.v1.SearchService/Search")
    assert root.parent == CALLER_SPAN and root.kind == "SERVER" and root.service == "tandem"
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/tandem.v1.SearchService/Search"
    assert root.attributes["http.response.status_code"] == 200
    assert root.attributes["rpc.system.name"] == "connect_rpc"
    assert root.attributes["tandem.reranked"] is False
    assert root.attributes["tandem.degraded_reason"] == r.json()["degradedReason"]
    rerank = _one(spans, "rerank")
    assert rerank.parent == root.span_id and rerank.status == "ERROR"
    assert rerank.message == r.json()["degradedReason"] and rerank.attributes["tandem.skipped"] == "no_reranker"
    assert {"validate", "embed", "recall"} <= {x.name for x in spans if x.parent == root.span_id}

    # A dialect route, and its error envelope: a 4xx marks error.type, not the span's status (the caller's fault).
    tid = _trace_id(301)
    r = httpx.post(f"{recall_only.http_url}/v1/embeddings", json={"input": "", "model": "x"}, timeout=60,
                   headers={"traceparent": traceparent(tid, CALLER_SPAN)})
    assert r.status_code in (400, 404, 422), r.text
    root = _one(http_receiver.trace(tid, lambda sp: bool(_by_name(sp, "POST /v1/embeddings"))), "POST /v1/embeddings")
    assert root.attributes["http.response.status_code"] == r.status_code
    assert root.attributes["error.type"] == str(r.status_code) and root.status == "UNSET"


def test_a_collector_that_goes_away_neither_fails_nor_slows_calls(recall_only, http_receiver):
    def timed(n: int, base: int) -> list[float]:
        out = []
        for i in range(n):
            t0 = time.perf_counter()
            r = _search_http(recall_only, _trace_id(base + i), timeout=30)
            assert r.status_code == 200, r.text
            out.append(time.perf_counter() - t0)
        return out

    before = timed(10, 400)
    http_receiver.wait(lambda x: x.trace_id == _trace_id(409), what="the last span before the collector goes")
    port = http_receiver.port
    http_receiver.stop()
    # Worse than a refused connection: a port that accepts and never answers, so every export waits out its timeout.
    hole = socket.socket()
    hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hole.bind(("127.0.0.1", port))
    hole.listen(512)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # spans pile up faster than they can leave
            after = [t for chunk in pool.map(lambda k: timed(10, 500 + 10 * k), range(4)) for t in chunk]
        assert max(after) < 10, f"a call took {max(after):.1f}s while the collector hung"
        # Medians, with a margin for a busy machine: an exporter in the calls' way would add whole seconds.
        assert statistics.median(after) < max(1.0, 5 * statistics.median(before)), (before, after)
        t0 = time.monotonic()
        assert recall_only.terminate() == 0
        assert time.monotonic() - t0 < 30, "the stop waited on the collector"
    finally:
        hole.close()
    assert "Traceback" not in recall_only.log().split("SIGTERM")[0]


# -- tracing off --------------------------------------------------------------------------------------------------

def test_tracing_off_creates_no_exporter_and_records_no_span(server):
    """The shared server runs without an endpoint: it never turned tracing on. In-process: with no endpoint the SDK
    is not set up, and stages are a no-op; the batcher, with an SDK span processor installed, records nothing for a
    call that is not traced, and for a traced one its queue, compute and batch spans, linked both ways."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from tandem.server import tracing
    from tandem.workers import Batcher, BatchLimits
    from tandem.workers import tracing as work_spans

    assert "tracing on" not in server.log()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_SDK_DISABLED": "true"}
    assert tracing.endpoint("", env) == "" and tracing.endpoint("http://x:4317", env) == ""
    assert tracing.endpoint("", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}) == ""
    assert tracing.endpoint("", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}) == \
        "http://c:4318/v1/traces"
    with pytest.raises(ValueError, match="http/json"):
        tracing.protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("OTEL_")}
    try:
        assert tracing.setup("", "0") is False
    finally:
        os.environ.update(saved)
    assert tracing.ON is False and tracing._provider is None and work_spans.request_context() is None
    assert tracing.open_rpc("/tandem.v1.RerankService/Rerank", [("traceparent", traceparent(_trace_id(1), CALLER_SPAN))],
                            "ipv4:127.0.0.1:1") is None
    with tracing.stage("validate") as span:
        assert span.is_recording() is False

    exporter = InMemorySpanExporter()
    work_spans.install(SimpleSpanProcessor(exporter).on_end, Resource.create({}), InstrumentationScope("test"))

    class Lengths:  # a backend whose answer is each text's length: the batcher is what is under test
        name = kind = "lengths"
        max_length = 0
        pass_cost = None

        def measure(self, payloads, inline=False):
            return [1] * len(payloads)

        def run(self, payloads):
            return [len(p) for p in payloads]

    async def go():
        b = Batcher("lengths", Lengths(), BatchLimits(max_batch_size=8))
        b.start()
        try:
            untraced, _ = await b.submit(["ab", "abc"])
            assert untraced == [2, 3] and exporter.get_finished_spans() == ()
            with work_spans.Span("caller", None) as caller:
                traced, _ = await b.submit(["abcd"])
            assert traced == [4]
            return caller.context
        finally:
            await b.stop()

    try:
        caller = asyncio.run(go())
    finally:
        work_spans.uninstall()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"caller", "queue", "compute", "lengths batch"}
    assert spans["queue"].parent.span_id == spans["compute"].parent.span_id == caller.span_id
    assert spans["queue"].context.trace_id == caller.trace_id != spans["lengths batch"].context.trace_id
    assert [ln.context.span_id for ln in spans["lengths batch"].links] == [caller.span_id]
    assert [ln.context.span_id for ln in spans["compute"].links] == [spans["lengths batch"].context.span_id]
    assert spans["lengths batch"].attributes["tandem.batch.size"] == 1
    assert spans["queue"].start_time <= spans["queue"].end_time <= spans["compute"].end_time

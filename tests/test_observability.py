"""Metrics: the /metrics endpoint under load, and a real Prometheus server scraping it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest

from tandem.v1 import document_pb2, index_pb2, rerank_pb2, search_pb2
from tests.support.http import call
from tests.support.metricsparse import histogram_buckets, samples, value
from tests.support.serverproc import free_port

COLL = "obs"


def _load(stubs, n=32):
    docs = [f"document number {i} about wings and boundary layers" for i in range(12)]
    futures = [stubs.rerank.Rerank.future(rerank_pb2.RerankRequest(query=f"q{i}", documents=docs[: 1 + i % 12]),
                                          timeout=60) for i in range(n)]
    futures += [stubs.search.Search.future(search_pb2.SearchRequest(collection=COLL, query=f"wing {i}", top_n=3,
                                                                    recall_k=10), timeout=60) for i in range(16)]
    for f in futures:
        f.result()


@pytest.fixture(scope="module")
def loaded(stubs):
    try:
        stubs.index.CreateCollection(index_pb2.CreateCollectionRequest(collection=COLL), timeout=30)
    except grpc.RpcError as e:  # the shared server may have it from an earlier module; nothing else will do
        assert e.code() == grpc.StatusCode.ALREADY_EXISTS, (e.code(), e.details())
    stubs.index.Upsert(index_pb2.UpsertRequest(collection=COLL, documents=[
        document_pb2.Document(id=str(i), text=f"wing section {i} in a slipstream") for i in range(30)]), timeout=60)
    _load(stubs)
    return stubs


def test_metrics_endpoint_shows_every_family(server, loaded):
    text = server.metrics_text()
    rerank = "/tandem.v1.RerankService/Rerank"
    assert value(text, "tandem_requests_total", method=rerank, code="OK") >= 32
    assert histogram_buckets(text, "tandem_request_duration_seconds", method=rerank, code="OK")[float("inf")] >= 32
    assert samples(text, "tandem_requests_in_flight", method=rerank)
    assert value(text, "tandem_requests_total", method="/tandem.v1.IndexService/Upsert", code="OK") >= 1
    for stage in ("embed", "recall", "rerank"):
        assert value(text, "tandem_search_stage_duration_seconds_count", stage=stage) >= 16, stage
    for worker in ("reranker", "embedder", "recall"):
        for name in ("tandem_queue_wait_seconds_count", "tandem_batch_size_count", "tandem_batch_tokens_count",
                     "tandem_batch_compute_seconds_count"):
            assert value(text, name, worker=worker) > 0, (name, worker)
        assert samples(text, "tandem_queue_depth", worker=worker)
        assert value(text, "tandem_queue_capacity", worker=worker) > 0
        for reason in ("cancelled", "deadline", "overload"):
            assert samples(text, "tandem_dropped_items_total", worker=worker, reason=reason)
    b = histogram_buckets(text, "tandem_batch_size", worker="reranker")
    assert sorted(b) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, float("inf")]
    assert b[float("inf")] > b[1.0]
    kinds = {l["kind"]: l for l, v in samples(text, "tandem_model_info") if v == 1}
    assert kinds["reranker"]["device"] == "cpu" and kinds["embedder"]["model"].endswith("all-MiniLM-L6-v2")
    assert value(text, "process_resident_memory_bytes") > 0
    # No user strings in labels: every method label is a real RPC path or a route the HTTP server lists.
    routes = set(call(server.http_url + "/openapi.json").body["paths"]) | {"/openapi.json"}
    methods = {l["method"] for l, _ in samples(text, "tandem_requests_total")}
    assert all(m.startswith(("/tandem.v1.", "/grpc.")) or m in routes for m in methods), methods
    call(server.http_url + "/no/such/route")
    after = {l["method"] for l, _ in samples(server.metrics_text(), "tandem_requests_total")}
    assert "/no/such/route" not in after


def _query(port: int, promql: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def _scalar(port, promql) -> float:
    r = _query(port, promql)
    return float(r[0]["value"][1]) if r else 0.0


def test_real_prometheus_scrapes_live_server(server, loaded, tmp_path):
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("the prometheus binary is not installed; enable with: sudo apt-get install prometheus")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: tandem
    static_configs:
      - targets: ["127.0.0.1:{server.metrics_port}"]
""")
    proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "wb"))
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if _query(port, 'up{job="tandem"} == 1'):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus never scraped Tandem:\n" + (tmp_path / "prom.log").read_text()[-2000:])
        rerank = 'method="/tandem.v1.RerankService/Rerank",code="OK"'
        before = _scalar(port, f"sum(tandem_requests_total{{{rerank}}})")
        _load(loaded)
        time.sleep(3)  # a few scrapes
        after = _scalar(port, f"sum(tandem_requests_total{{{rerank}}})")
        assert after >= before + 32
        assert _scalar(port, f"sum(increase(tandem_requests_total{{{rerank}}}[30s]))") > 0
        above_one = _scalar(port, 'sum(tandem_batch_size_bucket{worker="reranker",le="+Inf"}) - '
                                  'sum(tandem_batch_size_bucket{worker="reranker",le="1.0"})')
        assert above_one > 0
        stages = {r["metric"]["stage"] for r in _query(port, "tandem_search_stage_duration_seconds_count > 0")}
        assert stages == {"embed", "recall", "rerank"}
        p99 = _scalar(port, 'histogram_quantile(0.99, sum by (le) (rate(tandem_request_duration_seconds_bucket'
                            '{method="/tandem.v1.RerankService/Rerank"}[30s])))')
        assert 0 < p99 < 30
    finally:
        proc.terminate()
        proc.wait(10)

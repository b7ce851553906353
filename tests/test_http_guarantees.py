"""The HTTP side keeps gRPC's guarantees: bad input gets the dialect's envelope and nothing breaks, every route
but health needs a token (checked route by route from the server's own OpenAPI list), the concurrency limit is
shared, a client that disconnects drops its queued work, and shutdown turns /health to 503 before the port
closes."""

from __future__ import annotations

import signal
import socket
import threading
import time

import grpc
import pytest

from tandem.v1 import index_pb2_grpc
from tests.support.http import call
from tests.support.metricsparse import value
from tests.support.serverproc import REFERENCE_RERANKER

DOCS = ["wing stall at high incidence", "hypersonic heat transfer", "laminar boundary layer"]
COHERE = lambda b: isinstance(b, dict) and isinstance(b.get("message"), str) and b["message"]  # noqa: E731
OPENAI = lambda b: isinstance(b, dict) and isinstance(b.get("error"), dict) and b["error"]["message"]  # noqa: E731
TEI = lambda b: isinstance(b, dict) and isinstance(b.get("error"), str) and b.get("error_type")  # noqa: E731
CONNECT = lambda b: isinstance(b, dict) and b.get("code") and b.get("message")  # noqa: E731

HOSTILE = [
    # (path, raw body or JSON, content type, status, envelope, words)
    ("/v2/rerank", b"{not json", "application/json", 400, COHERE, "not valid JSON"),
    ("/v2/rerank", {"query": "q", "documents": "a string"}, None, 422, COHERE, "documents"),
    ("/v2/rerank", {"query": "q", "documents": [1, 2]}, None, 422, COHERE, "documents.0"),
    ("/v2/rerank", {"query": "", "documents": DOCS}, None, 400, COHERE, "query is empty"),
    ("/v2/rerank", {"query": "q", "documents": DOCS, "model": "nope"}, None, 404, COHERE, "not loaded"),
    ("/v2/rerank", {"query": "q", "documents": DOCS, "top_n": -1}, None, 422, COHERE, "top_n"),
    ("/v2/rerank", {"query": "q", "documents": DOCS}, "text/plain", 415, COHERE, "content-type"),
    ("/v1/rerank", {"query": "q\u0000", "documents": DOCS}, None, 400, COHERE, "NUL"),
    ("/v1/rerank", {"query": "q", "documents": []}, None, 400, COHERE, "documents is empty"),
    # Half a surrogate pair, which JSON can escape alone: no character, and a tokenizer fails on it (was a 500).
    ("/v1/rerank", b'{"query": "q\\ud800", "documents": ["x"]}', "application/json", 400, COHERE,
     "query holds an unpaired surrogate (U+D800 at character 1)"),
    ("/v2/rerank", b'{"query": "q", "documents": ["x", "\\udfff"]}', "application/json", 400, COHERE,
     "documents[1] holds an unpaired surrogate"),
    ("/embed", b'{"inputs": ["\\ud83d"]}', "application/json", 400, TEI, "texts[0] holds an unpaired surrogate"),
    ("/v1/embeddings", b'{"input": "a\\ud800b"}', "application/json", 400, OPENAI, "unpaired surrogate"),
    ("/rerank", b"[", "application/json", 400, OPENAI, "not JSON"),
    ("/rerank", {"query": "q", "documents": [{"txt": "a"}]}, None, 422, OPENAI, "documents"),
    ("/rerank", {"query": "q", "texts": [{"a": 1}]}, None, 422, TEI, "texts"),
    ("/rerank", {"query": " ", "texts": DOCS}, None, 400, TEI, "query is empty"),
    ("/embed", {"inputs": ""}, None, 400, TEI, "is empty"),
    ("/embed", {"inputs": 5}, None, 422, TEI, "inputs"),
    ("/v1/embeddings", {"input": ["a"], "model": "nope"}, None, 404, OPENAI, "not loaded"),
    ("/v1/embeddings", {"input": ["a"], "encoding_format": "hex"}, None, 422, OPENAI, "encoding_format"),
    ("/v1/embeddings", {}, None, 422, OPENAI, "input"),
    ("/tandem.v1.RerankService/Rerank", b"{bad", "application/json", 400, CONNECT, "not a tandem.v1"),
    ("/tandem.v1.RerankService/Rerank", {"query": "q", "documents": DOCS, "topN": "many"}, None, 400, CONNECT,
     "not a tandem.v1"),
    ("/tandem.v1.RerankService/Rerank", b"\xff\xff", "application/proto", 400, CONNECT, "not a tandem.v1"),
    ("/tandem.v1.IndexService/CreateCollection", {"collection": "bad name"}, None, 400, CONNECT, "valid name"),
]


@pytest.mark.parametrize("path, body, ctype, status, envelope, words", HOSTILE,
                         ids=[f"{h[0]}-{h[3]}-{i}" for i, h in enumerate(HOSTILE)])
def test_bad_input_gets_the_dialects_envelope(server, path, body, ctype, status, envelope, words):
    raw = body if isinstance(body, bytes) else None
    r = call(server.http_url + path, None if raw else body, raw=raw, content_type=ctype or "application/json")
    assert r.status == status, (r.status, r.body)
    assert envelope(r.body), r.body
    assert words in r.text, r.body


def test_server_serves_after_the_hostile_table(server):
    r = call(server.http_url + "/v2/rerank", {"query": "wing stall", "documents": DOCS})
    assert r.status == 200 and len(r.body["results"]) == 3
    metrics = server.metrics_text()
    assert value(metrics, "tandem_requests_total", method="/v2/rerank", code="INVALID_ARGUMENT") >= 5
    assert value(metrics, "tandem_requests_total", method="/v2/rerank", code="OK") >= 1


@pytest.fixture(scope="module")
def guarded(make_module_server, tiny_ce):
    return make_module_server("--reranker", tiny_ce, "--auth-tokens", "t0ken", "--warmup", "false",
                              "--max-message-bytes", str(1 << 20))


def test_a_body_over_the_limit_is_413_with_or_without_content_length(guarded):
    import http.client

    big = {"query": "q", "documents": ["x" * 600_000, "y" * 600_000]}
    r = call(guarded.http_url + "/v2/rerank", big, token="t0ken")
    assert r.status == 413 and COHERE(r.body) and "max_message_bytes" in r.body["message"], (r.status, r.body)
    host, port = guarded.http_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = b'{"query": "q", "documents": ["' + b"z" * 1_200_000 + b'"]}'
    conn.request("POST", "/v1/embeddings", body=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                 headers={"content-type": "application/json", "authorization": "Bearer t0ken"}, encode_chunked=True)
    resp = conn.getresponse()
    payload = resp.read()
    assert resp.status == 413 and b"max_message_bytes" in payload, (resp.status, payload)
    assert call(guarded.http_url + "/v2/rerank", {"query": "q", "documents": ["a"]}, token="t0ken").status == 200


def test_every_route_but_health_needs_a_token(guarded):
    url = guarded.http_url
    assert call(url + "/openapi.json").status == 401
    doc = call(url + "/openapi.json", token="t0ken")
    assert doc.status == 200
    routes = [(m.upper(), p) for p, ops in doc.body["paths"].items() for m in ops]
    assert len(routes) >= 15, routes
    for method, path in routes + [("GET", "/openapi.json")]:
        body = {} if method == "POST" else None
        for token in (None, "wrong"):
            r = call(url + path, body, method=method, token=token)
            if path == "/health":
                assert r.status == 200, (path, r.status)
            else:
                assert r.status == 401, (method, path, token, r.status, r.body)
                assert "Bearer <token>" in r.text
        with_token = call(url + path, body, method=method, token="t0ken")
        assert with_token.status != 401, (method, path, with_token.body)


def test_a_disconnected_client_drops_its_queued_work(make_server, minilm_ce):
    s = make_server("--reranker", minilm_ce, *REFERENCE_RERANKER, "--warmup", "false", "--max-batch-pairs", "8")
    url = s.http_url
    docs = [f"document {i} about the flow past a circular cylinder at moderate reynolds numbers" * 4
            for i in range(256)]
    before = value(s.metrics_text(), "tandem_dropped_items_total", worker="reranker", reason="cancelled")
    host, port = url.removeprefix("http://").split(":")
    body = ('{"query": "cylinder flow", "documents": [%s]}' % ", ".join(f'"{d}"' for d in docs)).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v2/rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n" % len(body) + body)
        end = time.monotonic() + 60  # until its pairs wait in the reranker's queue, however slow the CPU
        while time.monotonic() < end and not value(s.metrics_text(), "tandem_queue_depth", worker="reranker"):
            time.sleep(0.05)
    end = time.monotonic() + 60
    dropped = before
    while time.monotonic() < end and dropped <= before:
        time.sleep(0.2)
        dropped = value(s.metrics_text(), "tandem_dropped_items_total", worker="reranker", reason="cancelled")
    assert dropped > before, "the queued pairs of a gone client were not dropped"
    assert value(s.metrics_text(), "tandem_requests_total", method="/v2/rerank", code="CANCELLED") == 1


def test_the_concurrency_limit_is_shared_with_grpc(make_server, tiny_ce):
    s = make_server("--reranker", tiny_ce, "--warmup", "false", "--max-concurrent-requests", "1")
    release = threading.Event()

    def held_stream():
        # A gRPC UpsertStream that sends nothing until released: in flight for as long as the test needs,
        # however fast this CPU is.
        release.wait(120)
        yield from ()

    failed = []

    def grpc_call():
        with s.channel() as ch:
            try:
                index_pb2_grpc.IndexServiceStub(ch).UpsertStream(held_stream(), timeout=300)
            except grpc.RpcError as exc:
                failed.append(exc.code())

    t = threading.Thread(target=grpc_call)
    t.start()
    try:
        end = time.monotonic() + 60  # until the gRPC call is in flight
        while time.monotonic() < end and not value(s.metrics_text(), "tandem_requests_in_flight",
                                                   method="/tandem.v1.IndexService/UpsertStream"):
            time.sleep(0.05)
        r = call(s.http_url + "/v2/rerank", {"query": "q", "documents": DOCS})
        assert r.status == 429 and r.headers.get("retry-after") == "1", (r.status, r.body)
        assert "max_concurrent_requests" in r.body["message"]
    finally:
        release.set()
        t.join(300)
    assert failed == [grpc.StatusCode.INVALID_ARGUMENT]  # the empty stream, once released: it was admitted
    assert call(s.http_url + "/v2/rerank", {"query": "q", "documents": DOCS}).status == 200


def test_http_port_zero_turns_http_off(make_server, tiny_ce):
    s = make_server("--reranker", tiny_ce, "--warmup", "false", "--http-port", "0")
    with pytest.raises(OSError):
        call(s.http_url + "/health", timeout=5)
    with s.channel() as ch:
        grpc.channel_ready_future(ch).result(timeout=30)


def test_shutdown_turns_health_to_503_while_routes_still_serve(make_server, tiny_ce):
    # A drain delay far longer than any wait below, so the checks fall inside it on a slow or busy machine; a
    # second SIGTERM then ends it, so the test waits for the checks, not for the delay.
    s = make_server("--reranker", tiny_ce, "--warmup", "false", "--drain-delay-seconds", "600")
    assert call(s.http_url + "/health").status == 200
    s.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + 15
    health = 200
    while time.monotonic() < end and health == 200:
        health = call(s.http_url + "/health", timeout=5).status
        time.sleep(0.05)
    assert health == 503
    r = call(s.http_url + "/v2/rerank", {"query": "q", "documents": DOCS})
    assert r.status == 200, "requests are still served during the drain delay"
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(120) == 0 and "SIGTERM again: ending the drain delay now" in s.log()


def test_an_http_port_in_use_fails_start_up_with_what_to_do(tmp_path):
    import subprocess
    import sys

    from tests.support.checkpoints import bundled_encoder
    from tests.support.serverproc import REPO, free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "tandem.server.cli", "serve", "--reranker", "none",
                            "--embedder", bundled_encoder(), "--backend", "torch", "--warmup", "false",
                            "--host", "127.0.0.1", "--port", str(free_port()), "--metrics-port", "-1",
                            "--http-host", "127.0.0.1", "--http-port", str(port), "--milvus-uri",
                            str(tmp_path / "m.db")], cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"cannot listen for HTTP on 127.0.0.1:{port}" in r.stderr and "--http-port 0" in r.stderr

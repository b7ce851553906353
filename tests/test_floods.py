"""Connections that never finish (issue 36): HTTP requests that stop half-way and gRPC client streams that never
send are ended after --stall-timeout-seconds with a status a person can read, other clients are served meanwhile,
HTTP connections beyond --max-http-connections get 503 at once, and one gRPC connection runs at most
--max-streams-per-connection calls at a time."""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest

from tandem.v1 import index_pb2, index_pb2_grpc
from tests.support.http import call
from tests.support.metricsparse import value

STALL, CAP, STREAMS = 5, 40, 8
DOCS = ["wing stall at high incidence", "hypersonic heat transfer"]


@pytest.fixture(scope="module")
def guarded(make_module_server, tiny_ce):
    return make_module_server("--reranker", tiny_ce, "--warmup", "false", "--stall-timeout-seconds", str(STALL),
                              "--max-http-connections", str(CAP), "--max-streams-per-connection", str(STREAMS))


def _open(port: int, first: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    if first:
        s.sendall(first)
    return s


def _answer(s: socket.socket) -> bytes:
    """What the server sends before it closes the connection (b"" when it only closes it)."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return out


def test_http_requests_that_stop_half_way_get_408_and_others_are_served(guarded):
    before = value(guarded.metrics_text(), "tandem_stalled_connections_total", transport="http")
    port = guarded.http_port
    body = b'{"query": "q", "documents": ["a"]}'
    stalls = (
        [_open(port) for _ in range(5)]  # connect, send nothing
        + [_open(port, b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Ty") for _ in range(10)]  # half the headers
        + [_open(port, b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]) for _ in range(10)]  # half a body
    )
    started = time.monotonic()
    r = call(guarded.http_url + "/v1/rerank", {"query": "wing stall", "documents": DOCS})
    served_in = time.monotonic() - started
    assert r.status == 200 and len(r.body["results"]) == 2  # served while 25 connections stall
    answers = [_answer(s) for s in stalls]
    waited = time.monotonic() - started
    assert all(a.startswith(b"HTTP/1.1 408 ") and b"did not arrive within 5s" in a for a in answers), answers[:3]
    assert waited >= STALL - 1  # not before the timeout
    after = value(guarded.metrics_text(), "tandem_stalled_connections_total", transport="http")
    assert after - before == len(stalls)
    print(f"a request beside 25 stalled connections answered in {served_in * 1000:.0f} ms; stalls closed after "
          f"{waited:.1f} s")


def test_a_slow_but_steady_body_is_not_a_stall(guarded):
    """Each part of the body within the timeout: the request is served however long it takes in all."""
    port = guarded.http_port
    body = b'{"query": "wing stall", "documents": ["a wing", "a cone"]}'
    s = _open(port, b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    parts = [body[i:i + 12] for i in range(0, len(body), 12)]
    for p in parts:  # about 6 s in all, each gap 1 s against a 5 s stall timeout
        s.sendall(p)
        time.sleep(1.0)
    answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_http_connections_beyond_the_cap_get_503_at_once(guarded):
    held = [_open(guarded.http_port) for _ in range(CAP)]
    try:
        r = call(guarded.http_url + "/v1/rerank", {"query": "q", "documents": DOCS}, timeout=30)
        assert r.status == 503, (r.status, r.body)
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)
    r = call(guarded.http_url + "/v1/rerank", {"query": "q", "documents": DOCS}, timeout=30)
    assert r.status == 200  # room again once they are gone


def _in_flight(server, method: str) -> float:
    return value(server.metrics_text(), "tandem_requests_in_flight", method=method)


def test_grpc_streams_that_never_send_end_and_one_connection_runs_a_bounded_number(guarded):
    method = "/tandem.v1.IndexService/UpsertStream"
    release = threading.Event()

    def silent():  # a client stream that opens and sends nothing
        release.wait(120)
        return
        yield

    n = STREAMS + 4
    with guarded.channel() as ch:
        index = index_pb2_grpc.IndexServiceStub(ch)
        calls = [index.UpsertStream.future(silent(), timeout=120) for _ in range(n)]
        seen = []
        end = time.monotonic() + 60
        while time.monotonic() < end and (not seen or seen[-1] < STREAMS):
            seen.append(_in_flight(guarded, method))
            time.sleep(0.1)
        assert seen[-1] == STREAMS and max(seen) <= STREAMS, seen  # the rest wait on the client's side
        # Another connection is served meanwhile (the admission slots the streams hold are few).
        with grpc.insecure_channel(guarded.target, options=[("grpc.use_local_subchannel_pool", 1)]) as other:
            info = index_pb2_grpc.IndexServiceStub(other).ListCollections(index_pb2.ListCollectionsRequest(),
                                                                          timeout=30)
        assert info is not None
        codes = []
        for f in calls:
            try:
                f.result(timeout=120)
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append((e.code(), e.details()))
        release.set()
    stalled = [c for c in codes if c != "OK" and c[0] == grpc.StatusCode.DEADLINE_EXCEEDED
               and "--stall-timeout-seconds" in c[1]]
    # Beyond the cap a stream waits on the client, or is refused (RST_STREAM REFUSED_STREAM: UNAVAILABLE, which
    # clients retry); none is served past it and none ends any other way.
    refused = [c for c in codes if c != "OK" and c[0] == grpc.StatusCode.UNAVAILABLE]
    assert len(stalled) >= STREAMS and len(stalled) + len(refused) == n, [c for c in codes if c not in stalled]
    assert _in_flight(guarded, method) == 0  # every slot given back
    assert value(guarded.metrics_text(), "tandem_stalled_connections_total", transport="grpc") >= len(stalled)


def test_a_grpc_connection_that_never_speaks_is_closed(guarded):
    s = _open(guarded.port)  # TCP only: no HTTP/2 preface
    s.settimeout(60)
    closed = False
    try:
        while s.recv(65536):  # the server's own SETTINGS may come first
            pass
        closed = True
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    finally:
        s.close()
    assert closed, "the server kept a connection that never sent the HTTP/2 preface for 60 s"

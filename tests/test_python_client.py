"""tandem.Client and tandem.AsyncClient against live servers: every method, filters, errors, retries across a
server restart, overload retries for idempotent calls only, tokens and TLS."""

from __future__ import annotations

import json
import threading
import time

import grpc
import pytest

from tandem import AsyncClient, Client, Document, F, TandemError
from tests.support.data import load_beir
from tests.support.serverproc import REFERENCE_RERANKER, ServerProcess


def _docs(n: int = 150) -> list[dict]:
    corpus = load_beir("cranfield", limit=n)[0]
    return [{"id": d["_id"], "text": f"{d['title']} {d['text']}".strip(),
             "metadata": {"n": int(d["_id"]), "parity": "even" if int(d["_id"]) % 2 == 0 else "odd"}}
            for d in corpus]


def test_client_does_everything_a_user_needs(server):
    docs = _docs()
    with Client(server.target, timeout=120) as c:
        info = c.create_collection("pyclient")
        assert info.collection == "pyclient" and info.dimension == 384
        assert c.upsert("pyclient", docs, batch_size=64) == 150  # three stream messages
        assert c.upsert("pyclient", [Document("extra", "an extra document", {"n": 9999})]) == 1
        assert "pyclient" in c.collections()
        assert c.describe("pyclient").documents == 151

        hits = c.search("pyclient", docs[3]["text"][:120], top_n=5)
        assert len(hits) == 5 and hits.reranked and hits[0].score >= hits[-1].score
        assert all(isinstance(h.metadata, dict) and h.text and h.id for h in hits)
        assert docs[3]["id"] in [h.id for h in c.search("pyclient", docs[3]["text"][:120], top_n=5, rerank=False)]

        f = (F("n") >= 100) & (F("parity") == "even")
        hits = c.search("pyclient", "flow", top_n=10, mode="hybrid", filter=f)
        assert hits and all(h.metadata["n"] >= 100 and h.metadata["parity"] == "even" for h in hits)
        hits = c.search("pyclient", "flow", top_n=10, filter={"parity": "odd"}, rerank=False)
        assert hits and all(h.metadata["parity"] == "odd" for h in hits)
        hits = c.search("pyclient", "flow", top_n=10, mode="sparse",
                        filter=(F("n") < 10) | F("n").isin([50, 51]))
        assert hits and all(h.metadata["n"] < 10 or h.metadata["n"] in (50, 51) for h in hits)
        hits = c.search("pyclient", "flow", top_n=10, filter=~F("parity").exists(), rerank=False)
        assert [h.id for h in hits] == ["extra"]

        results = c.rerank("heat transfer", ["heat transfer in a boundary layer", "library science", "x"], top_n=2)
        assert len(results) == 2 and results[0].score >= results[1].score
        assert {r.index for r in results} <= {0, 1, 2} and results.model
        vectors = c.embed(["one", "two"])
        assert len(vectors) == 2 and len(vectors[0]) == 384

        assert c.delete("pyclient", ["extra", docs[0]["id"]]) == 2
        assert c.describe("pyclient").documents == 149
        with pytest.raises(TandemError) as e:
            c.search("no_such_collection", "q")
        assert e.value.code == grpc.StatusCode.NOT_FOUND and "no_such_collection" in e.value.message
        with pytest.raises(TandemError) as e:
            c.create_collection("pyclient")
        assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
        c.drop_collection("pyclient")
        assert "pyclient" not in c.collections()
    with pytest.raises(ValueError):
        ((F("a") == 1) | (F("b") == 2)) & ((F("c") == 3) | (F("d") == 4))  # two any-groups: not expressible


async def test_async_client_does_the_same(server):
    docs = _docs(80)
    async with AsyncClient(server.target, timeout=120) as c:
        await c.create_collection("pyasync")
        assert await c.upsert("pyasync", docs, batch_size=32) == 80
        assert await c.upsert("pyasync", docs[:2]) == 2
        assert (await c.describe("pyasync")).documents == 80
        assert "pyasync" in await c.collections()
        hits = await c.search("pyasync", docs[5]["text"][:120], top_n=3, filter=F("parity") == "odd")
        assert len(hits) == 3 and all(h.metadata["parity"] == "odd" for h in hits)
        results = await c.rerank("q", ["a", "b", "c"])
        assert sorted(r.index for r in results) == [0, 1, 2]
        assert len((await c.embed(["t"]))[0]) == 384
        assert await c.delete("pyasync", [docs[0]["id"]]) == 1
        with pytest.raises(TandemError) as e:
            await c.rerank("q", ["d"], model="nope")
        assert e.value.code == grpc.StatusCode.NOT_FOUND and "nope" in e.value.message
        await c.drop_collection("pyasync")


def test_calls_survive_a_server_restart(make_server, tmp_path, tiny_ce):
    args = ("--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "m.db"), "--warmup", "false")
    s = make_server(*args, dir=tmp_path)
    with Client(s.target, timeout=120) as c:
        c.create_collection("r")
        c.upsert("r", _docs(30))
        s.kill()  # the server is gone while the call below is made
        out: dict = {}

        def call():
            t = time.monotonic()
            out["hits"] = c.search("r", "boundary layer", top_n=3)
            out["seconds"] = time.monotonic() - t

        t = threading.Thread(target=call)
        t.start()
        time.sleep(1.0)
        s2 = make_server(*args, "--port", str(s.port), log_name="restart.log", dir=tmp_path, start=False)
        s2.port = s.port
        s2.start()
        try:
            t.join(120)
            assert len(out["hits"]) == 3 and out["seconds"] > 1.0  # it waited for the restart, retrying
        finally:
            s2.terminate()


@pytest.mark.timeout(1800)  # the busy call takes seconds here, minutes on a slow machine
def test_overload_is_retried_for_idempotent_calls_only(make_server, tmp_path, minilm_ce):
    s = make_server("--reranker", minilm_ce, *REFERENCE_RERANKER, "--milvus-uri", str(tmp_path / "m.db"),
                    "--max-concurrent-requests", "1", "--warmup", "false", dir=tmp_path)
    try:
        # 120 long pairs: seconds of work on any CPU (torch fp32), while the two calls below take milliseconds.
        docs = [" ".join(d["text"] for d in _docs(12)[i:i + 3]) for i in range(8)] * 15
        # Deadlines, not attempt counts, bound the wait: the retried call outlasts the busy one on any machine.
        with Client(s.target, timeout=1500) as busy, Client(s.target, timeout=1500) as c:
            t = threading.Thread(target=lambda: busy.rerank("slow", docs))
            t.start()
            end = time.monotonic() + 30
            while "tandem_requests_in_flight{method=\"/tandem.v1.RerankService/Rerank\"} 1.0" \
                    not in s.metrics_text() and time.monotonic() < end:
                time.sleep(0.05)
            # Not idempotent: refused at once, not retried.
            start = time.monotonic()
            with pytest.raises(TandemError) as e:
                c.create_collection("x")
            assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - start < 1.0
            # Idempotent: retried with backoff until the busy call is done.
            results = c.rerank("q", ["a", "b"])
            assert len(results) == 2
            t.join()
    finally:
        s.terminate()


def test_token_and_tls(make_server, pki, tiny_ce, tmp_path):  # noqa: F811
    d, files = pki
    s = make_server("--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "m.db"), "--warmup", "false",
                      "--tls-cert", str(d / "server.crt"), "--tls-key", str(d / "server.key"),
                      "--auth-tokens", "client-token", dir=tmp_path, start=False)
    s.start(wait=False)
    try:
        s.wait_ready(creds=grpc.ssl_channel_credentials(files["ca"][1]))
        target = f"localhost:{s.port}"
        with Client(target, token="client-token", tls_ca=str(d / "ca.crt")) as c:
            assert c.info().models and c.rerank("q", ["a"])
        with Client(target, token="wrong", tls_ca=str(d / "ca.crt")) as c:
            with pytest.raises(TandemError) as e:
                c.collections()
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with Client(target, token="client-token", timeout=3) as c:  # plaintext against a TLS port
            with pytest.raises(TandemError) as e:
                c.collections()
            assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        s.terminate()


def test_a_target_naming_several_replicas_is_balanced_with_health_checks():
    from tandem.channel import resolve_target

    assert resolve_target("127.0.0.1:50051") == ("127.0.0.1:50051", [])  # one address: as gRPC takes it
    target, options = resolve_target("127.0.0.1:1, 127.0.0.2:2")
    assert target == "ipv4:127.0.0.1:1,127.0.0.2:2"
    config = json.loads(dict(options)["grpc.service_config"])
    assert config == {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
    assert resolve_target("dns:///tandem-headless.tandem:50051")[1] == options  # a headless Service's records
    assert resolve_target("localhost:7,localhost:8")[0].count(":7") >= 1  # names resolved once, now
    for bad, says in (("127.0.0.1,127.0.0.2:2", "is not host:port"), ("127.0.0.1:1,[::1]:2", "mixes IPv4")):
        with pytest.raises(ValueError, match=says):
            resolve_target(bad)

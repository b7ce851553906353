"""A client in another language: the Node.js example (grpc-js + proto-loader from proto/) against a live server."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support.serverproc import REPO


def run_node(script: str, needs: str, *args: str) -> dict:
    """The example's JSON output; skips (saying how to enable it) when node or the packages it needs are absent."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; enable with: sudo apt-get install nodejs npm && make node-setup")
    if not (REPO / needs).exists():
        pytest.skip(f"{needs} is missing (node packages or generated code); enable with: make node-setup")
    r = subprocess.run([node, script, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_node_client(server, tiny_ce):
    out = run_node("examples/node/client.js", "node_modules/@grpc/grpc-js", server.target, "node_client")
    assert f"reranker:{tiny_ce}" in out["info"]["models"]
    assert out["info"]["limits"]["max_documents_per_request"] == 256
    assert out["upserted"] == 3
    assert out["search"]["reranked"] is True
    assert {h["id"] for h in out["search"]["hits"]} == {"n2", "n3"}  # the year >= 1959 filter
    res = out["rerank"]["results"]
    assert len(res) == 2 and res[0]["relevance_score"] >= res[1]["relevance_score"]
    assert all(x["document"] for x in res)


def test_health_probe_command(server):
    """`tandem health`, the probe the Docker HEALTHCHECK runs."""
    import sys

    ok = subprocess.run([sys.executable, "-m", "tandem.cli", "health", "--target", server.target], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    bad = subprocess.run([sys.executable, "-m", "tandem.cli", "health", "--target", server.target, "--service",
                          "no.Such"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "NOT_FOUND" in bad.stdout


def test_node_connect_client_over_http(server, tiny_ce):
    """Tandem's own contract over HTTP from a real Connect client (@connectrpc/connect-node, protoc-gen-es code)."""
    out = run_node("examples/node/connect.mjs", "examples/node/gen/tandem/v1/rerank_pb.js", server.http_url,
                   "connect_client")
    assert out["maxDocumentsPerRequest"] == 256
    res = out["rerank"]
    docs = ["the wing stalls at high angles of attack", "heat transfer in hypersonic flow", "buckling of shells"]
    assert len(res) == 2 and res[0]["score"] >= res[1]["score"]
    assert all(x["document"] == docs[x["index"]] for x in res)
    assert out["upserted"] == 2 and out["search"] == ["a"]
    ex = out["exported"]  # Export, a server stream, over HTTP/1.1: the record first, then every row
    assert ex[0] == "record:connect_client" and sorted(ex[1:]) == ["a", "b"], ex
    assert out["exportError"]["code"] == 5 and "no_such_collection" in out["exportError"]["message"]  # NotFound
    assert out["error"]["code"] == 3 and "query is empty" in out["error"]["message"]  # Code.InvalidArgument

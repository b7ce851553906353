"""A client in another language: the Node.js example (grpc-js + proto-loader from proto/) against a live server."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.support.serverproc import REPO


def test_node_client(server, tiny_ce):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; enable with: sudo apt-get install nodejs npm && make node-setup")
    if not (REPO / "node_modules/@grpc/grpc-js").exists():
        pytest.skip("node packages are not installed; enable with: make node-setup")
    r = subprocess.run([node, "examples/node/client.js", server.target, "node_client"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
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

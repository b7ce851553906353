"""Model resolution at start-up: recall-only mode and explicit-model failures."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.v1 import rerank_pb2, rerank_pb2_grpc
from tests.support.serverproc import REPO, ServerProcess


@pytest.mark.parametrize("reranker", ["none", "cross-encoder/ms-marco-MiniLM-L6-v2"])
def test_recall_only_mode(make_server, tmp_path, reranker):
    # The default reranker cannot be found offline: the server still starts, recall-only.
    s = make_server("--reranker", reranker, "--milvus-uri", str(tmp_path / "m.db"), "--warmup", "false",
                    env={"TANDEM_LOG_LEVEL": "INFO"}, dir=tmp_path)
    try:
        with s.channel() as ch:
            h = health_pb2_grpc.HealthStub(ch)
            status = h.Check(health_pb2.HealthCheckRequest(service="tandem.v1.RerankService"), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert h.Check(health_pb2.HealthCheckRequest(service="tandem.v1.SearchService"), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as e:
                rerank_pb2_grpc.RerankServiceStub(ch).Rerank(
                    rerank_pb2.RerankRequest(query="q", documents=["d"]), timeout=5)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--reranker" in e.value.details()
        if reranker != "none":
            assert "RECALL-ONLY MODE" in s.log()
        assert "event loop uvloop" in s.log()  # --event-loop auto serves on uvloop (test_event_loop_setting)
    finally:
        s.terminate()


def test_explicit_model_that_cannot_be_found_fails_startup(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tandem.server.cli", "serve", "--reranker", str(tmp_path / "missing"),
                        "--milvus-uri", str(tmp_path / "m.db"), "--port", "0", "--metrics-port", "-1"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert r.returncode == 2
    assert "could not find model" in r.stderr and "Tried:" in r.stderr and "Fix:" in r.stderr


def test_env_and_flag_precedence(tmp_path):
    from tandem.server import config

    import argparse

    p = argparse.ArgumentParser()
    config.add_arguments(p)
    env = {"TANDEM_PORT": "6000", "TANDEM_MAX_BATCH_PAIRS": "16", "TANDEM_WARMUP": "false"}
    cfg = config.from_sources(p.parse_args(["--port", "7000"]), env)
    assert (cfg.port, cfg.max_batch_pairs, cfg.warmup) == (7000, 16, False)
    with pytest.raises(ValueError, match="TANDEM_PORT"):
        config.from_sources(p.parse_args([]), {"TANDEM_PORT": "x"})


def test_embedded_data_file_name_is_checked_at_startup(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tandem.server.cli", "serve", "--reranker", "none",
                        "--milvus-uri", str(tmp_path / "my store.db"), "--port", "0", "--metrics-port", "-1"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert r.returncode == 2 and "1-36 characters" in r.stderr


def test_readme_configuration_table_is_the_config_dataclass():
    from tandem.server.config import markdown_table

    table = markdown_table()
    assert table in (REPO / "README.md").read_text(), "README's table is stale: regenerate it with python -m tandem.server.config"


def test_event_loop_setting():
    """The setting itself; that a server started with the default serves on uvloop, the recall-only server
    above checks in its log (one server start fewer)."""
    from tandem.server import config

    p = __import__("argparse").ArgumentParser()
    config.add_arguments(p)
    with pytest.raises(ValueError, match="event_loop is 'tokio'; use one of auto, uvloop, asyncio"):
        config.from_sources(p.parse_args(["--event-loop", "tokio"]), {})
    assert config.loop_runner("asyncio") is __import__("asyncio").run
    assert config.loop_runner("auto").__module__.startswith("uvloop")  # a dependency on this platform

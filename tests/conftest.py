from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import grpc
import pytest

from tests.checkpoints import minilm_cross_encoder, tiny_cross_encoder
from tests.serverproc import REPO, ServerProcess
from tandem.v1 import (embed_pb2_grpc, index_pb2_grpc, info_pb2_grpc, rerank_pb2_grpc, search_pb2_grpc)

DATA = REPO / "datasets"

# Every server the suite starts shares one cache of converted models and backend choices (`--backend auto`
# measures each model once per machine), kept apart from the user's own ~/.cache/tandem.
os.environ.setdefault("TANDEM_CACHE_DIR", tempfile.mkdtemp(prefix="tandem-test-cache-"))


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def tiny_ce(ckpt_dir) -> str:
    return tiny_cross_encoder(ckpt_dir / "tiny-ce")


@pytest.fixture(scope="session")
def minilm_ce(ckpt_dir) -> str:
    return minilm_cross_encoder(ckpt_dir / "minilm-ce")


@pytest.fixture(scope="session")
def server(tiny_ce, tmp_path_factory):
    """The shared server: tiny reranker, bundled embedder, Milvus Lite in a temp dir."""
    d = tmp_path_factory.mktemp("server")
    s = ServerProcess(d, "--reranker", tiny_ce, "--milvus-uri", str(d / "milvus.db"),
                      "--max-documents-per-request", "256", "--queue-capacity", "512").start()
    yield s
    s.terminate()


class Stubs:
    def __init__(self, ch: grpc.Channel):
        self.channel = ch
        self.rerank = rerank_pb2_grpc.RerankServiceStub(ch)
        self.info = info_pb2_grpc.InfoServiceStub(ch)
        self.index = index_pb2_grpc.IndexServiceStub(ch)
        self.search = search_pb2_grpc.SearchServiceStub(ch)
        self.embed = embed_pb2_grpc.EmbedServiceStub(ch)


@pytest.fixture(scope="session")
def stubs(server):
    with server.channel() as ch:
        yield Stubs(ch)


def load_beir(name: str, limit: int | None = None):
    root = DATA / name
    corpus = [json.loads(x) for x in (root / "corpus.jsonl").read_text().splitlines()[:limit]]
    queries = [json.loads(x) for x in (root / "queries.jsonl").read_text().splitlines()]
    return corpus, queries


def pytest_terminal_summary(terminalreporter):
    """Say which suites did not run, why, and the one command that enables them."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        by_reason.setdefault(reason.removeprefix("Skipped: "), []).append(rep.nodeid)
    terminalreporter.section("skipped suites")
    for reason, ids in by_reason.items():
        terminalreporter.write_line(f"{len(ids)} skipped: {reason}")
        for nodeid in ids:
            terminalreporter.write_line(f"    {nodeid}")

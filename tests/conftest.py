from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

from tests.support.checkpoints import minilm_cross_encoder, tiny_cross_encoder, tiny_embedder
from tests.support.pki import make_pki
from tests.support.serverproc import Servers
from tests.support.stubs import Stubs

# Every server the suite starts shares one cache of converted models and backend measurements (`--backend auto`
# measures each option of a model once per machine), kept apart from the user's own ~/.cache/tandem. Set here,
# in the first pytest process, so pytest-xdist's workers inherit the same folder.
os.environ.setdefault("TANDEM_CACHE_DIR", tempfile.mkdtemp(prefix="tandem-test-cache-"))
os.environ.setdefault("TANDEM_TEST_STARTS", tempfile.mkstemp(prefix="tandem-test-starts-", suffix=".tsv")[1])


@pytest.fixture(scope="session")
def ckpt_dir() -> Path:
    """The checkpoints the tests build, in the suite's cache folder: every pytest-xdist worker serves the same
    files, so what one worker's servers measured of a model (keyed by its path) the others read back."""
    d = Path(os.environ["TANDEM_CACHE_DIR"]) / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _built_once(build, out: Path) -> str:
    """build(out), by one worker at a time: the others wait, then find it built."""
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build(out)


@pytest.fixture(scope="session")
def tiny_ce(ckpt_dir) -> str:
    return _built_once(tiny_cross_encoder, ckpt_dir / "tiny-ce")


@pytest.fixture(scope="session")
def minilm_ce(ckpt_dir) -> str:
    return _built_once(minilm_cross_encoder, ckpt_dir / "minilm-ce")


@pytest.fixture(scope="session")
def small_emb(ckpt_dir) -> str:
    """A second embedder: 64 dimensions, random (tests/support/checkpoints.py)."""
    return _built_once(tiny_embedder, ckpt_dir / "small-emb")


@pytest.fixture
def make_server(tmp_path):
    """Servers for one test: make_server(*flags) -> a started ServerProcess (tests/support/serverproc.py)."""
    servers = Servers(tmp_path)
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def make_module_server(tmp_path_factory):
    """The same factory for servers a whole module shares."""
    servers = Servers(tmp_path_factory.mktemp("servers"))
    yield servers
    servers.close()


@pytest.fixture(scope="session")
def server(tiny_ce, tmp_path_factory):
    """The shared server: tiny reranker, bundled embedder, Milvus Lite in a temp dir."""
    servers = Servers(tmp_path_factory.mktemp("server"))
    yield servers("--reranker", tiny_ce, "--max-documents-per-request", "256", "--queue-capacity", "512")
    servers.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Certificates (tests/support/pki.py) and a tokens file."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def stubs(server):
    with server.channel() as ch:
        yield Stubs(ch)


def pytest_terminal_summary(terminalreporter):
    """Say what the server starts cost (the suite's largest fixed cost), then which suites did not run, why, and
    the one command that enables them."""
    path = os.environ["TANDEM_TEST_STARTS"]
    starts = [line.split("\t", 1) for line in open(path).read().splitlines()] if os.path.exists(path) else []
    if starts:
        total = sum(float(s) for s, _ in starts)
        terminalreporter.section("server starts")
        terminalreporter.write_line(f"{len(starts)} servers started, {total:.0f} s from spawn to SERVING in all "
                                    "(measuring a model's backends included); slowest:")
        for seconds, flags in sorted(starts, key=lambda x: -float(x[0]))[:5]:
            short = " ".join(f.rsplit("/", 1)[-1] for f in flags.split())
            terminalreporter.write_line(f"    {float(seconds):6.1f}s  {short[:110]}")
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

"""The built wheel, installed into a fresh venv: one `tandem` namespace (no top-level `server` or `workers`),
`tandem --help` without the server's imports, and a server that starts from it."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.checkpoints import bundled_encoder
from tests.support.http import call
from tests.support.serverproc import REPO, free_port


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(d / "dist")], check=True, capture_output=True, timeout=600)
    wheel = next((d / "dist").glob("tandem_search-*.whl"))
    venv = d / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=600)
    # The dependencies come from this environment's site-packages, added as a plain path: its .pth files (the
    # editable install's finder among them) are not processed, so only the wheel provides `tandem`.
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                             capture_output=True, text=True).stdout.strip()
    Path(purelib, "deps-from-test-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return wheel, venv, Path(purelib)


def test_the_wheel_installs_one_namespace(installed):
    wheel, _, purelib = installed
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"tandem", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, tops
    assert not (purelib / "server").exists() and not (purelib / "workers").exists()
    for part in ("server/engine/rerank.py", "server/storage/recall.py", "server/http/routes.py", "workers/batcher.py",
                 "workers/calibration.json", "server/console/index.html", "server/console/console.js",
                 "server/console/console.css"):
        assert (purelib / "tandem" / part).exists(), part


def test_cli_help_and_a_server_start_from_the_wheel(installed, tmp_path):
    _, venv, purelib = installed
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TANDEM_DRAIN_DELAY_SECONDS": "0"}
    env.pop("PYTHONPATH", None)
    tandem = str(venv / "bin" / "tandem")
    # --help must not import the server (torch, grpc.aio, the models): it stays fast and light.
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import sys; from tandem.cli import parser; parser(); "
                        "print(sorted(m for m in sys.modules if m.startswith(('tandem.server', 'torch'))))"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    r = subprocess.run([tandem, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "serve" in r.stdout, r.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import tandem.server; print(tandem.server.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(purelib)), where.stdout + where.stderr
    port, http_port = free_port(), free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([tandem, "serve", "--reranker", "none", "--embedder", bundled_encoder(),
                             "--backend", "torch", "--precision", "fp32", "--warmup", "false",
                             "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
                             "--http-host", "127.0.0.1", "--http-port", str(http_port),
                             "--milvus-uri", str(tmp_path / "m.db")],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 300
        status = None
        while time.monotonic() < end and proc.poll() is None:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                    status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                time.sleep(0.3)
        assert status == health_pb2.HealthCheckResponse.SERVING, (tmp_path / "server.log").read_text()[-3000:]
        assert call(f"http://127.0.0.1:{http_port}/health").status == 200  # the HTTP side, from the wheel too
        console = call(f"http://127.0.0.1:{http_port}/console")  # the console's files ship in the wheel
        assert console.status == 200 and b"console.js" in console.body, console.body[:300]
        assert f"console http://127.0.0.1:{http_port}/console" in (tmp_path / "server.log").read_text()
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, (tmp_path / "server.log").read_text()[-3000:]

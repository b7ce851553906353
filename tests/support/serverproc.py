"""Run `tandem serve` as a real child process on loopback ports, for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[2]

# Flags for a server whose test is not about the backend choice: the reranker runs the reference option (torch
# fp32: one option, nothing measured), the embedder torch at the precision measured for it (once a run, read
# back after). The choice itself: tests/test_backend_choice.py; every other option served:
# tests/test_precision_served.py.
REFERENCE_RERANKER = ("--backend", "torch", "--reranker-precision", "fp32")


def record_start(seconds: float, flags: tuple[str, ...]) -> None:
    """Note a start's cost for the suite's summary (tests/conftest.py), in a file every test process appends to
    (TANDEM_TEST_STARTS: pytest-xdist runs several); nothing when it is not set."""
    path = os.environ.get("TANDEM_TEST_STARTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{seconds:.2f}\t{' '.join(flags)}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, workdir: Path, *args: str, env: dict | None = None, log_name: str = "server.log"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port()
        # HTTP on a free port unless the flags say otherwise (`--http-port 0` turns it off).
        self.http_port = int(args[args.index("--http-port") + 1]) if "--http-port" in args else free_port()
        self.flags = tuple(args)
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), "--metrics-host", "127.0.0.1",
                     "--metrics-port", str(self.metrics_port), "--http-host", "127.0.0.1",
                     *([] if "--http-port" in args else ["--http-port", str(self.http_port)]), *args]
        # No drain delay unless a test asks for one (flags beat the environment): every test stops its servers.
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                    "TANDEM_DRAIN_DELAY_SECONDS": "0", **(env or {})}
        self.log_path = self.workdir / log_name
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # The first start of a model on a machine measures its backends (--backend auto): minutes on a slow CPU.
    def start(self, timeout: float = 600, wait: bool = True) -> "ServerProcess":
        self._log = open(self.log_path, "ab")
        self._spawned = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "tandem.server.cli", "serve", *self.args], cwd=REPO,
                                     env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 600, creds: grpc.ChannelCredentials | None = None) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                ch = grpc.secure_channel(self.target, creds) if creds else grpc.insecure_channel(self.target)
                with ch:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        record_start(time.monotonic() - self._spawned, self.flags)
                        return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                           ("grpc.max_send_message_length", 64 << 20)])

    def terminate(self, timeout: float = 60) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def metrics_text(self) -> str:
        import urllib.request

        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()


class Servers:
    """A factory of servers for one test (or module): `make_server(*flags)` starts `tandem serve` with those flags
    on free loopback ports, an embedded store in its own folder unless the flags name one, and stops every server
    it made when the scope ends. `dir=` reuses a folder (a restart over the same data)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.made: list[ServerProcess] = []

    def __call__(self, *flags: str, dir: Path | None = None, env: dict | None = None, start: bool = True,
                 log_name: str = "server.log", timeout: float = 600) -> ServerProcess:
        d = Path(dir) if dir is not None else self.root / f"server{len(self.made)}"
        if "--milvus-uri" not in flags:
            flags = (*flags, "--milvus-uri", str(d / "m.db"))
        s = ServerProcess(d, *flags, env=env, log_name=log_name)
        self.made.append(s)
        return s.start(timeout) if start else s

    def close(self) -> None:
        for s in reversed(self.made):
            s.terminate()

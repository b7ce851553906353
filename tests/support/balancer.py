"""nginx in front of a fleet, run from the shipped deploy/nginx/tandem-grpc.conf: its replicas and port replaced,
everything else (retry rule, timeouts, keepalive) as shipped, under a main config that keeps nginx's files in a
temp folder so it runs without root."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.serverproc import REPO, free_port

SHIPPED = REPO / "deploy/nginx/tandem-grpc.conf"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def site_config(replicas: list[str], port: int) -> str:
    """The shipped site with these replicas and this listening port."""
    text = SHIPPED.read_text()
    servers = "".join(f"    server {r} max_fails=1 fail_timeout=5s;\n" for r in replicas)
    text, n = re.subn(r"(upstream tandem_grpc \{\n)(?:    server [^\n]+\n)+", lambda m: m.group(1) + servers, text)
    assert n == 1, "deploy/nginx/tandem-grpc.conf: no upstream block to fill"
    text, n = re.subn(r"listen \d+ http2;", f"listen 127.0.0.1:{port} http2;", text)
    assert n == 1, "deploy/nginx/tandem-grpc.conf: no `listen PORT http2;` line"
    return text


class Nginx:
    def __init__(self, workdir: Path, replicas: list[str]):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.replicas = replicas
        self.proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write(self) -> Path:
        d = self.dir
        (d / "site.conf").write_text(site_config(self.replicas, self.port))
        conf = d / "nginx.conf"
        conf.write_text(f"""daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
""")
        return conf

    def start(self) -> "Nginx":
        conf = self.write()
        check = subprocess.run([nginx_binary(), "-t", "-c", str(conf), "-p", str(self.dir)], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "ab"))
        import socket

        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert self.proc.poll() is None, (self.dir / "error.log").read_text()
                time.sleep(0.1)
        raise TimeoutError("nginx did not listen")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def errors(self) -> str:
        p = self.dir / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

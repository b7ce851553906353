"""TLS, mutual TLS and bearer tokens, with certificates the test makes itself."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.v1 import info_pb2, info_pb2_grpc
from tests.support.serverproc import ServerProcess


def _info(ch, token=None):
    md = [("authorization", f"Bearer {token}")] if token else None
    return info_pb2_grpc.InfoServiceStub(ch).Info(info_pb2.InfoRequest(), timeout=10, metadata=md)


def test_mtls_and_bearer_tokens(make_server, pki, tiny_ce, tmp_path):
    d, files = pki
    s = make_server("--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "m.db"), "--warmup", "false",
                      "--tls-cert", str(d / "server.crt"), "--tls-key", str(d / "server.key"),
                      "--tls-client-ca", str(d / "ca.crt"), "--auth-tokens-file", str(d / "tokens"), dir=tmp_path, start=False)
    s.start(wait=False)
    good = grpc.ssl_channel_credentials(files["ca"][1], files["client"][0], files["client"][1])
    try:
        s.wait_ready(creds=good)
        with grpc.secure_channel(s.target, good) as ch:
            assert _info(ch, "secret-two").models
            for token in (None, "wrong"):
                with pytest.raises(grpc.RpcError) as e:
                    _info(ch, token)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in e.value.details()
            # Health stays reachable without a token (probes), by default.
            hs = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert hs.status == health_pb2.HealthCheckResponse.SERVING
        # No client certificate, or one from another CA: the handshake fails.
        for creds in (grpc.ssl_channel_credentials(files["ca"][1]),
                      grpc.ssl_channel_credentials(files["ca"][1], files["rogue"][0], files["rogue"][1])):
            with grpc.secure_channel(s.target, creds) as ch:
                with pytest.raises(grpc.RpcError) as e:
                    _info(ch, "secret-one")
                assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext against a TLS port fails.
        with grpc.insecure_channel(s.target) as ch:
            with pytest.raises(grpc.RpcError):
                _info(ch, "secret-one")
    finally:
        s.terminate()


def test_tls_without_client_certs_and_health_behind_auth(make_server, pki, tiny_ce, tmp_path):
    d, files = pki
    s = make_server("--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "m.db"), "--warmup", "false",
                      "--tls-cert", str(d / "server.crt"), "--tls-key", str(d / "server.key"),
                      "--auth-exempt-health", "false", env={"TANDEM_AUTH_TOKENS": "env-token"}, dir=tmp_path, start=False)
    s.start(wait=False)
    creds = grpc.ssl_channel_credentials(files["ca"][1])
    try:
        import time

        with grpc.secure_channel(s.target, creds) as ch:
            end = time.monotonic() + 120
            while True:
                try:
                    assert _info(ch, "env-token").models
                    break
                except grpc.RpcError:
                    if time.monotonic() > end or s.proc.poll() is not None:
                        raise
                    time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as e:
                health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5,
                                                      metadata=[("authorization", "Bearer env-token")])
            assert ok.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        s.terminate()

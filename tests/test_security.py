"""TLS, mutual TLS and bearer tokens, with certificates the test makes itself."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.v1 import info_pb2, info_pb2_grpc
from tests.serverproc import ServerProcess


def _cert(subject: str, issuer_key=None, issuer_name=None, ca=False, server=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    cert = b.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _pem(key, cert):
    from cryptography.hazmat.primitives import serialization

    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = _cert("tandem-test-ca", ca=True)
    s_key, s_cert = _cert("localhost", ca_key, ca.subject, server=True)
    c_key, c_cert = _cert("client", ca_key, ca.subject)
    rogue_key, rogue = _cert("rogue")  # self-signed, not from our CA
    files = {}
    for name, (k, c) in {"ca": (ca_key, ca), "server": (s_key, s_cert), "client": (c_key, c_cert),
                         "rogue": (rogue_key, rogue)}.items():
        kp, cp = _pem(k, c)
        (d / f"{name}.key").write_bytes(kp)
        (d / f"{name}.crt").write_bytes(cp)
        files[name] = (kp, cp)
    (d / "tokens").write_text("# tokens\nsecret-one\nsecret-two\n")
    return d, files


def _info(ch, token=None):
    md = [("authorization", f"Bearer {token}")] if token else None
    return info_pb2_grpc.InfoServiceStub(ch).Info(info_pb2.InfoRequest(), timeout=10, metadata=md)


def test_mtls_and_bearer_tokens(pki, tiny_ce, tmp_path):
    d, files = pki
    s = ServerProcess(tmp_path, "--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "m.db"), "--warmup", "false",
                      "--tls-cert", str(d / "server.crt"), "--tls-key", str(d / "server.key"),
                      "--tls-client-ca", str(d / "ca.crt"), "--auth-tokens-file", str(d / "tokens"))
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


def test_tls_without_client_certs_and_health_behind_auth(pki, tiny_ce, tmp_path):
    d, files = pki
    s = ServerProcess(tmp_path, "--reranker", tiny_ce, "--milvus-uri", str(tmp_path / "m.db"), "--warmup", "false",
                      "--tls-cert", str(d / "server.crt"), "--tls-key", str(d / "server.key"),
                      "--auth-exempt-health", "false", env={"TANDEM_AUTH_TOKENS": "env-token"})
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

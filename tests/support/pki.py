"""Certificates the tests make themselves: a CA, a server and a client certificate, and a rogue one."""

from __future__ import annotations

import datetime
import ipaddress


MESH_URI = "spiffe://tandem.test/ns/search/sa/indexer"  # the SAN URI of the "mesh" client certificate


def _cert(subject: str, issuer_key=None, issuer_name=None, ca=False, server=False, uri: str | None = None):
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
    if uri:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri),
                                                         x509.DNSName("indexer.search.svc")]), critical=False)
    cert = b.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _pem(key, cert):
    from cryptography.hazmat.primitives import serialization

    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def make_pki(d):
    """A CA, a server certificate for localhost, a client certificate from the CA, a second one ("mesh") whose
    SAN names a SPIFFE ID, a rogue self-signed one, and a tokens file, written under `d`.
    Returns (d, {name: (key PEM, cert PEM)})."""
    ca_key, ca = _cert("tandem-test-ca", ca=True)
    s_key, s_cert = _cert("localhost", ca_key, ca.subject, server=True)
    c_key, c_cert = _cert("client", ca_key, ca.subject)
    m_key, m_cert = _cert("indexer", ca_key, ca.subject, uri=MESH_URI)
    rogue_key, rogue = _cert("rogue")  # self-signed, not from our CA
    files = {}
    for name, (k, c) in {"ca": (ca_key, ca), "server": (s_key, s_cert), "client": (c_key, c_cert),
                         "mesh": (m_key, m_cert), "rogue": (rogue_key, rogue)}.items():
        kp, cp = _pem(k, c)
        (d / f"{name}.key").write_bytes(kp)
        (d / f"{name}.crt").write_bytes(cp)
        files[name] = (kp, cp)
    (d / "tokens").write_text("# tokens\nsecret-one\nsecret-two\n")
    return d, files

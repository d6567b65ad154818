"""The lean Redis connections over TLS (``rediss://``), with the URL's TLS options honoured."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis import exceptions

from switchboard.pipelined import PipelinedRedis
from tests.support import free_port, wait_until

pytestmark = pytest.mark.integration


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certs(where: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signed for 127.0.0.1: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("switchboard test CA"))
          .issuer_name(_name("switchboard test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = where / "ca.pem", where / "cert.pem", where / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem(key))
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks only TLS; yields its port and the CA that signed it."""
    ca, cert, key = make_certs(tmp_path)
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe is not None
    proc = subprocess.Popen(
        [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(cafile=str(ca))

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.skip("this redis-server cannot serve TLS (built without it?)")
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    try:
        wait_until(ready, 10, "redis-server with TLS")
        yield port, ca
    finally:
        proc.terminate()
        proc.wait(10)


async def test_tls_with_the_urls_ca_and_verification_on_by_default(
    tls_redis: tuple[int, Path],
) -> None:
    port, ca = tls_redis
    trusted = PipelinedRedis(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", 2.0)
    untrusted = PipelinedRedis(f"rediss://127.0.0.1:{port}/0", 2.0)
    unverified = PipelinedRedis(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none", 2.0)
    try:
        assert await trusted.execute("ECHO", "over tls") == b"over tls"
        with pytest.raises(exceptions.ConnectionError):  # the system CAs do not know ours
            await untrusted.execute("PING")
        assert await unverified.execute("PING") == b"PONG"
    finally:
        for client in (trusted, untrusted, unverified):
            client.close()


async def test_tls_checks_the_host_name_unless_told_not_to(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis  # the certificate names 127.0.0.1 only
    strict = PipelinedRedis(f"rediss://localhost:{port}/0?ssl_ca_certs={ca}", 2.0)
    relaxed = PipelinedRedis(
        f"rediss://localhost:{port}/0?ssl_ca_certs={ca}&ssl_check_hostname=false", 2.0)
    try:
        with pytest.raises(exceptions.ConnectionError):
            await strict.execute("PING")
        assert await relaxed.execute("PING") == b"PONG"
    finally:
        strict.close()
        relaxed.close()


def test_tls_options_it_cannot_honour_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="not supported: ssl_ciphers"):
        PipelinedRedis("rediss://127.0.0.1:6379/0?ssl_ciphers=ECDHE", 2.0)
    with pytest.raises(ValueError, match="not supported: ssl_min_version"):
        PipelinedRedis("rediss://127.0.0.1:6379/0?ssl_min_version=771", 2.0)
    with pytest.raises(ValueError, match="ssl_keyfile needs ssl_certfile"):
        PipelinedRedis("rediss://127.0.0.1:6379/0?ssl_keyfile=/key.pem", 2.0)
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        PipelinedRedis("rediss://127.0.0.1:6379/0?ssl_cert_reqs=sometimes", 2.0)

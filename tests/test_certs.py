"""`sidecar certs`: the development PKI makes a CA and SPIFFE workload certs that real TLS accepts."""

from __future__ import annotations

import datetime
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.certs import CertError, SpiffeId, init_ca, issue_workload

SIDECAR = [sys.executable, "-m", "sidecar"]
ORDERS_ID = "spiffe://mesh.local/ns/default/sa/orders"


def test_cli_init_and_issue_write_the_spec_file_names(tmp_path: Path) -> None:
    ca, wl = tmp_path / "ca", tmp_path / "orders"
    run = subprocess.run(
        [*SIDECAR, "certs", "init", "--trust-domain", "mesh.local", "--out", str(ca)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    run = subprocess.run(
        [*SIDECAR, "certs", "issue", "--ca", str(ca), "--id", ORDERS_ID, "--out", str(wl)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in ca.iterdir()) == ["ca-key.pem", "ca.pem"]
    assert sorted(p.name for p in wl.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    for key in (ca / "ca-key.pem", wl / "key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (wl / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()


def test_workload_cert_is_a_short_lived_ec_svid(tmp_path: Path) -> None:
    init_ca("mesh.local", tmp_path / "ca")
    issue_workload(tmp_path / "ca", "spiffe://mesh.local/ns/shop/sa/web", tmp_path / "web")
    cert = x509.load_pem_x509_certificate((tmp_path / "web" / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://mesh.local/ns/shop/sa/web"]
    assert len(list(san)) == 1
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime <= datetime.timedelta(hours=24, minutes=5)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_mismatched_trust_domain_and_bad_ids_are_refused(tmp_path: Path) -> None:
    init_ca("mesh.local", tmp_path / "ca")
    with pytest.raises(CertError, match="trust domain"):
        issue_workload(tmp_path / "ca", "spiffe://other.local/ns/a/sa/b", tmp_path / "x")
    for bad in [
        "http://mesh.local/a",
        "spiffe://mesh.local",
        "spiffe://mesh.local/",
        "spiffe://Mesh/a",
        "spiffe://m//a",
    ]:
        with pytest.raises(CertError):
            SpiffeId.parse(bad)
    with pytest.raises(CertError, match="cannot read the CA"):
        issue_workload(tmp_path / "missing", "spiffe://mesh.local/a", tmp_path / "y")


async def test_certs_complete_a_mutual_tls_handshake(tmp_path: Path) -> None:
    init_ca("mesh.local", tmp_path / "ca")
    issue_workload(tmp_path / "ca", "spiffe://mesh.local/ns/default/sa/server", tmp_path / "server")
    issue_workload(tmp_path / "ca", "spiffe://mesh.local/ns/default/sa/client", tmp_path / "client")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tmp_path / "ca" / "ca.pem"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(tmp_path / "server" / "cert.pem", tmp_path / "server" / "key.pem")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))
    client_ctx.check_hostname = False
    client_ctx.load_cert_chain(tmp_path / "client" / "cert.pem", tmp_path / "client" / "key.pem")
    a, b = trio.testing.memory_stream_pair()
    server = trio.SSLStream(a, server_ctx, server_side=True)
    client = trio.SSLStream(b, client_ctx)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    peer = server.getpeercert()
    assert peer is not None and ("URI", "spiffe://mesh.local/ns/default/sa/client") in peer["subjectAltName"]

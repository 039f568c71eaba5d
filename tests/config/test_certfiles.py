"""The certificate file checks, with the stdlib ssl module (and the cryptography fallback)."""

from __future__ import annotations

import _ssl
import datetime
import math
import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from sidecar.certs import issue_workload
from sidecar.config.certfiles import (
    CertInfo,
    cert_problems,
    check_ca_bundle,
    check_workload_cert,
    decode_cert,
    spiffe_id_of,
)

from .conftest import FRONTEND_ID

REPO = Path(__file__).resolve().parents[2]
UTC = datetime.UTC


def files(directory: Path) -> tuple[Path, Path, Path]:
    return directory / "cert.pem", directory / "key.pem", directory / "ca.pem"


@pytest.fixture(scope="session")
def other(mesh_ca: Path) -> Path:
    """A second workload of the same CA: its key does not match the first's certificate."""
    out = mesh_ca.parent / "orders"
    issue_workload(mesh_ca, "spiffe://mesh.local/ns/default/sa/orders", out)
    return out


@pytest.fixture(scope="session")
def no_spiffe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid certificate, key and CA from trustme, with a DNS SAN but no SPIFFE ID."""
    out = tmp_path_factory.mktemp("trustme")
    ca = trustme.CA()
    issued = ca.issue_cert("example.com")
    issued.private_key_pem.write_to_path(str(out / "key.pem"))
    issued.cert_chain_pems[0].write_to_path(str(out / "cert.pem"))
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    return out


def test_good_workload(workload: Path) -> None:
    assert check_workload_cert(*files(workload)) == []
    assert spiffe_id_of(workload / "cert.pem") == FRONTEND_ID
    info = decode_cert(workload / "cert.pem")
    assert info.uris == (FRONTEND_ID,)
    assert info.not_before < datetime.datetime.now(UTC).timestamp() < info.not_after


def test_key_of_another_certificate(workload: Path, other: Path) -> None:
    cert, _key, ca = files(workload)
    assert check_workload_cert(cert, other / "key.pem", ca) == [("key", "key does not match tls.cert")]


def test_missing_and_unreadable_files(tmp_path: Path, workload: Path) -> None:
    (tmp_path / "folder").mkdir()
    problems = check_workload_cert(tmp_path / "nope.pem", tmp_path / "folder", tmp_path / "gone" / "ca.pem")
    assert problems == [
        ("cert", f"cannot read {tmp_path}/nope.pem: No such file or directory"),
        ("key", f"cannot read {tmp_path}/folder: Is a directory"),
        ("ca", f"cannot read {tmp_path}/gone/ca.pem: No such file or directory"),
    ]
    cert, _key, ca = files(workload)
    assert check_workload_cert(cert, tmp_path / "nope.pem", ca) == [
        ("key", f"cannot read {tmp_path}/nope.pem: No such file or directory")
    ]
    assert spiffe_id_of(tmp_path / "nope.pem") is None


def test_files_of_the_wrong_kind(tmp_path: Path, workload: Path) -> None:
    cert, key, ca = files(workload)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert check_workload_cert(key, key, key) == [
        ("cert", "not a PEM certificate"),
        ("ca", "not a PEM certificate bundle (no certificate found)"),
    ]
    assert check_workload_cert(cert, cert, junk) == [
        ("key", "not a PEM private key"),
        ("ca", "not a PEM certificate bundle (no certificate found)"),
    ]
    assert check_workload_cert(junk, key, ca) == [("cert", "not a PEM certificate")]
    assert spiffe_id_of(junk) is None
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    assert check_ca_bundle(empty) == "not a PEM certificate bundle (no certificate found)"
    assert check_ca_bundle(ca) is None


def test_encrypted_key_is_refused_without_prompting(tmp_path: Path, workload: Path) -> None:
    cert, key, ca = files(workload)
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    encrypted = tmp_path / "key.pem"
    encrypted.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert check_workload_cert(cert, encrypted, ca) == [
        ("key", "key is encrypted (a key with a passphrase is not supported)")
    ]


def test_certificate_without_spiffe_id(no_spiffe: Path) -> None:
    assert check_workload_cert(*files(no_spiffe)) == [("cert", "certificate has no SPIFFE ID (URI SAN spiffe://...)")]
    assert spiffe_id_of(no_spiffe / "cert.pem") is None


def test_expired_and_not_yet_valid(tmp_path: Path, mesh_ca: Path) -> None:
    expired = tmp_path / "expired"
    start = datetime.datetime(2020, 1, 1, tzinfo=UTC)
    issue_workload(mesh_ca, FRONTEND_ID, expired, validity=datetime.timedelta(hours=1), not_before=start)
    assert check_workload_cert(*files(expired)) == [("cert", "certificate expired on 2020-01-01T01:00:00Z")]
    early = tmp_path / "early"
    start = datetime.datetime(2100, 1, 1, tzinfo=UTC)
    issue_workload(mesh_ca, FRONTEND_ID, early, validity=datetime.timedelta(days=1), not_before=start)
    assert check_workload_cert(*files(early)) == [
        ("cert", "certificate is not yet valid (valid from 2100-01-01T00:00:00Z)")
    ]
    # ``now`` is the clock the checks use: inside the period, both are fine.
    assert check_workload_cert(*files(early), now=start.timestamp() + 60) == []
    assert spiffe_id_of(early / "cert.pem") == FRONTEND_ID  # the ID is readable all the same


@pytest.mark.parametrize(
    ("uris", "problems"),
    [
        ((FRONTEND_ID, "https://example.com/"), []),
        ((), ["certificate has no SPIFFE ID (URI SAN spiffe://...)"]),
        (
            ("spiffe://mesh.local/a", "spiffe://mesh.local/b"),
            [
                "certificate has 2 SPIFFE IDs (URI SANs spiffe://mesh.local/a, spiffe://mesh.local/b); "
                "exactly one is allowed"
            ],
        ),
        (
            ("spiffe://mesh.local",),
            ["certificate's SPIFFE ID: invalid SPIFFE ID 'spiffe://mesh.local' (expected spiffe://TRUST-DOMAIN/PATH)"],
        ),
    ],
)
def test_spiffe_id_rules(uris: tuple[str, ...], problems: list[str]) -> None:
    assert cert_problems(CertInfo(uris, 0.0, math.inf)) == problems


def test_the_ca_certificate_is_no_workload_certificate(workload: Path) -> None:
    _cert, key, ca = files(workload)
    assert check_workload_cert(ca, key, ca) == [
        (
            "cert",
            "certificate's SPIFFE ID: invalid SPIFFE ID 'spiffe://mesh.local' (expected spiffe://TRUST-DOMAIN/PATH)",
        ),
        ("key", "key does not match tls.cert"),
    ]


def test_cryptography_fallback_reads_the_same(
    monkeypatch: pytest.MonkeyPatch, workload: Path, no_spiffe: Path, tmp_path: Path
) -> None:
    expected = [decode_cert(workload / "cert.pem"), decode_cert(no_spiffe / "cert.pem")]
    monkeypatch.delattr(_ssl, "_test_decode_cert")
    assert [decode_cert(workload / "cert.pem"), decode_cert(no_spiffe / "cert.pem")] == expected
    assert check_workload_cert(*files(workload)) == []
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        decode_cert(junk)


def test_loading_a_config_does_not_import_cryptography() -> None:
    """cryptography costs ~9.5 MB of RSS: the proxy's config path checks certificates without it."""
    script = (
        "import sys\n"
        "from sidecar.config import load_directory\n"
        "from sidecar.cli import main\n"
        "snapshot = load_directory('mesh-config')\n"
        "assert snapshot.identity == 'spiffe://mesh.local/ns/default/sa/frontend', snapshot.identity\n"
        "assert main(['check', '-c', 'mesh-config']) == 0\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'cryptography'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"

"""Development PKI behind `sidecar certs`: a mesh CA and SPIFFE workload certificates.

`init` makes an EC P-256 CA whose certificate carries the trust domain as its URI SAN
(`spiffe://TD`, as a SPIFFE trust bundle root may). `issue` makes a workload key and a certificate
whose only URI SAN is the workload's SPIFFE ID (an X.509-SVID): short-lived by default, usable as
both TLS client and server. Keys are written 0600, certificates 0644. For real deployments, use your
own CA or cert-manager (docs: operations/certificates.md); this module exists so tests and the demo
need no setup.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=365)
WORKLOAD_VALIDITY = datetime.timedelta(hours=24)
CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates start a little in the past

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]+)(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]+)")


class CertError(Exception):
    """A bad argument or unreadable CA; the message is for the operator."""


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    path: str

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        m = _SPIFFE_ID.fullmatch(text)
        if m is None or "//" in m.group(2) or m.group(2).endswith("/"):
            raise CertError(f"not a SPIFFE ID: {text!r} (expected spiffe://TRUST-DOMAIN/PATH)")
        return cls(m.group(1), m.group(2))

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)  # readers never see half a file


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_ca(trust_domain: str, out: Path, *, validity: datetime.timedelta = CA_VALIDITY) -> Path:
    """Create `ca.pem` and `ca-key.pem` in `out`; returns the certificate's path."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise CertError(f"invalid trust domain {trust_domain!r} (lower-case letters, digits, '.', '-', '_')")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sidecar development mesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} mesh CA"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(out / "ca-key.pem", _key_pem(key), 0o600)
    _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return out / "ca.pem"


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertError(f"cannot read the CA in {ca_dir}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{ca_dir / 'ca-key.pem'}: expected an EC key")
    return cert, key


def ca_trust_domain(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://") :].split("/", 1)[0]
    return None


def issue_workload(
    ca_dir: Path,
    spiffe_id: str,
    out: Path,
    *,
    validity: datetime.timedelta = WORKLOAD_VALIDITY,
    not_before: datetime.datetime | None = None,
) -> Path:
    """Create `cert.pem`, `key.pem` and a copy of `ca.pem` in `out`; returns the cert's path."""
    ident = SpiffeId.parse(spiffe_id)
    ca_cert, ca_key = _load_ca(ca_dir)
    domain = ca_trust_domain(ca_cert)
    if domain is not None and domain != ident.trust_domain:
        raise CertError(f"{spiffe_id} is not in the CA's trust domain {domain!r}")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - CLOCK_SKEW)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sidecar development mesh")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(ident))]), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / "key.pem", _key_pem(key), 0o600)
    _write(out / "cert.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(out / "ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return out / "cert.pem"

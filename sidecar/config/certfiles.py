"""Checks of the certificate files a config names, with the standard library's ``ssl`` only.

The running proxy must not import ``cryptography``: it costs about 9.5 MB of a 40 MiB RSS budget.
So everything here goes through ``ssl``: ``SSLContext.load_cert_chain`` proves a key readable and
matching its certificate, ``SSLContext.load_verify_locations`` proves a trust bundle holds
certificates, and ``decode_cert`` reads the URI SANs and validity period of a certificate file.

The loader calls ``check_workload_cert`` for ``Sidecar.tls`` and ``check_ca_bundle`` for a service's
``tls.ca``; the runtime may call them again to re-check rotated files before using them. Problems
come back as ``(field, message)`` pairs, the field being that of ``SidecarTls``: ``cert``, ``key``
or ``ca``.
"""

from __future__ import annotations

import _ssl
import datetime
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from .notation import parse_spiffe_id

Problem = tuple[str, str]
"""``(field, message)``: the ``SidecarTls`` field (``cert``, ``key`` or ``ca``) and what is wrong."""

SPIFFE_PREFIX = "spiffe://"


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the checks need of a certificate: its URI SANs and its validity period (epoch seconds)."""

    uris: tuple[str, ...]
    not_before: float
    not_after: float

    @property
    def spiffe_ids(self) -> tuple[str, ...]:
        return tuple(uri for uri in self.uris if uri.startswith(SPIFFE_PREFIX))


def decode_cert(path: Path) -> CertInfo:
    """The first certificate of the PEM file ``path``; ``ValueError`` if it holds none.

    ``_ssl._test_decode_cert`` is a CPython helper (present since Python 3.2, used by CPython's own
    test suite) that decodes a PEM certificate file into the same dict ``SSLSocket.getpeercert()``
    returns, with OpenSSL alone. Being underscored it could disappear one day: then, and only then,
    ``cryptography`` is imported to do the same (at a memory cost, see the module docstring).
    """
    decode = getattr(_ssl, "_test_decode_cert", None)
    if decode is None:
        return _decode_with_cryptography(path)
    try:
        decoded = decode(os.fspath(path))
    except (ssl.SSLError, ValueError):
        raise ValueError("not a PEM certificate") from None
    uris = tuple(value for kind, value in decoded.get("subjectAltName", ()) if kind == "URI")
    return CertInfo(uris, ssl.cert_time_to_seconds(decoded["notBefore"]), ssl.cert_time_to_seconds(decoded["notAfter"]))


def _decode_with_cryptography(path: Path) -> CertInfo:
    """``decode_cert`` without the CPython helper. Imports ``cryptography`` (see the module docstring)."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ValueError("not a PEM certificate") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return CertInfo(uris, cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read, or ``None`` when it can."""
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    except ValueError as exc:  # e.g. an embedded NUL byte
        return f"cannot read {path}: {exc}"
    return None


def cert_problems(info: CertInfo, *, now: float | None = None) -> list[str]:
    """What is wrong with a workload certificate: its SPIFFE ID and its validity period at ``now``."""
    problems = []
    ids = info.spiffe_ids
    if not ids:
        problems.append("certificate has no SPIFFE ID (URI SAN spiffe://...)")
    elif len(ids) > 1:
        problems.append(f"certificate has {len(ids)} SPIFFE IDs (URI SANs {', '.join(ids)}); exactly one is allowed")
    else:
        try:
            parse_spiffe_id(ids[0])
        except ValueError as exc:
            problems.append(f"certificate's SPIFFE ID: {exc}")
    now = time.time() if now is None else now
    if now >= info.not_after:
        problems.append(f"certificate expired on {_utc(info.not_after)}")
    elif now < info.not_before:
        problems.append(f"certificate is not yet valid (valid from {_utc(info.not_before)})")
    return problems


class _PassphraseNeeded(Exception):
    pass


def _no_passphrase() -> str:
    # Without a password callback OpenSSL would prompt on the terminal for an encrypted key.
    raise _PassphraseNeeded


def _key_problem(cert: Path, key: Path) -> str | None:
    """Why ``key`` does not load as the private key of ``cert`` (known to decode), or ``None``."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_passphrase)
    except _PassphraseNeeded:
        return "key is encrypted (a key with a passphrase is not supported)"
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "key does not match tls.cert"
        return "not a PEM private key"
    except OSError as exc:  # the file went away since it was read
        return f"cannot read {key}: {exc.strerror or exc}"
    return None


def check_ca_bundle(ca: Path) -> str | None:
    """Why the trust bundle ``ca`` is unusable (unreadable, or no PEM certificate in it), or ``None``."""
    if (problem := _read_problem(ca)) is not None:
        return problem
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=os.fspath(ca))
    except ssl.SSLError:
        return "not a PEM certificate bundle (no certificate found)"
    except OSError as exc:
        return f"cannot read {ca}: {exc.strerror or exc}"
    return None


def check_workload_cert(cert: Path, key: Path, ca: Path, *, now: float | None = None) -> list[Problem]:
    """Every problem with a workload's certificate, key and trust bundle, in that order of fields.

    The certificate must be a PEM X.509 certificate carrying exactly one SPIFFE ID as URI SAN, and be
    valid at ``now`` (default: the current time); the key must be its unencrypted PEM private key;
    the trust bundle must hold at least one PEM certificate.
    """
    problems: list[Problem] = []
    cert_read = _read_problem(cert)
    key_read = _read_problem(key)
    info: CertInfo | None = None
    if cert_read is not None:
        problems.append(("cert", cert_read))
    else:
        try:
            info = decode_cert(cert)
        except ValueError as exc:
            problems.append(("cert", str(exc)))
        else:
            problems += [("cert", message) for message in cert_problems(info, now=now)]
    if key_read is not None:
        problems.append(("key", key_read))
    elif info is not None and (key_problem := _key_problem(cert, key)) is not None:
        problems.append(("key", key_problem))
    if (ca_problem := check_ca_bundle(ca)) is not None:
        problems.append(("ca", ca_problem))
    return problems


def spiffe_id_of(cert: Path) -> str | None:
    """The one SPIFFE ID in the URI SAN of ``cert``; ``None`` if unreadable, or none or several."""
    try:
        ids = decode_cert(cert).spiffe_ids
    except (OSError, ValueError):
        return None
    return ids[0] if len(ids) == 1 else None

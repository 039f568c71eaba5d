"""TLS for the mesh: context builders, SPIFFE identities of peers, allow-list matching, and the
reasons a handshake failed.

- The inbound side presents this workload's certificate and (strict mode) requires a client
  certificate that chains to the mesh trust bundle; the caller's identity is the SPIFFE ID in its
  URI SAN.
- The outbound side in `mutual` mode presents the workload certificate, verifies the upstream chains
  to the trust bundle and checks the upstream's SPIFFE ID against the service's expected `identity`
  (DNS hostname checking does not apply inside the mesh). `simple` mode is ordinary server-
  authenticated TLS with hostname verification, for external APIs.
- TLS 1.2 is the floor; TLS 1.3 is preferred by both sides.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ALPN_HTTP1 = ("http/1.1",)
ALPN_TCP = "sidecar-tcp/1"  # opaque TCP in the tunnel between two sidecars (transport/tcp_tunnel.py)
ALPN_SERVER = ("h2", "http/1.1", ALPN_TCP)  # what the inbound listener speaks
URI_SAN = "URI"
SPIFFE_PREFIX = "spiffe://"

# Handshake failure reasons, as logged and counted (sidecar_tls_handshake_failures_total).
_FAILURE_REASONS: tuple[tuple[str, str], ...] = (
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_client_cert"),
    ("peer did not return a certificate", "no_client_cert"),
    ("CERTIFICATE_REQUIRED", "no_client_cert"),
    ("certificate has expired", "expired"),
    ("CERTIFICATE_EXPIRED", "expired"),
    ("certificate is not yet valid", "not_yet_valid"),
    ("unable to get local issuer certificate", "unknown_ca"),
    ("self-signed certificate", "unknown_ca"),
    ("self signed certificate", "unknown_ca"),
    ("UNKNOWN_CA", "unknown_ca"),
    ("UNSUPPORTED_PROTOCOL", "protocol"),
    ("WRONG_VERSION_NUMBER", "protocol"),
    ("VERSION_TOO_LOW", "protocol"),
    ("NO_SHARED_CIPHER", "protocol"),
    ("HTTP_REQUEST", "plaintext"),
)


def _base_context(purpose: ssl.Purpose) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def server_context(
    cert: Path, key: Path, ca: Path, *, require_client_cert: bool, alpn: Sequence[str] = ALPN_SERVER
) -> ssl.SSLContext:
    """The inbound listener's context. Permissive mode still asks for a client certificate
    (CERT_OPTIONAL) so that mesh callers are identified."""
    context = _base_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=str(ca))
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    context.set_alpn_protocols(list(alpn))
    context.num_tickets = 1  # a client keeps one session per endpoint (pool.py); the default sends two
    return context


def mutual_client_context(cert: Path, key: Path, ca: Path, *, alpn: Sequence[str] = ALPN_HTTP1) -> ssl.SSLContext:
    """Outbound `mutual`: present our identity, verify the chain; the SPIFFE ID is checked after
    the handshake (`peer_identity`), not the hostname."""
    context = _base_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key)
    context.load_verify_locations(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def simple_client_context(ca: Path | None = None, *, alpn: Sequence[str] = ALPN_HTTP1) -> ssl.SSLContext:
    """Outbound `simple`: ordinary HTTPS, hostname verified, system trust store unless `ca`."""
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def peer_identity(peercert: dict[str, Any] | None) -> str | None:
    """The SPIFFE ID in a verified peer certificate's URI SAN (exactly one is allowed)."""
    if not peercert:
        return None
    ids = [
        value
        for kind, value in peercert.get("subjectAltName", ())
        if kind == URI_SAN and value.startswith(SPIFFE_PREFIX)
    ]
    return ids[0] if len(ids) == 1 else None


class AllowList:
    """Caller SPIFFE IDs that may call in: exact IDs, or patterns where `*` is one path segment."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact = frozenset(p for p in self.patterns if "*" not in p)
        self._globs = tuple(self._compile(p) for p in self.patterns if "*" in p)

    @staticmethod
    def _compile(pattern: str) -> re.Pattern[str]:
        parts = [re.escape(part) for part in pattern.split("*")]
        return re.compile("[^/]*".join(parts))

    def allows(self, identity: str | None) -> bool:
        if identity is None:
            return False
        return identity in self._exact or any(g.fullmatch(identity) for g in self._globs)


def failure_reason(error: BaseException) -> str:
    """A short, stable reason for a failed handshake: no_client_cert, unknown_ca, expired,
    not_yet_valid, protocol, plaintext, timeout, or other."""
    text = f"{getattr(error, 'reason', '') or ''} {error}"
    cause = error.__cause__ or error.__context__
    if cause is not None:
        text += f" {getattr(cause, 'reason', '') or ''} {cause}"
    for needle, reason in _FAILURE_REASONS:
        if needle in text:
            return reason
    return "other"

"""Unit tests for sidecar.tls: allow-list matching, SPIFFE IDs of peers, handshake failure reasons,
and the contexts' protocol floor."""

from __future__ import annotations

import ssl

import pytest

from sidecar.tls import AllowList, failure_reason, peer_identity, simple_client_context

MESH = "spiffe://mesh.local"


@pytest.mark.parametrize(
    ("pattern", "identity", "allowed"),
    [
        (f"{MESH}/ns/default/sa/orders", f"{MESH}/ns/default/sa/orders", True),
        (f"{MESH}/ns/default/sa/orders", f"{MESH}/ns/default/sa/orders2", False),
        (f"{MESH}/ns/default/sa/*", f"{MESH}/ns/default/sa/anything", True),
        (f"{MESH}/ns/default/sa/*", f"{MESH}/ns/default/sa/a/b", False),  # one segment only
        (f"{MESH}/ns/*/sa/ops", f"{MESH}/ns/prod/sa/ops", True),
        (f"{MESH}/ns/*/sa/ops", f"{MESH}/ns/prod/sa/dev", False),
        (f"{MESH}/ns/default/sa/front*", f"{MESH}/ns/default/sa/frontend", True),
        (f"{MESH}/ns/default/sa/*", "spiffe://other.local/ns/default/sa/x", False),
        (f"{MESH}/ns/default/sa/a.b", f"{MESH}/ns/default/sa/aXb", False),  # dots are literal
    ],
)
def test_allow_list_matching(pattern: str, identity: str, allowed: bool) -> None:
    assert AllowList([pattern]).allows(identity) is allowed


def test_no_identity_is_never_allowed_and_empty_list_allows_nobody() -> None:
    assert not AllowList([f"{MESH}/*"]).allows(None)
    assert not AllowList([]).allows(f"{MESH}/ns/default/sa/x")


def test_peer_identity_takes_exactly_one_spiffe_uri() -> None:
    one = {"subjectAltName": (("URI", f"{MESH}/ns/a/sa/b"), ("DNS", "b.example"))}
    assert peer_identity(one) == f"{MESH}/ns/a/sa/b"
    two = {"subjectAltName": (("URI", f"{MESH}/ns/a/sa/b"), ("URI", f"{MESH}/ns/a/sa/c"))}
    assert peer_identity(two) is None
    assert peer_identity({"subjectAltName": (("URI", "https://example.com"),)}) is None
    assert peer_identity(None) is None
    assert peer_identity({}) is None


def _wrapped(message: str, reason: str = "") -> Exception:
    inner = ssl.SSLError(1, message)
    inner.reason = reason  # type: ignore[misc]
    outer = Exception("handshake failed")
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("message", "reason", "expected"),
    [
        ("[SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE] peer did not return a certificate", "", "no_client_cert"),
        ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required", "", "no_client_cert"),
        ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired", "", "expired"),
        ("certificate verify failed: certificate is not yet valid", "", "not_yet_valid"),
        ("certificate verify failed: unable to get local issuer certificate", "", "unknown_ca"),
        ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", "", "unknown_ca"),
        ("[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol", "", "protocol"),
        ("[SSL: HTTP_REQUEST] http request", "HTTP_REQUEST", "plaintext"),
        ("something else entirely", "", "other"),
    ],
)
def test_failure_reasons(message: str, reason: str, expected: str) -> None:
    assert failure_reason(_wrapped(message, reason)) == expected


def test_client_contexts_refuse_anything_below_tls_1_2() -> None:
    assert simple_client_context().minimum_version == ssl.TLSVersion.TLSv1_2

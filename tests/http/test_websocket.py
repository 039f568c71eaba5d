"""sidecar.http.websocket: which requests are WebSocket upgrades, and the Upgrade/Connection fields
that cross a hop for them."""

from __future__ import annotations

import pytest

from sidecar.http.message import Headers
from sidecar.http.websocket import is_websocket_upgrade, websocket_upgrade_fields


@pytest.mark.parametrize(
    ("method", "minor", "upgrade", "connection"),
    [
        (b"GET", 1, [b"websocket"], [b"Upgrade"]),
        (b"GET", 1, [b"WebSocket"], [b"keep-alive, Upgrade"]),  # Firefox sends both tokens
        (b"GET", 1, [b"foo, websocket"], [b"upgrade"]),
        (b"GET", 1, [b"websocket"], [b"keep-alive", b"upgrade"]),  # Connection split over two fields
    ],
)
def test_websocket_upgrades(method: bytes, minor: int, upgrade: list[bytes], connection: list[bytes]) -> None:
    assert is_websocket_upgrade(method, minor, upgrade, connection)


@pytest.mark.parametrize(
    ("method", "minor", "upgrade", "connection"),
    [
        (b"POST", 1, [b"websocket"], [b"Upgrade"]),  # RFC 6455 §4.1: the handshake is a GET
        (b"GET", 0, [b"websocket"], [b"Upgrade"]),  # HTTP/1.0 has no Upgrade
        (b"GET", 1, [b"h2c"], [b"Upgrade, HTTP2-Settings"]),
        (b"GET", 1, [b"websocketx"], [b"Upgrade"]),
        (b"GET", 1, [b"websocket"], []),  # Upgrade not named by Connection: not an upgrade request
        (b"GET", 1, [b"websocket"], [b"keep-alive"]),
        (b"GET", 1, [], [b"Upgrade"]),
    ],
)
def test_not_websocket_upgrades(method: bytes, minor: int, upgrade: list[bytes], connection: list[bytes]) -> None:
    assert not is_websocket_upgrade(method, minor, upgrade, connection)


def test_upgrade_fields_keep_the_senders_spelling_and_only_the_websocket_tokens() -> None:
    headers = Headers.of(
        [(b"UPGRADE", b"foo/2, WebSocket"), (b"connection", b"keep-alive, Upgrade, X-Hop"), (b"Host", b"a")]
    )
    assert websocket_upgrade_fields(headers) == [
        (b"upgrade", b"UPGRADE", b"WebSocket"),
        (b"connection", b"connection", b"Upgrade"),
    ]


def test_upgrade_fields_default_when_the_sender_omitted_them() -> None:
    # A 101 answer without Upgrade/Connection is still forwarded with the fields the client expects.
    assert websocket_upgrade_fields(Headers()) == [
        (b"upgrade", b"Upgrade", b"websocket"),
        (b"connection", b"Connection", b"Upgrade"),
    ]

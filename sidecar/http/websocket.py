"""WebSocket over HTTP/1.1 `Upgrade` (RFC 6455 §4), the header side: which requests are WebSocket
upgrades, and which Upgrade/Connection fields cross a hop for them.

A hop drops hop-by-hop fields, `Upgrade` among them except for WebSocket: a WebSocket upgrade keeps
`Upgrade: websocket` and `Connection: upgrade`, and nothing else its Upgrade or Connection fields
named (other offered protocols, fields listed in Connection). Every other upgrade (h2c, TLS, any
token) is stripped like any hop-by-hop field, so the app never switches protocols behind our back.

The proxy does not check the handshake's `Sec-WebSocket-*` fields: they are end to end, and the app
answers them. Pure functions over header values: no trio here.
"""

from __future__ import annotations

from .message import Field, Headers

WEBSOCKET = b"websocket"
UPGRADE = b"upgrade"
_UPGRADE_FIELD: Field = (b"upgrade", b"Upgrade", b"websocket")
_CONNECTION_FIELD: Field = (b"connection", b"Connection", b"Upgrade")


def _token(values: list[bytes] | tuple[bytes, ...], wanted: bytes) -> bytes | None:
    """The list element equal (case-insensitively) to `wanted`, as the sender spelled it, or None."""
    for value in values:
        for item in value.split(b","):
            item = item.strip()
            if item.lower() == wanted:
                return item
    return None


def is_websocket_upgrade(
    method: bytes, minor: int, upgrade: list[bytes] | tuple[bytes, ...], connection: list[bytes] | tuple[bytes, ...]
) -> bool:
    """Whether a request head asks to switch to WebSocket: a GET over HTTP/1.1 whose Upgrade lists
    `websocket` and whose Connection lists `upgrade` (RFC 6455 §4.1, items 2, 5 and 6)."""
    return (
        method == b"GET"
        and minor == 1
        and _token(upgrade, WEBSOCKET) is not None
        and _token(connection, UPGRADE) is not None
    )


def websocket_upgrade_fields(headers: Headers) -> list[Field]:
    """The Upgrade and Connection fields a WebSocket upgrade carries to the next hop (request or 101
    response), taken before the hop-by-hop strip: names and tokens as the sender spelled them, but
    only the `websocket` and `upgrade` tokens."""
    upgrade: Field | None = None
    connection: Field | None = None
    for lname, raw, value in headers.fields:
        if lname == b"upgrade" and upgrade is None:
            token = _token((value,), WEBSOCKET)
            if token is not None:
                upgrade = (lname, raw, token)
        elif lname == b"connection" and connection is None:
            token = _token((value,), UPGRADE)
            if token is not None:
                connection = (lname, raw, token)
    return [upgrade or _UPGRADE_FIELD, connection or _CONNECTION_FIELD]

"""sidecar.pipeline.forwarding: request-side forwarding headers, response-side hop-by-hop stripping."""

from __future__ import annotations

import uuid

import pytest

from sidecar.http.message import ConnectionInfo, EmptyBody, Headers, Request, Response, WebSocketRequest
from sidecar.pipeline.forwarding import forwarding
from sidecar.pipeline.handler import compose
from sidecar.pipeline.local_reply import local_reply


def _request(pairs: list[tuple[bytes, bytes]], *, tls: bool = False, peer: str = "192.168.1.20") -> Request:
    return Request(
        b"POST",
        b"/orders",
        b"orders",
        Headers.of(pairs),
        EmptyBody(),
        ConnectionInfo(peer, 40000, tls=tls),
        scheme=b"https" if tls else b"http",
    )


async def test_inner_sees_forwarding_headers_and_client_sees_stripped_response() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def inner(request: Request) -> Response:
        seen.append([(raw, value) for _, raw, value in request.headers.fields])
        return Response(
            200,
            Headers.of(
                [
                    (b"Content-Type", b"application/json"),
                    (b"Connection", b"keep-alive, X-Upstream-Hop"),
                    (b"X-Upstream-Hop", b"1"),
                    (b"Keep-Alive", b"timeout=5"),
                    (b"Transfer-Encoding", b"chunked"),
                    (b"Proxy-Authenticate", b"Basic"),
                    (b"Upgrade", b"h2c"),
                    (b"X-App-Header", b"kept"),
                ]
            ),
        )

    handler = forwarding(inner)
    request = _request(
        [
            (b"Host", b"orders"),
            (b"Connection", b"X-Client-Hop"),
            (b"X-Client-Hop", b"secret"),
            (b"Proxy-Authorization", b"Basic abc"),
            (b"X-Forwarded-For", b"203.0.113.9"),
            (b"X-Forwarded-Proto", b"gopher"),
            (b"X-Request-Id", b"req-1"),
            (b"Content-Type", b"text/plain"),
        ]
    )
    response = await handler(request)

    assert seen == [
        [
            (b"Host", b"orders"),
            (b"X-Forwarded-For", b"203.0.113.9, 192.168.1.20"),
            (b"X-Request-Id", b"req-1"),
            (b"Content-Type", b"text/plain"),
            (b"x-forwarded-proto", b"http"),
        ]
    ]
    assert [(raw, value) for _, raw, value in response.headers.fields] == [
        (b"Content-Type", b"application/json"),
        (b"X-App-Header", b"kept"),
    ]
    assert response.status == 200


async def test_tls_hop_sets_https_and_generates_request_id() -> None:
    seen: list[Headers] = []

    async def inner(request: Request) -> Response:
        seen.append(request.headers.copy())
        return Response(204, Headers())

    await forwarding(inner)(_request([(b"Host", b"orders")], tls=True, peer="10.0.0.5"))
    headers = seen[0]
    assert headers.get_all(b"x-forwarded-proto") == [b"https"]
    assert headers.get_all(b"x-forwarded-for") == [b"10.0.0.5"]
    rid = headers.get(b"x-request-id")
    assert rid is not None
    assert uuid.UUID(rid.decode()).version == 4


async def test_local_reply_below_forwarding_has_its_headers_intact() -> None:
    from sidecar.http.errors import NoRoute

    async def terminal(request: Request) -> Response:
        raise NoRoute()

    handler = compose(forwarding, local_reply, terminal=terminal)
    response = await handler(_request([(b"Host", b"nowhere")]))
    assert response.status == 404
    assert response.headers.get(b"x-sidecar-reason") == b"no_route"
    assert response.headers.get(b"content-length") is not None


async def test_compose_order() -> None:
    calls: list[str] = []

    def layer(name: str):
        def wrap(inner):
            async def handle(request: Request) -> Response:
                calls.append(f"{name}>")
                response = await inner(request)
                calls.append(f"<{name}")
                return response

            return handle

        return wrap

    async def terminal(request: Request) -> Response:
        calls.append("terminal")
        return Response(200, Headers())

    await compose(layer("a"), layer("b"), terminal=terminal)(_request([]))
    assert calls == ["a>", "b>", "terminal", "<b", "<a"]


# --------------------------------------------------------------------------------------------------
# WebSocket upgrades: Upgrade is hop-by-hop except for WebSocket
# --------------------------------------------------------------------------------------------------

_UPGRADE_REQUEST = [
    (b"Host", b"orders"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"keep-alive, Upgrade, X-Hop"),
    (b"X-Hop", b"dropped"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"Sec-WebSocket-Version", b"13"),
]
_SWITCHING = [
    (b"Upgrade", b"websocket"),
    (b"Connection", b"Upgrade"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
]


def _websocket_request(pairs: list[tuple[bytes, bytes]]) -> WebSocketRequest:
    return WebSocketRequest(
        b"GET", b"/chat", b"orders", Headers.of(pairs), EmptyBody(), ConnectionInfo("192.168.1.20", 40000)
    )


async def _forward(request: Request, response: Response) -> tuple[list[tuple[bytes, bytes]], Response]:
    seen: list[tuple[bytes, bytes]] = []

    async def inner(request: Request) -> Response:
        seen.extend((raw, value) for _, raw, value in request.headers.fields)
        return response

    return seen, await forwarding(inner)(request)


def _fields(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(raw, value) for _, raw, value in headers.fields]


async def test_websocket_upgrade_keeps_upgrade_and_connection_upgrade_only() -> None:
    seen, response = await _forward(_websocket_request(_UPGRADE_REQUEST), Response(101, Headers.of(_SWITCHING)))
    names = [name.lower() for name, _ in seen]
    assert (b"Upgrade", b"websocket") in seen
    assert (b"Connection", b"Upgrade") in seen
    assert names.count(b"upgrade") == 1 and names.count(b"connection") == 1
    assert b"x-hop" not in names and b"keep-alive" not in names  # still hop-by-hop
    assert (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==") in seen  # end to end
    assert b"x-forwarded-for" in names and b"x-request-id" in names
    assert response.status == 101
    assert _fields(response.headers) == [
        (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
    ]


async def test_refused_websocket_upgrade_answer_is_stripped_like_any_response() -> None:
    refused = Response(403, Headers.of([(b"Upgrade", b"websocket"), (b"Connection", b"close"), (b"X-App", b"1")]))
    _, response = await _forward(_websocket_request(_UPGRADE_REQUEST), refused)
    assert _fields(response.headers) == [(b"X-App", b"1")]


@pytest.mark.parametrize(
    "upgrade",
    [
        [(b"Upgrade", b"h2c"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"HTTP2-Settings", b"AAMAAABkAAQAAP__")],
        [(b"Upgrade", b"foo"), (b"Connection", b"upgrade")],
        # Upgrade: websocket on a request the server did not classify as an upgrade (a POST, say)
        [(b"Upgrade", b"websocket"), (b"Connection", b"upgrade")],
    ],
)
async def test_every_other_upgrade_is_stripped(upgrade: list[tuple[bytes, bytes]]) -> None:
    seen, _ = await _forward(_request([(b"Host", b"orders"), *upgrade]), Response(200, Headers()))
    names = {name.lower() for name, _ in seen}
    assert not names & {b"upgrade", b"connection", b"http2-settings"}

"""sidecar.pipeline.forwarding: request-side forwarding headers, response-side hop-by-hop stripping."""

from __future__ import annotations

import uuid

from sidecar.http.message import ConnectionInfo, EmptyBody, Headers, Request, Response
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

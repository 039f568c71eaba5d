"""app -> sidecar A (outbound) -> sidecar B (inbound) -> app B: headers, bodies, trailers, keep-alive,
over both hops (and, where the protocols translate, over every pairing of downstream, hop and app)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import trio

from .apps import RawOrigin, header_values
from .conftest import Mesh, Pairing, SidecarHandle, mesh_service, spiffe_id
from .matrix import BodyReceived, MatrixPath, RecordingApp, RudeApp, Trailers


async def two_sidecars(
    mesh: Mesh, app_port: int, app_protocol: str = "http1", **service_fields: object
) -> tuple[SidecarHandle, SidecarHandle]:
    b = await mesh.sidecar(service="orders", inbound_app=app_port, inbound={"app_protocol": app_protocol})
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b, **service_fields)])
    return a, b


def downstream_client(a: SidecarHandle, downstream: str, **options: Any) -> httpx.AsyncClient:
    """httpx to sidecar A's outbound listener: HTTP/1.1, or h2c with prior knowledge."""
    h2c = downstream == "h2c"
    return httpx.AsyncClient(base_url=a.outbound_url, http1=not h2c, http2=h2c, **options)


async def test_forwarding_headers_across_both_hops(mesh: Mesh, pairing: Pairing) -> None:
    """On every pairing: hop-by-hop headers are not forwarded and TE passes only as `trailers`; Host and
    :authority pass unchanged; x-request-id is generated; both hops append to x-forwarded-for and
    x-forwarded-proto is set; the caller's XFCC is replaced by B's; x-sidecar-attempt is set by the
    outbound side; an HTTP/2 client's split cookie reaches the app whole."""
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, app_protocol=pairing.app, protocol=pairing.hop)
    headers = [
        ("host", "Orders:8080"),  # routed without port and case, passed on as it is
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-client-cert", "By=spiffe://evil/x;URI=spiffe://evil/admin"),
        ("x-sidecar-attempt", "7"),
    ]
    if pairing.downstream == "http1":
        headers += [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "must not pass"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic c2VjcmV0"),
            ("te", "deflate, trailers"),
            ("cookie", "a=1; b=2"),
        ]
    else:  # HTTP/2 has no connection-specific fields (RFC 9113 §8.2.2); a cookie may come in crumbs
        headers += [("te", "trailers"), ("cookie", "a=1"), ("cookie", "b=2")]
    async with downstream_client(a, pairing.downstream) as client:
        r = await client.get("/info", headers=headers)
    assert r.status_code == 200
    info = r.json()
    # Both hops append (the app's address at A, A's address at B); nothing is overwritten.
    assert header_values(info, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1, 127.0.0.1"]
    assert header_values(info, "x-forwarded-proto") == ["https"]  # the last hop (A to B) was mutual TLS
    for name in ("x-hop", "keep-alive", "proxy-authorization", "connection"):
        assert header_values(info, name) == [], name
    assert header_values(info, "te") == ["trailers"]
    (request_id,) = header_values(info, "x-request-id")
    assert uuid.UUID(request_id).version == 4
    assert header_values(info, "x-sidecar-attempt") == ["1"]  # set by the outbound side, kept by B
    assert header_values(info, "host") == ["Orders:8080"]
    assert header_values(info, "x-forwarded-client-cert") == [f"By={spiffe_id('orders')};URI={spiffe_id('frontend')}"]
    cookies = header_values(info, "cookie")
    assert "; ".join(cookies) == "a=1; b=2"
    if pairing.app == "http1":
        assert cookies == ["a=1; b=2"]  # one field: HTTP/1.1 has no crumbs (RFC 9113 §8.2.3)


async def test_hop_by_hop_response_headers_are_not_forwarded(
    mesh: Mesh, hop: str, downstream: str, nursery: trio.Nursery
) -> None:
    """Hop-by-hop headers (`Connection` and what it names, `Keep-Alive`, `Proxy-*`, `Upgrade`) are not
    forwarded in the response direction either (an HTTP/2 client would refuse the response); the others
    pass as the app sent them, a repeated `Set-Cookie` as separate fields in their order."""

    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Resp-Hop\r\nX-Resp-Hop: secret\r\n"
            b"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nProxy-Foo: 1\r\nUpgrade: h2c\r\n"
            b"Set-Cookie: a=1; Path=/\r\nX-Keep: yes\r\nSet-Cookie: b=2, c=3\r\ncontent-length: 2\r\n\r\nok"
        )
        return True

    origin = RawOrigin(respond)
    a, _ = await two_sidecars(mesh, await nursery.start(origin.serve), protocol=hop)
    async with downstream_client(a, downstream, headers={"host": "orders"}) as client:
        r = await client.get("/x")
    assert (r.status_code, r.text, r.headers["x-keep"]) == (200, "ok", "yes")
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2, c=3"]
    for name in ("x-resp-hop", "keep-alive", "proxy-authenticate", "proxy-foo", "upgrade"):
        assert name not in r.headers, name
    assert "x-resp-hop" not in r.headers.get("connection", "").lower()


async def test_header_blocks_bigger_than_a_frame_cross_every_pairing(mesh: Mesh, pairing: Pairing) -> None:
    """A header block within `limits.max_request_headers` (64 KiB by default) crosses both hops on every
    pairing, larger than an HTTP/2 frame (CONTINUATION), in the request and in the response."""
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, app_protocol=pairing.app, protocol=pairing.hop)
    value = "".join(chr(ord("a") + i % 26) for i in range(40_000))
    async with downstream_client(a, pairing.downstream, headers={"host": "orders"}) as client:
        r = await client.get("/info?big=40000", headers={"x-big": value})
    assert r.status_code == 200
    assert header_values(r.json(), "x-big") == [value]
    assert r.headers["x-big"] == "b" * 40_000


async def test_request_id_is_kept_when_present(hop: str, mesh: Mesh) -> None:
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, protocol=hop)
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:
        r = await client.get("/info", headers={"host": "orders", "x-request-id": "abc-123"})
    assert header_values(r.json(), "x-request-id") == ["abc-123"]


async def test_bodies_stream_both_ways(hop: str, mesh: Mesh) -> None:
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, protocol=hop)
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}, timeout=30) as client:
        for size in (0, 1, 65535, 65537, 1024 * 1024):
            payload = bytes(i % 251 for i in range(size))
            r = await client.post("/echo", content=payload)
            assert r.status_code == 200
            assert r.content == payload, size

        async def chunks() -> object:
            for i in range(50):
                yield bytes([i]) * 10_000

        r = await client.post("/echo", content=chunks())  # chunked upload
        assert r.content == b"".join(bytes([i]) * 10_000 for i in range(50))
        r = await client.get("/bytes/3000000")
        assert r.content == b"x" * 3_000_000


async def test_header_name_casing_is_kept_end_to_end(hop: str, mesh: Mesh, nursery: trio.Nursery) -> None:
    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Legacy-Header: Yes\r\ncontent-length: 2\r\n\r\nok")
        return True

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    a, _ = await two_sidecars(mesh, port, protocol=hop)
    stream = await trio.open_tcp_stream("127.0.0.1", a.outbound)
    await stream.send_all(b"GET /x HTTP/1.1\r\nHost: orders\r\nX-MiXeD-CaSe: 1\r\nACCEPT: */*\r\n\r\n")
    reply = await _read_until(stream, b"ok")
    assert b"\r\nX-Legacy-Header: Yes\r\n" in reply
    head = origin.heads[0]
    assert b"\r\nX-MiXeD-CaSe: 1" in head and b"\r\nACCEPT: */*" in head and b"\r\nHost: orders" in head


async def _read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    data = b""
    with trio.fail_after(10):
        while marker not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


async def test_trailers_pass_through_both_ways(mesh: Mesh, pairing: Pairing) -> None:
    """Trailers (HTTP/2 and chunked HTTP/1.1) pass through, translated between the two on every pairing:
    the request's reach the app, the app's reach the client."""
    app = RudeApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    body = [b"hello", Trailers(((b"x-request-sum", b"42"),))]
    reply = await path.exchange(client, "POST", "/trailers", body=body, headers=[(b"te", b"trailers")])
    assert (reply.status, reply.complete, reply.body) == (200, True, b"part one,part two"), reply
    assert reply.trailers == {"x-checksum": "abc123"}
    (seen,) = app.of("/trailers")
    assert (seen.ended, seen.received, seen.trailers) == (True, 5, [(b"x-request-sum", b"42")])


async def test_bodies_stream_as_they_go_on_every_pairing(mesh: Mesh, pairing: Pairing) -> None:
    """Bodies are streamed both ways; nothing buffers a whole body: each piece of a request reaches the
    app, and comes back echoed, before the client sends the next (a path that waited for a whole body
    would keep this exchange waiting until its deadline)."""
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    pieces = [bytes([ord("a") + i]) * 1000 for i in range(3)]
    body = [pieces[0], BodyReceived(1000), pieces[1], BodyReceived(2000), pieces[2]]
    reply = await path.exchange(client, "POST", "/echo", body=body)
    assert (reply.status, reply.complete, reply.body) == (200, True, b"".join(pieces)), reply


async def test_a_response_delimited_by_close_arrives_whole(
    mesh: Mesh, hop: str, downstream: str, nursery: trio.Nursery
) -> None:
    """An HTTP/1.1 app may end a body by closing the connection (no length, not chunked); the response
    crosses both hops whole, framed anew for the client, and the closed connection is not reused."""
    body = bytes(range(256)) * 800

    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
        return False

    origin = RawOrigin(respond)
    a, _ = await two_sidecars(mesh, await nursery.start(origin.serve), protocol=hop)
    async with downstream_client(a, downstream, headers={"host": "orders"}) as client:
        for _ in range(3):
            r = await client.get("/x")
            assert r.status_code == 200 and r.content == body


async def test_keep_alive_is_reused_on_both_sides(hop: str, mesh: Mesh, nursery: trio.Nursery) -> None:
    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    a, b = await two_sidecars(mesh, port, protocol=hop)
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        for _ in range(25):
            assert (await client.get("/")).text == "ok"
    assert origin.connections == 1
    assert a.runtime.listeners["outbound"].accepted == 1
    assert b.runtime.listeners["inbound"].accepted == 1
    assert len(origin.heads) == 25


async def test_idle_keep_alive_connections_park_and_serve_again_on_both_sides(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    """The app's connection to A (plaintext) and A's pooled connection to B (mutual TLS, HTTP/1.1)
    give their tasks up while idle and carry the next requests as before, on the same connections."""

    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    a, b = await two_sidecars(mesh, port, protocol="http1")
    outbound, inbound = a.runtime.listeners["outbound"], b.runtime.listeners["inbound"]
    for listener in (outbound, inbound):
        listener.tick, listener.park_after = 0.05, 0.1
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        for _ in range(3):
            assert (await client.get("/")).text == "ok"
            with trio.fail_after(10):
                while not (len(outbound.idle_connections) == 1 and len(inbound.idle_connections) == 1):
                    await trio.sleep(0.05)
    assert (outbound.accepted, inbound.accepted, origin.connections) == (1, 1, 1)
    assert outbound.connections == 1 and inbound.connections == 1


async def test_head_204_and_304_carry_no_body(mesh: Mesh, pairing: Pairing) -> None:
    """Any pairing of downstream and upstream protocol works: answers to HEAD, 204 and 304 carry no
    body, and the connections stay in step after them."""
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, app_protocol=pairing.app, protocol=pairing.hop)
    async with downstream_client(a, pairing.downstream, headers={"host": "orders"}) as client:
        r = await client.head("/bytes/1000")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "1000"
        r = await client.get("/status/204")
        assert r.status_code == 204 and r.content == b""
        r = await client.get("/status/304")
        assert r.status_code == 304 and r.content == b""
        r = await client.get("/info")  # the connection is still in step after the bodiless replies
        assert r.status_code == 200 and r.json()["path"] == "/info"


async def test_a_304_or_head_answer_with_framing_headers_carries_no_body(
    mesh: Mesh, hop: str, downstream: str, nursery: trio.Nursery
) -> None:
    """A 304 may carry the Content-Length of the representation, an answer to HEAD the framing a GET
    would get (here chunked): no body follows either, and the connections stay in step."""

    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        if head.startswith(b"HEAD "):
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        elif head.startswith(b"GET /304 "):
            await stream.send_all(b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 1234\r\n\r\n')
        else:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    origin = RawOrigin(respond)
    a, _ = await two_sidecars(mesh, await nursery.start(origin.serve), protocol=hop)
    async with downstream_client(a, downstream, headers={"host": "orders"}) as client:
        for _ in range(2):
            r = await client.head("/x")
            assert (r.status_code, r.content) == (200, b"")
            r = await client.get("/304", headers={"if-none-match": '"x"'})
            assert (r.status_code, r.content) == (304, b"")
            r = await client.get("/ok")
            assert (r.status_code, r.text) == (200, "ok")


async def test_expect_100_continue_with_curl(hop: str, mesh: Mesh, tmp_path: object) -> None:
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, protocol=hop)
    payload = bytes(range(256)) * 4096  # 1 MiB
    path = trio.Path(str(tmp_path)) / "payload.bin"
    await path.write_bytes(payload)
    result = await trio.run_process(
        [
            "curl",
            "-sS",
            "-v",
            "-H",
            "Host: orders",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            f"@{path}",
            f"{a.outbound_url}/echo",
        ],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert b"HTTP/1.1 100 Continue" in result.stderr


async def test_an_h2c_request_read_to_its_length_is_not_reset_before_its_end_stream(hop: str, mesh: Mesh) -> None:
    """A client that sends all its content-length bytes and END_STREAM in a later frame (httpx does)
    gets its whole response and no RST_STREAM: resetting it would fail a finished request there."""
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, protocol=hop)
    stream = await trio.open_tcp_stream("127.0.0.1", a.outbound)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    head = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"orders"), (b":path", b"/echo")]
    conn.send_headers(1, [*head, (b"content-length", b"5")])
    conn.send_data(1, b"hello")  # no END_STREAM yet
    await stream.send_all(conn.data_to_send())
    events: list[h2.events.Event] = []
    with trio.fail_after(5):
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            events += conn.receive_data(await stream.receive_some(65536))
            await stream.send_all(conn.data_to_send())
    with trio.move_on_after(0.3):  # whatever follows the response
        while data := await stream.receive_some(65536):
            events += conn.receive_data(data)
    body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert body == b"hello"
    assert not [e for e in events if isinstance(e, h2.events.StreamReset)]
    conn.end_stream(1)  # the END_STREAM arrives late, and the connection goes on
    conn.send_headers(3, [*head[:3], (b":path", b"/info")], end_stream=True)
    await stream.send_all(conn.data_to_send())
    with trio.fail_after(5):
        while not any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 3 for e in events):
            events += conn.receive_data(await stream.receive_some(65536))
    await stream.aclose()

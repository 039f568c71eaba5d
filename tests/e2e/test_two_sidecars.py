"""app -> sidecar A (outbound) -> sidecar B (inbound) -> app B: headers, bodies, keep-alive."""

from __future__ import annotations

import hashlib
import uuid

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
import trio

from .apps import RawOrigin, header_values
from .conftest import Mesh, mesh_service


@pytest.fixture(params=["http1", "auto"])
def hop(request: pytest.FixtureRequest) -> str:
    """The sidecar-to-sidecar protocol: HTTP/1.1, or HTTP/2 chosen by ALPN."""
    return str(request.param)


async def two_sidecars(mesh: Mesh, app_port: int, **service_fields: object) -> tuple[object, object]:
    b = await mesh.sidecar(service="orders", inbound_app=app_port)
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b, **service_fields)])
    return a, b


async def test_forwarding_headers_across_both_hops(hop: str, mesh: Mesh) -> None:
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, protocol=hop)
    async with httpx.AsyncClient(base_url=a.outbound_url) as client:
        r = await client.get(
            "/info",
            headers={
                "host": "orders",
                "x-forwarded-for": "203.0.113.7",
                "x-forwarded-proto": "https",
                "connection": "keep-alive, x-hop",
                "x-hop": "must not pass",
                "keep-alive": "timeout=5",
                "proxy-authorization": "Basic c2VjcmV0",
                "te": "trailers",
                "x-sidecar-attempt": "7",
            },
        )
    assert r.status_code == 200
    info = r.json()
    # Both hops append (the app's address at A, A's address at B); nothing is overwritten.
    assert header_values(info, "x-forwarded-for") == ["203.0.113.7, 127.0.0.1, 127.0.0.1"]
    assert header_values(info, "x-forwarded-proto") == ["https"]  # the last hop (A to B) was mutual TLS
    for hop in ("x-hop", "keep-alive", "proxy-authorization", "connection"):
        assert header_values(info, hop) == [], hop
    assert header_values(info, "te") == ["trailers"]
    (request_id,) = header_values(info, "x-request-id")
    assert uuid.UUID(request_id).version == 4
    assert header_values(info, "x-sidecar-attempt") == ["1"]  # set by the outbound side, kept by B
    assert header_values(info, "host") == ["orders"]


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


async def test_chunked_trailers_pass_through_both_ways(hop: str, mesh: Mesh, nursery: trio.Nursery) -> None:
    received: list[bytes] = []

    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        # read the chunked request body to its end (it carries a trailer), then answer with one
        body = origin.pending
        if not body.endswith(b"\r\n\r\n"):
            body += await _read_until(stream, b"\r\n\r\n")
        origin.pending = b""
        received.append(body)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            b"9\r\npart one,\r\n8\r\npart two\r\n0\r\nX-Checksum: abc123\r\n\r\n"
        )
        return True

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    a, _ = await two_sidecars(mesh, port, protocol=hop)
    stream = await trio.open_tcp_stream("127.0.0.1", a.outbound)
    await stream.send_all(
        b"POST /upload HTTP/1.1\r\nHost: orders\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Request-Sum: 42\r\n\r\n"
    )
    reply = await _read_until(stream, b"0\r\nX-Checksum: abc123\r\n\r\n")
    assert reply.endswith(b"\r\n0\r\nX-Checksum: abc123\r\n\r\n"), reply
    assert b"part one," in reply and b"part two" in reply
    assert b"transfer-encoding: chunked" in origin.heads[0].lower()
    assert received[0] == b"5\r\nhello\r\n0\r\nX-Request-Sum: 42\r\n\r\n"


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


async def test_head_204_and_304_carry_no_body(hop: str, mesh: Mesh) -> None:
    app = await mesh.origin()
    a, _ = await two_sidecars(mesh, app, protocol=hop)
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        r = await client.head("/bytes/1000")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "1000"
        r = await client.get("/status/204")
        assert r.status_code == 204 and r.content == b""
        r = await client.get("/status/304")
        assert r.status_code == 304 and r.content == b""
        r = await client.get("/info")  # the connection is still in step after the bodiless replies
        assert r.status_code == 200 and r.json()["path"] == "/info"


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

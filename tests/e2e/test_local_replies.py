"""Replies the sidecar makes itself (SPEC §5), malformed and smuggling-shaped requests, slow clients."""

from __future__ import annotations

import httpx
import pytest
import trio

from .apps import RawOrigin
from .conftest import Mesh, free_port, service


async def raw_exchange(port: int, data: bytes, *, timeout: float = 10) -> tuple[bytes, bool]:
    """Send raw bytes; return everything received and whether the server closed the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    received = b""
    closed = False
    with trio.move_on_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if b"\r\n\r\n" in received and closed is False and received.count(b"HTTP/1.1") >= 1:
                # give the server a moment to close, which is what these tests look for
                with trio.move_on_after(0.5):
                    rest = await stream.receive_some(65536)
                    received += rest
                    closed = not rest
                break
    await stream.aclose()
    return received, closed


SMUGGLING = {
    "content-length and transfer-encoding": (
        b"POST /info HTTP/1.1\r\nHost: orders\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "differing content-lengths": (
        b"POST /info HTTP/1.1\r\nHost: orders\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
    ),
    "content-length list": b"POST /info HTTP/1.1\r\nHost: orders\r\nContent-Length: 4, 5\r\n\r\nabcde",
    "obfuscated transfer-encoding": (
        b"POST /info HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding list": (
        b"POST /info HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "space before colon": b"POST /info HTTP/1.1\r\nHost: orders\r\nContent-Length : 5\r\n\r\nabcde",
    "bare LF": b"GET /info HTTP/1.1\nHost: orders\n\n",
    "obs-fold": b"GET /info HTTP/1.1\r\nHost: orders\r\nX-A: 1\r\n  folded\r\n\r\n",
    "missing host": b"GET /info HTTP/1.1\r\n\r\n",
    "two hosts": b"GET /info HTTP/1.1\r\nHost: orders\r\nHost: evil\r\n\r\n",
    "bad request line": b"GET /info HTTP/1.1 extra\r\nHost: orders\r\n\r\n",
    "control character": b"GET /info HTTP/1.1\r\nHost: orders\r\nX-A: a\x00b\r\n\r\n",
}

BAD_CHUNKS = {
    "hex prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "not hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "data longer than size": b"3\r\nhello\r\n0\r\n\r\n",
    "oversized": b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
async def test_smuggling_shapes_get_400_and_close(mesh: Mesh, shape: str) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)])
    reply, closed = await raw_exchange(sc.outbound, SMUGGLING[shape])
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert b"x-sidecar-reason: bad_request" in reply
    assert closed


@pytest.mark.parametrize("shape", sorted(BAD_CHUNKS))
async def test_bad_chunk_sizes_get_400_and_close(mesh: Mesh, nursery: trio.Nursery, shape: str) -> None:
    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        # never answers: the request body is bad, so the sidecar must answer for it
        await trio.sleep_forever()
        return False

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    sc = await mesh.sidecar(services=[service("orders", port)])
    request = b"POST /upload HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n" + BAD_CHUNKS[shape]
    reply, closed = await raw_exchange(sc.outbound, request)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert b"x-sidecar-reason: bad_request" in reply
    assert closed


async def test_no_smuggled_request_reaches_the_app(mesh: Mesh, nursery: trio.Nursery) -> None:
    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    sc = await mesh.sidecar(services=[service("orders", port)])
    attack = (
        b"POST / HTTP/1.1\r\nHost: orders\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: orders\r\n\r\n"
    )
    reply, _ = await raw_exchange(sc.outbound, attack)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert origin.heads == []


async def test_body_over_the_limit_is_413(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)], limits={"max_request_body": "1KiB"})
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.post("/echo", content=b"x" * 2048)
        assert r.status_code == 413 and r.headers["x-sidecar-reason"] == "too_large"

    async def chunks() -> object:
        for _ in range(4):
            yield b"y" * 1000

    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.post("/info", content=chunks())  # streamed: crosses the limit on the way
        assert r.status_code == 413 and r.headers["x-sidecar-reason"] == "too_large"
        r = await client.post("/echo", content=b"z" * 1024)  # at the limit is fine
        assert r.status_code == 200 and r.content == b"z" * 1024


async def test_headers_over_the_limit_are_431(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)], limits={"max_request_headers": "4KiB"})
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info", headers={"x-big": "a" * 5000})
        assert r.status_code == 431 and r.headers["x-sidecar-reason"] == "too_large"
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info", headers={"x-small": "a" * 1000})
        assert r.status_code == 200


async def test_dead_endpoint_is_502_connect_failure(mesh: Mesh) -> None:
    sc = await mesh.sidecar(services=[service("orders", free_port())])
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info")
    assert r.status_code == 502
    assert r.headers["x-sidecar-reason"] == "upstream_connect_failure"
    assert "127.0.0.1" not in r.text


async def test_upstream_closing_without_answer_is_502_reset(mesh: Mesh, nursery: trio.Nursery) -> None:
    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        return False  # close without a response byte

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    sc = await mesh.sidecar(services=[service("orders", port)])
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.post("/info", content=b"not idempotent")
    assert r.status_code == 502 and r.headers["x-sidecar-reason"] == "upstream_reset"


async def test_garbage_from_upstream_is_502_protocol_error(mesh: Mesh, nursery: trio.Nursery) -> None:
    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"SSH-2.0-OpenSSH\r\n\r\n")
        return False

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    sc = await mesh.sidecar(services=[service("orders", port)])
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info")
    assert r.status_code == 502 and r.headers["x-sidecar-reason"] == "upstream_protocol_error"


async def test_slow_origin_hits_the_request_timeout(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin, timeouts={"request": "300ms"})])
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/slow/3000")
        assert r.status_code == 504 and r.headers["x-sidecar-reason"] == "upstream_timeout"
        r = await client.get("/slow/10")  # the sidecar keeps serving
        assert r.status_code == 200


async def test_unresolvable_endpoint_is_503_no_healthy_upstream(mesh: Mesh) -> None:
    sc = await mesh.sidecar(services=[{"name": "orders", "endpoints": [{"address": "no-such-host.invalid:80"}]}])
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info")
    assert r.status_code == 503 and r.headers["x-sidecar-reason"] == "no_healthy_upstream"


async def test_dns_endpoints_are_resolved(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(
        services=[{"name": "orders", "endpoints": [{"address": f"localhost:{origin}"}], "tls": {"mode": "disabled"}}]
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info")
    assert r.status_code == 200
    assert {e.address for e in sc.runtime.registry.clusters["orders"].endpoints} <= {
        f"127.0.0.1:{origin}",
        f"[::1]:{origin}",
    }


async def test_slow_header_client_is_cut_off_while_others_are_served(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)], limits={"header_read_timeout": "500ms"})
    slow = await trio.open_tcp_stream("127.0.0.1", sc.outbound)
    await slow.send_all(b"GET /info HTTP/1.1\r\nHost: ord")
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        for _ in range(5):
            assert (await client.get("/info")).status_code == 200
    with trio.fail_after(5):
        assert await slow.receive_some(100) == b""  # cut off


async def test_idle_keep_alive_connection_closes_after_header_read_timeout(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)], limits={"header_read_timeout": "300ms"})
    stream = await trio.open_tcp_stream("127.0.0.1", sc.outbound)
    await stream.send_all(b"GET /info HTTP/1.1\r\nHost: orders\r\n\r\n")
    with trio.fail_after(5):
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")

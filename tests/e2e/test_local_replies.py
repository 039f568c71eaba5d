"""Replies the sidecar makes itself with one sidecar in front of a plain origin, and slow
clients. The same replies through two sidecars, over every protocol pairing, and the malformed and
smuggling-shaped requests are in `test_failure_matrix.py`."""

from __future__ import annotations

import httpx
import trio

from .apps import RawOrigin
from .conftest import Mesh, free_port, service


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

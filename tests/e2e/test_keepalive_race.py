"""The keep-alive race: pooled connections closed by the app never show as 502, pooled app
connections are closed after `app_idle_timeout`, and between sidecars a connection the peer closed
while idle is seen closed (and never handed a request that cannot be re-sent)."""

from __future__ import annotations

import gc

import httpx
import pytest
import trio
from hyperframe.frame import DataFrame

from ..h2_peer import RawH2Peer
from .apps import RawOrigin
from .conftest import Mesh, mesh_service


async def test_app_closing_an_idle_connection_never_surfaces_as_502(mesh: Mesh, nursery: trio.Nursery) -> None:
    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        # Like an app whose keep-alive timeout is shorter than the sidecar's: close soon after,
        # without saying so in the response.
        await trio.sleep(0.05)
        return False

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    # app_idle_timeout far above the app's: only the race handling can save these requests.
    b = await mesh.sidecar(service="orders", inbound_app=port, inbound={"app_idle_timeout": "60s"})
    a = await mesh.sidecar(services=[mesh_service("orders", b, timeouts={"idle": "60s"})])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        for _ in range(5):
            r = await client.get("/")
            assert r.status_code == 200, r.headers.get("x-sidecar-reason")
            await trio.sleep(0.2)  # the app has closed the pooled connection by now
            r = await client.delete("/thing")  # idempotent too
            assert r.status_code == 200
            await trio.sleep(0.2)
    assert origin.connections >= 10


async def test_pooled_app_connections_close_after_app_idle_timeout(mesh: Mesh, nursery: trio.Nursery) -> None:
    closed = trio.Event()

    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        with trio.move_on_after(5):
            if await stream.receive_some(10) == b"":
                closed.set()
        return False

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    b = await mesh.sidecar(service="orders", inbound_app=port, inbound={"app_idle_timeout": "300ms"})
    async with httpx.AsyncClient(
        base_url=b.inbound_url, headers={"host": "orders"}, verify=mesh.pki.client_context()
    ) as client:
        assert (await client.get("/")).status_code == 200
    start = trio.current_time()
    with trio.fail_after(3):
        await closed.wait()
    assert trio.current_time() - start < 2.5


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
async def test_an_inbound_connection_the_peer_sidecar_ends_is_closed(mesh: Mesh, alpn: str) -> None:
    """Sidecar B closes an idle mTLS connection after its header_read_timeout, and the caller sees
    the connection end at once (the TLS stream owns the socket: closing the TCP stream under it did
    nothing, so the socket lived on until garbage collection, and a request sent into it was never
    read: the caller waited for its request timeout)."""
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app, limits={"header_read_timeout": "300ms"})
    assert b.inbound is not None
    context = mesh.pki.client_context()
    context.set_alpn_protocols([alpn])
    gc.disable()  # what closes the socket must be the sidecar, not a collection that happens to run
    try:
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", b.inbound, ssl_context=context)
        if alpn == "h2":
            peer = RawH2Peer(stream)
            await peer.start()
            await peer.send(peer.request(1))
            await peer.until(lambda: 1 in peer.ended)
            assert peer.status[1] == 200
            await peer.until_closed(timeout=5)
            return
        await stream.send_all(b"GET /info HTTP/1.1\r\nHost: orders\r\n\r\n")
        received = b""
        with trio.fail_after(5):
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not chunk:
                    break
                received += chunk
        assert received.startswith(b"HTTP/1.1 200 ")
    finally:
        gc.enable()


async def test_a_post_never_meets_a_hop_connection_the_peer_closed_while_idle(mesh: Mesh, hop: str) -> None:
    """A POST cannot be re-sent once it may have reached the app, so the pool must not hand it a
    pooled connection sidecar B has closed (B closes idle ones after its header_read_timeout), over
    either hop, nor wait on one: it is answered at once."""
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app, limits={"header_read_timeout": "300ms"})
    a = await mesh.sidecar(
        services=[mesh_service("orders", b, protocol=hop, timeouts={"idle": "60s"}, retries={"attempts": 0})]
    )
    inbound = b.runtime.listeners["inbound"]
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}, timeout=5) as client:
        for _ in range(4):
            r = await client.post("/echo", content=b"payload")
            assert r.status_code == 200, r.headers.get("x-sidecar-reason")
            with trio.fail_after(5):
                while inbound.connections:  # until B has closed the pooled connection
                    await trio.sleep(0.01)


async def test_a_connection_error_at_the_peer_sidecar_ends_the_connection_at_once(mesh: Mesh) -> None:
    """A connection B ends for a protocol error while a request is in flight on it (here an HPACK
    bomb, next to a slow request) is closed at once: the caller does not wait for its other streams
    until a timeout."""
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app)
    assert b.inbound is not None
    context = mesh.pki.client_context()
    context.set_alpn_protocols(["h2"])
    gc.disable()  # what closes the socket must be the sidecar, not a collection that happens to run
    try:
        peer = RawH2Peer(await trio.open_ssl_over_tcp_stream("127.0.0.1", b.inbound, ssl_context=context))
        await peer.start()
        await peer.send(peer.request(1, "/slow/3000", end_stream=False), DataFrame(1, b"data", flags=["END_STREAM"]))
        await trio.sleep(0.2)  # the slow request is with the app
        await peer.send(peer.request(3, extra=[(b"x-bomb", b"b" * 4000)] * 10_000))  # 40 MB from 14 KB
        await peer.until_closed(timeout=2)
        assert peer.goaway is not None and 1 not in peer.ended
    finally:
        gc.enable()

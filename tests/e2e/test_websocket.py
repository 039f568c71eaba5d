"""WebSocket over HTTP/1.1 `Upgrade` through one sidecar and through two (over mutual TLS): the
`websockets` client against a hypercorn echo app (and the `websockets` server where hypercorn hides
what the test needs), raw sockets where the test needs bytes at exact places."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection

from .apps import RawOrigin, header_values
from .conftest import Mesh, SidecarHandle, mesh_service, service, spiffe_id
from .ws_apps import REJECTION, WebSocketEcho, WebSocketsServer, in_thread, open_websocket

MESSAGES = 1000
ABNORMAL = 1006  # RFC 6455 §7.4.1: the connection closed without a close frame


async def two_sidecars(mesh: Mesh, app_port: int, **service_fields: Any) -> tuple[SidecarHandle, SidecarHandle]:
    b = await mesh.sidecar(service="orders", inbound_app=app_port)
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b, **service_fields)])
    return a, b


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition on sidecar state that no event announces (bookkeeping after a close)."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def echo_ticks(ws: ClientConnection, count: int, every: float) -> None:
    """Exchange `count` echoed messages, `every` seconds apart: a tunnel with steady traffic."""
    for i in range(count):
        if i:
            time.sleep(every)
        ws.send(f"tick {i}")
        assert ws.recv(timeout=5) == f"tick {i}"


def close_from_server(ws: ClientConnection, code: int) -> ConnectionClosed:
    """Ask the echo app to close with `code`; return what the client saw."""
    ws.send(f"close:{code}")
    try:
        ws.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed
    raise AssertionError("the server did not close")


async def test_1000_text_messages_echo_in_order_through_two_sidecars_over_mtls(mesh: Mesh, hop: str) -> None:
    """WebSocket over HTTP/1.1 `Upgrade` works across two sidecars whatever the Service's protocol (the
    tunnel has an HTTP/1.1 connection of its own), with the forwarding headers of any request."""
    app = WebSocketEcho()
    a, b = await two_sidecars(mesh, await mesh.origin(app), protocol=hop)

    def session() -> tuple[list[list[str]], list[str]]:
        with open_websocket(a.outbound, "/headers") as ws:
            handshake = json.loads(ws.recv(timeout=10))
            for i in range(MESSAGES):
                ws.send(f"message {i}")
            return handshake, [ws.recv(timeout=10) for _ in range(MESSAGES)]

    handshake, replies = await in_thread(session)
    assert replies == [f"message {i}" for i in range(MESSAGES)]
    info = {"headers": handshake}
    assert header_values(info, "upgrade") == ["websocket"]
    assert header_values(info, "connection") == ["Upgrade"]
    assert header_values(info, "host") == ["orders"]
    assert len(header_values(info, "sec-websocket-key")) == 1  # end to end, untouched
    assert header_values(info, "x-forwarded-for") == ["127.0.0.1, 127.0.0.1"]  # both hops appended
    # Sidecar B saw sidecar A's verified identity: the middle hop was mutual TLS.
    assert header_values(info, "x-forwarded-client-cert") == [f"By={spiffe_id('orders')};URI={spiffe_id('frontend')}"]
    assert b.runtime.listeners["inbound"].accepted == 1
    with trio.fail_after(5):
        assert await app.ended.receive() == ABNORMAL  # hypercorn's word for any client close


async def test_a_1mib_binary_message_through_two_sidecars(mesh: Mesh) -> None:
    a, _ = await two_sidecars(mesh, await mesh.origin(WebSocketEcho()))
    payload = os.urandom(1024 * 1024)

    def session() -> tuple[bytes, str]:
        with open_websocket(a.outbound) as ws:
            ws.send(payload)
            echoed = ws.recv(timeout=10)
            ws.send("after")  # framing intact after the big one
            return echoed, ws.recv(timeout=10)

    echoed, after = await in_thread(session)
    assert echoed == payload
    assert after == "after"


async def test_close_codes_cross_both_hops_both_ways(mesh: Mesh) -> None:
    app = WebSocketEcho()
    a, _ = await two_sidecars(mesh, await mesh.origin(app))

    def client_closes() -> tuple[int, str]:
        with open_websocket(a.outbound) as ws:
            ws.send("hi")
            assert ws.recv(timeout=10) == "hi"
            ws.close(4001, "client done")
            answer = ws.protocol.close_rcvd
            assert answer is not None
            return answer.code, answer.reason  # a server echoes the code it received (RFC 6455 §5.5.1)

    def server_closes() -> tuple[int | None, str | None]:
        with open_websocket(a.outbound) as ws:
            closed = close_from_server(ws, 4002)
            return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, None)

    assert await in_thread(client_closes) == (4001, "client done")
    assert await in_thread(server_closes) == (4002, "")
    with trio.fail_after(5):
        ended = [await app.ended.receive(), await app.ended.receive()]
    assert ended == [ABNORMAL, "server:4002"]


async def test_the_app_sees_the_close_code_the_client_sent(mesh: Mesh) -> None:
    server = WebSocketsServer()
    with server.running() as port:
        a, _ = await two_sidecars(mesh, port)

        def session() -> None:
            with open_websocket(a.outbound, "/anything") as ws:
                ws.send("hi")
                assert ws.recv(timeout=10) == "hi"
                ws.close(4001, "client done")

        await in_thread(session)
        assert await trio.to_thread.run_sync(server.closes.get, True, 10) == (4001, "client done")


async def test_through_one_sidecar(mesh: Mesh) -> None:
    app = WebSocketEcho()
    origin = await mesh.origin(app)
    sc = await mesh.sidecar(services=[service("orders", origin)])
    payload = os.urandom(1024 * 1024)

    def session() -> tuple[list[str], bytes, int | None]:
        with open_websocket(sc.outbound) as ws:
            for i in range(MESSAGES):
                ws.send(str(i))
            texts = [ws.recv(timeout=10) for _ in range(MESSAGES)]
            ws.send(payload)
            binary = ws.recv(timeout=10)
            closed = close_from_server(ws, 4002)
            return texts, binary, closed.rcvd.code if closed.rcvd else None

    texts, binary, code = await in_thread(session)
    assert texts == [str(i) for i in range(MESSAGES)]
    assert binary == payload
    assert code == 4002
    with trio.fail_after(5):
        assert await app.ended.receive() == "server:4002"
    pool = sc.runtime.registry.clusters["orders"].endpoints[0].pool
    await eventually(lambda: pool.open_connections == 0)  # the tunnel's connection closed with it
    assert pool.idle == []


async def test_protocol_auto_still_carries_the_websocket_on_a_dedicated_http1_connection(mesh: Mesh) -> None:
    a, b = await two_sidecars(mesh, await mesh.origin(WebSocketEcho()), protocol="auto")
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        assert (await client.get("/info")).status_code == 200
    pool = a.runtime.registry.clusters["orders"].endpoints[0].pool
    assert len(pool.h2_conns) == 1 and pool.open_connections == 1  # ordinary requests: HTTP/2 (ALPN)

    def during_session() -> None:
        # One more connection, neither HTTP/2 nor idle in the pool: the tunnel's own.
        assert pool.open_connections == 2
        assert len(pool.h2_conns) == 1 and pool.idle == []
        assert b.runtime.listeners["inbound"].accepted == 2

    def session() -> None:
        with open_websocket(a.outbound) as ws:
            echo_ticks(ws, 3, 0)
            trio.from_thread.run_sync(during_session)
            echo_ticks(ws, 3, 0)

    await in_thread(session)
    await eventually(lambda: pool.open_connections == 1)  # closed with the tunnel, never pooled
    assert pool.idle == [] and len(pool.h2_conns) == 1


async def test_an_h2c_app_gets_the_websocket_on_a_fresh_http1_connection(mesh: Mesh) -> None:
    origin = await mesh.origin(WebSocketEcho())  # hypercorn speaks h2c (prior knowledge) and HTTP/1.1
    b = await mesh.sidecar(service="orders", inbound_app=origin, inbound={"app_protocol": "h2c"})
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b)])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        assert (await client.get("/info")).status_code == 200
    app_registry = b.runtime.registry.app
    assert app_registry is not None
    app_pool = app_registry.endpoints[0].pool
    assert len(app_pool.h2_conns) == 1  # ordinary requests reach the app over h2c

    def session() -> None:
        with open_websocket(a.outbound) as ws:
            echo_ticks(ws, 3, 0)
            trio.from_thread.run_sync(lambda: assert_open_connections(app_pool, 2))

    await in_thread(session)
    await eventually(lambda: app_pool.open_connections == 1)
    assert app_pool.idle == [] and len(app_pool.h2_conns) == 1


def assert_open_connections(pool: Any, count: int) -> None:
    assert pool.open_connections == count


@pytest.mark.parametrize(
    "upgrade",
    [
        {"upgrade": "h2c", "connection": "Upgrade, HTTP2-Settings", "http2-settings": "AAMAAABkAAQAAP__"},
        {"upgrade": "foo", "connection": "upgrade"},
    ],
)
async def test_every_other_upgrade_is_stripped(mesh: Mesh, upgrade: dict[str, str]) -> None:
    a, _ = await two_sidecars(mesh, await mesh.origin(WebSocketEcho()))
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info", headers=upgrade)
    assert r.status_code == 200  # had the app seen `Upgrade: h2c`, hypercorn would have switched
    info = r.json()
    for name in ("upgrade", "connection", "http2-settings"):
        assert header_values(info, name) == [], name


async def test_a_websocket_upgrade_with_a_body_is_an_ordinary_request(mesh: Mesh) -> None:
    a, _ = await two_sidecars(mesh, await mesh.origin(WebSocketEcho()))
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        r = await client.post("/echo", content=b"body", headers={"upgrade": "websocket", "connection": "upgrade"})
    assert r.status_code == 200 and r.content == b"body"


@pytest.mark.parametrize(("path", "status", "body"), [("/refuse", 403, b""), ("/reject", 400, REJECTION)])
async def test_an_upgrade_the_app_refuses_is_an_ordinary_response(
    mesh: Mesh, path: str, status: int, body: bytes
) -> None:
    a, b = await two_sidecars(mesh, await mesh.origin(WebSocketEcho()))

    def session() -> InvalidStatus:
        try:
            with open_websocket(a.outbound, path):
                pass
        except InvalidStatus as refused:
            return refused
        raise AssertionError("the upgrade was accepted")

    refused = await in_thread(session)
    assert refused.response.status_code == status
    assert refused.response.body == body
    assert refused.response.headers.get("upgrade") is None
    pool = a.runtime.registry.clusters["orders"].endpoints[0].pool
    app_registry = b.runtime.registry.app
    assert app_registry is not None
    app_pool = app_registry.endpoints[0].pool
    # Neither hop pools a connection that carried an upgrade request.
    await eventually(lambda: pool.open_connections == 0 and app_pool.open_connections == 0)
    assert pool.idle == [] and app_pool.idle == []


async def test_the_idle_timeout_closes_a_silent_tunnel(mesh: Mesh) -> None:
    app = WebSocketEcho()
    a, _ = await two_sidecars(mesh, await mesh.origin(app), timeouts={"idle": "300ms"})

    def session() -> tuple[float, ConnectionClosed]:
        with open_websocket(a.outbound) as ws:
            echo_ticks(ws, 7, 0.1)  # 0.6 s of steady traffic: a 0.3 s idle timeout never fires
            silent_since = time.monotonic()
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as closed:
                return time.monotonic() - silent_since, closed
            raise AssertionError("a message came out of nowhere")

    silent_for, closed = await in_thread(session)
    assert 0.25 <= silent_for < 3
    assert closed.rcvd is None  # cut by the sidecar: no close frame from the app
    with trio.fail_after(5):
        assert await app.ended.receive() == ABNORMAL


async def test_a_request_timeout_shorter_than_the_session_does_not_cut_it(mesh: Mesh) -> None:
    a, _ = await two_sidecars(mesh, await mesh.origin(WebSocketEcho()), timeouts={"request": "200ms"})
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/slow/1000")
    assert r.status_code == 504 and r.headers["x-sidecar-reason"] == "upstream_timeout"  # the timeout is live

    def session() -> int | None:
        with open_websocket(a.outbound) as ws:
            echo_ticks(ws, 7, 0.1)  # 0.6 s: three request timeouts long
            closed = close_from_server(ws, 4002)
            return closed.rcvd.code if closed.rcvd else None

    assert await in_thread(session) == 4002


async def test_drain_lets_an_open_websocket_finish(mesh: Mesh) -> None:
    app = WebSocketEcho()
    a, b = await two_sidecars(mesh, await mesh.origin(app))
    inbound = b.runtime.listeners["inbound"]

    def session() -> None:
        with open_websocket(a.outbound) as ws:
            echo_ticks(ws, 2, 0)
            trio.from_thread.run_sync(b.runtime.start_drain, "test")
            echo_ticks(ws, 5, 0.05)  # the drain closes idle connections; this one is busy
            assert trio.from_thread.run_sync(lambda: inbound.draining and inbound.connections == 1)

    await in_thread(session)
    await eventually(lambda: inbound.connections == 0)
    with trio.fail_after(5):
        assert await app.ended.receive() == ABNORMAL


async def test_drain_timeout_ends_an_open_websocket(mesh: Mesh) -> None:
    app_port = await mesh.origin(WebSocketEcho())
    b = await mesh.sidecar(service="orders", inbound_app=app_port, drain_timeout="300ms")
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b)])

    def session() -> float:
        with open_websocket(a.outbound) as ws:
            echo_ticks(ws, 2, 0)
            trio.from_thread.run_sync(b.runtime.start_drain, "test")
            start = time.monotonic()
            try:
                ws.recv(timeout=10)
            except ConnectionClosed:
                return time.monotonic() - start
            raise AssertionError("a message came out of nowhere")

    assert 0.2 <= await in_thread(session) < 3


async def test_bytes_sent_with_either_head_and_a_half_close_cross_the_sidecar(
    mesh: Mesh, nursery: trio.Nursery
) -> None:
    received: list[bytes] = []

    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nfrom the app"
        )
        data = origin.pending
        while chunk := await stream.receive_some(65536):  # until the client's half-close arrives
            data += chunk
        received.append(data)
        await stream.send_all(b"after your end")
        return False

    origin = RawOrigin(respond)
    sc = await mesh.sidecar(services=[service("orders", await nursery.start(origin.serve))])
    with trio.fail_after(5):
        client = await trio.open_tcp_stream("127.0.0.1", sc.outbound)
        await client.send_all(
            b"GET /chat HTTP/1.1\r\nHost: orders\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nfrom the client"
        )
        data = b""
        while not data.endswith(b"from the app"):
            chunk = await client.receive_some(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"\r\nUpgrade: websocket" in head and b"\r\nConnection: Upgrade" in head
        assert rest == b"from the app"
        await client.send_eof()
        data = b""
        while chunk := await client.receive_some(65536):
            data += chunk
        assert data == b"after your end"
    assert received == [b"from the client"]
    (upstream_head,) = origin.heads
    assert b"\r\nUpgrade: WebSocket\r\n" in upstream_head + b"\r\n"  # as the client spelled it
    assert b"\r\nConnection: Upgrade\r\n" in upstream_head + b"\r\n"  # keep-alive is this hop's business
    assert b"\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" in upstream_head + b"\r\n"

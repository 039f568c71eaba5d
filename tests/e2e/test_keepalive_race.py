"""The keep-alive race with the app (SPEC §4): pooled connections closed by the app never show as
502, and pooled app connections are closed after `app_idle_timeout`."""

from __future__ import annotations

import httpx
import trio

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

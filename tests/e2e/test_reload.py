"""Live config reload: the config directory is edited while the sidecar runs;
a new endpoint gets traffic within seconds and no request fails, a broken file leaves the last good
config serving (and `/config` and the reload metric say so), a Kubernetes-style `..data` symlink
swap is noticed, a listener that would move is refused with a clear message, and a rotated
certificate reaches new handshakes while a connection opened before keeps working (a key caught
without its new certificate is refused until the pair matches)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml

from .apps import Receive, Scope, Send, echo_app
from .conftest import Mesh, SidecarHandle, mesh_service, service

RELOAD_WAIT = 15.0  # seconds a reload may take on a loaded machine (within 2 s when idle)


class Named:
    """Answers its own name, counting requests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await echo_app(scope, receive, send)
            return
        self.count += 1
        body = self.name.encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


def config_file(sc: SidecarHandle) -> Path:
    return Path(sc.runtime.snapshot.directory) / "mesh.yaml"


def edit(sc: SidecarHandle, change: Any) -> None:
    """Rewrite the sidecar's config file with `change(docs)` applied, atomically (temp file + rename)."""
    path = config_file(sc)
    docs = list(yaml.safe_load_all(path.read_text()))
    change(docs)
    temp = path.with_name(".mesh.yaml.tmp")
    temp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    os.replace(temp, path)


async def admin_json(sc: SidecarHandle, path: str) -> Any:
    async with httpx.AsyncClient(base_url=sc.admin_url) as admin:
        return (await admin.get(path)).json()


async def reloads(sc: SidecarHandle, result: str) -> float:
    async with httpx.AsyncClient(base_url=sc.admin_url) as admin:
        text = (await admin.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f'sidecar_config_reloads_total{{result="{result}"}}'):
            return float(line.split()[-1])
    raise AssertionError("no sidecar_config_reloads_total")


async def test_an_endpoint_added_while_traffic_runs_gets_traffic_and_nothing_fails(mesh: Mesh) -> None:
    first, second = Named("first"), Named("second")
    first_port, second_port = await mesh.origin(first), await mesh.origin(second)
    sc = await mesh.sidecar(services=[service("orders", first_port, load_balancer="round_robin")])
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:

        async def traffic() -> None:
            while second.count < 10:
                statuses.append((await client.get("/x")).status_code)
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic)
            await trio.sleep(0.2)
            edit(sc, lambda docs: docs[1]["endpoints"].append({"address": f"127.0.0.1:{second_port}"}))
            started = trio.current_time()
            with trio.fail_after(3):
                while second.count == 0:
                    await trio.sleep(0.02)
            took = trio.current_time() - started
    assert took < 3 and set(statuses) == {200} and first.count > 0
    assert await reloads(sc, "success") == 1
    (orders,) = [s for s in (await admin_json(sc, "/clusters"))["services"] if s["name"] == "orders"]
    assert {e["address"] for e in orders["endpoints"]} == {f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}"}


async def test_a_broken_file_keeps_the_last_good_config_serving(mesh: Mesh) -> None:
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())])
    version = (await admin_json(sc, "/config"))["version"]
    good = config_file(sc).read_text()
    config_file(sc).write_text(good + "---\nkind: Service\nname: broken\nendpoints: [{address: nowhere}]\n")
    with trio.fail_after(RELOAD_WAIT):
        while (await admin_json(sc, "/config"))["last_error"] is None:
            await trio.sleep(0.05)
    shown = await admin_json(sc, "/config")
    assert shown["version"] == version  # still the last good one
    assert "mesh.yaml" in shown["last_error"]["message"] and shown["last_error"]["time"].endswith("Z")
    assert await reloads(sc, "failure") == 1
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:
        assert (await client.get("/info", headers={"host": "orders"})).status_code == 200  # still served
    config_file(sc).write_text(good + "# touched\n")
    with trio.fail_after(RELOAD_WAIT):
        while (await admin_json(sc, "/config"))["last_error"] is not None:
            await trio.sleep(0.05)
    assert await reloads(sc, "success") == 1


async def test_a_configmap_style_symlink_swap_is_noticed(mesh: Mesh, tmp_path: Path) -> None:
    first, second = Named("first"), Named("second")
    first_port, second_port = await mesh.origin(first), await mesh.origin(second)
    sc = await mesh.sidecar(services=[service("orders", first_port)])
    directory = config_file(sc).parent
    docs = list(yaml.safe_load_all(config_file(sc).read_text()))
    # The shape Kubernetes mounts: mesh.yaml -> ..data/mesh.yaml, ..data -> ..<timestamp>/
    for version, port in (("..v1", first_port), ("..v2", second_port)):
        (directory / version).mkdir()
        docs[1]["endpoints"] = [{"address": f"127.0.0.1:{port}"}]
        (directory / version / "mesh.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    os.symlink("..v1", directory / "..data")
    temp = directory / ".mesh.tmp"
    os.symlink("..data/mesh.yaml", temp)
    os.replace(temp, config_file(sc))
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        assert (await client.get("/x")).text == "first"
        os.symlink("..v2", directory / "..data_tmp")
        os.replace(directory / "..data_tmp", directory / "..data")  # the atomic swap
        with trio.fail_after(RELOAD_WAIT):
            while (await client.get("/x")).text != "second":
                await trio.sleep(0.05)


async def test_moving_a_listener_is_refused_with_a_clear_message(mesh: Mesh) -> None:
    from .conftest import free_port

    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())])
    edit(sc, lambda docs: docs[0].update(outbound={"listen": f"127.0.0.1:{free_port()}"}))
    with trio.fail_after(RELOAD_WAIT):
        while (await admin_json(sc, "/config"))["last_error"] is None:
            await trio.sleep(0.05)
    message = (await admin_json(sc, "/config"))["last_error"]["message"]
    assert "outbound.listen" in message and "restart" in message
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:  # the old listener still serves
        assert (await client.get("/info", headers={"host": "orders"})).status_code == 200


async def test_a_rotated_certificate_is_served_to_new_handshakes_and_nothing_drops(mesh: Mesh, tmp_path: Path) -> None:
    from cryptography import x509

    from sidecar.certs import issue_workload

    from .conftest import spiffe_id

    service_name = f"rotating-{os.getpid()}-{id(tmp_path) % 10000}"  # its own cert files: rotated below
    b = await mesh.sidecar(service=service_name, inbound_app=await mesh.origin())
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol="http1", retries={"attempts": 0})])
    context = mesh.pki.client_context()
    statuses: list[int] = []
    rotated = trio.Event()

    async def traffic() -> None:  # through sidecar A to B (A's pooled connection to B) during the rotation
        async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
            while not rotated.is_set():
                statuses.append((await client.get("/info")).status_code)

    async def rotate(old_serial: int) -> None:
        files = mesh.pki.workload(service_name)
        fresh = tmp_path / "fresh"
        issue_workload(mesh.pki.ca_dir, spiffe_id(service_name), fresh)
        os.replace(fresh / "key.pem", files / "key.pem")  # a pair caught half-written: key new, cert old
        await trio.sleep(1.0)  # the watcher sees it, the loader refuses the mismatched pair
        os.replace(fresh / "cert.pem", files / "cert.pem")
        with trio.fail_after(RELOAD_WAIT):
            while True:
                stream, serial = await handshake_serial()
                await stream.aclose()
                if serial != old_serial:
                    return
                await trio.sleep(0.1)

    async def handshake_serial() -> tuple[trio.SSLStream[trio.SocketStream], int]:
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", b.inbound), context)
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
        return stream, x509.load_der_x509_certificate(der).serial_number

    old_stream, old_serial = await handshake_serial()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(traffic)
        await rotate(old_serial)
        rotated.set()
    assert len(statuses) > 10 and set(statuses) == {200}  # no request failed during the rotation
    # The connection opened before the rotation still carries requests.
    await old_stream.send_all(b"GET /info HTTP/1.1\r\nHost: app\r\n\r\n")
    with trio.fail_after(RELOAD_WAIT):
        answer = await old_stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 200")
    await old_stream.aclose()
    error = (await admin_json(b, "/config"))["last_error"]
    assert error is None  # the mismatched pair was refused, the whole pair then taken
    assert await reloads(b, "failure") >= 1 and await reloads(b, "success") >= 1


class Slow(Named):
    """As Named, but /slow waits for `release` first."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = trio.Event()
        self.waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/slow":
            self.waiting += 1
            await self.release.wait()
        await super().__call__(scope, receive, send)


async def wait_reloaded(sc: SidecarHandle, count: int) -> None:
    with trio.fail_after(RELOAD_WAIT):
        while await reloads(sc, "success") < count:
            await trio.sleep(0.05)


async def test_connections_websockets_and_requests_in_flight_live_across_a_reload(mesh: Mesh) -> None:
    from .ws_apps import WebSocketEcho, in_thread, open_websocket

    leaving, staying = Slow("leaving"), Named("staying")
    leaving_port, staying_port = await mesh.origin(leaving), await mesh.origin(staying)
    ws_port = await mesh.origin(WebSocketEcho())
    sc = await mesh.sidecar(
        services=[service("orders", leaving_port, load_balancer="round_robin"), service("chat", ws_port)]
    )
    ws = await in_thread(lambda: open_websocket(sc.outbound, host="chat", legacy=True))
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        assert (await client.get("/x")).text == "leaving"  # a pooled keep-alive connection from here on
        slow: list[httpx.Response] = []
        async with trio.open_nursery() as nursery:

            async def slow_request() -> None:
                async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as other:
                    slow.append(await other.get("/slow", timeout=10))

            nursery.start_soon(slow_request)
            with trio.fail_after(RELOAD_WAIT):
                while leaving.waiting == 0:
                    await trio.sleep(0.01)
            # The endpoint with a request in flight is replaced by another one.
            edit(sc, lambda docs: docs[1].update(endpoints=[{"address": f"127.0.0.1:{staying_port}"}]))
            await wait_reloaded(sc, 1)
            assert (await client.get("/x")).text == "staying"  # same client connection, new endpoint
            leaving.release.set()
        assert slow[0].status_code == 200 and slow[0].text == "leaving"  # it completed on the old one

    def still_open() -> str:
        ws.send("after the reload")
        answer = ws.recv(timeout=5)
        ws.close()
        return str(answer)

    assert await in_thread(still_open) == "after the reload"


async def test_new_connections_after_a_reload_do_not_offer_a_session_of_the_old_context(mesh: Mesh) -> None:
    slow = Slow("orders")
    b = await mesh.sidecar(service="orders", inbound_app=await mesh.origin(slow))
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol="http1", retries={"attempts": 0})])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        assert (await client.get("/x")).status_code == 200  # A keeps B's session ticket for resumption
        edit(a, lambda docs: docs[1].update(timeouts={"request": "14s"}))  # any change: new TLS contexts
        await wait_reloaded(a, 1)
        statuses: list[int] = []
        async with trio.open_nursery() as nursery:  # two at once: one pooled connection, one new

            async def get(path: str) -> None:
                async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as other:
                    statuses.append((await other.get(path)).status_code)

            nursery.start_soon(get, "/slow")
            with trio.fail_after(RELOAD_WAIT):
                while slow.waiting == 0:
                    await trio.sleep(0.01)
            nursery.start_soon(get, "/x")
            await trio.sleep(0.5)
            slow.release.set()
    assert statuses == [200, 200]


async def test_a_session_from_a_connection_opened_before_a_reload_is_not_kept_after_it(mesh: Mesh) -> None:
    slow = Slow("orders")
    b = await mesh.sidecar(service="orders", inbound_app=await mesh.origin(slow))
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol="http1", retries={"attempts": 0})])
    statuses: list[int] = []

    async def get(path: str) -> None:
        async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
            statuses.append((await client.get(path)).status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(get, "/slow")  # the first exchange on a fresh TLS connection, across the reload
        with trio.fail_after(RELOAD_WAIT):
            while slow.waiting == 0:
                await trio.sleep(0.01)
        edit(a, lambda docs: docs[1].update(timeouts={"request": "14s"}))
        await wait_reloaded(a, 1)
        slow.release.set()
    slow.release = trio.Event()
    async with trio.open_nursery() as nursery:  # the pooled connection busy: the second needs a new one
        nursery.start_soon(get, "/slow")
        with trio.fail_after(RELOAD_WAIT):
            while slow.waiting < 2:
                await trio.sleep(0.01)
        nursery.start_soon(get, "/x")
        await trio.sleep(0.5)
        slow.release.set()
    assert statuses == [200, 200, 200]


async def test_a_reload_keeps_the_connections_between_sidecars(mesh: Mesh, hop: str) -> None:
    """A change is applied (within 2 s) and established connections are not dropped: sidecar A's
    connection to B carries the requests after A's reload, the new host's among them."""
    b = await mesh.sidecar(service="orders", inbound_app=await mesh.origin())
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol=hop)])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        assert (await client.get("/info")).status_code == 200
        edit(a, lambda docs: docs[1].update(hosts=["orders", "orders.new"]))
        await wait_reloaded(a, 1)
        assert (await client.get("/info", headers={"host": "orders.new"})).status_code == 200
        assert (await client.get("/info")).status_code == 200
    assert b.runtime.listeners["inbound"].accepted == 1

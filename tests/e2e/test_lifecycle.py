"""Lifecycle: readiness, SIGTERM and POST /drain, exit codes (with real processes), and a
peer sidecar's drain as sidecar A sees it over either hop (in process)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import trio

from .conftest import Mesh, Pki, Process, free_port, mesh_service, wait_ready, write_config


def sidecar_config(tmp_path: Path, pki: Pki, app_port: int, *, drain_timeout: str = "10s") -> dict[str, int]:
    ports = {"inbound": free_port(), "outbound": free_port(), "admin": free_port()}
    write_config(
        tmp_path / "cfg",
        [
            {
                "kind": "Sidecar",
                "service": "orders",
                "tls": pki.tls_section("orders"),
                "inbound": {"listen": f"127.0.0.1:{ports['inbound']}", "app": f"127.0.0.1:{app_port}"},
                "outbound": {"listen": f"127.0.0.1:{ports['outbound']}"},
                "admin": {"listen": f"127.0.0.1:{ports['admin']}"},
                "drain_timeout": drain_timeout,
            },
            {
                "kind": "Service",
                "name": "self",
                "endpoints": [{"address": f"127.0.0.1:{app_port}"}],
                "tls": {"mode": "disabled"},
            },
        ],
    )
    return ports


async def test_sigterm_during_a_slow_request_lets_it_finish_and_exits_0(
    mesh: Mesh, tmp_path: Path, processes: list[Process]
) -> None:
    app = await mesh.origin()
    ports = sidecar_config(tmp_path, mesh.pki, app)
    proc = Process(tmp_path / "cfg", tmp_path / "sidecar.log")
    processes.append(proc)
    await wait_ready(ports["admin"])
    results: dict[str, object] = {}

    async def slow_call() -> None:
        async with httpx.AsyncClient(timeout=10, verify=mesh.pki.client_context()) as client:
            r = await client.get(f"https://127.0.0.1:{ports['inbound']}/slow/1500", headers={"host": "orders"})
            results["status"] = r.status_code
            results["connection"] = r.headers.get("connection")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_call)
        await trio.sleep(0.5)
        proc.proc.send_signal(signal.SIGTERM)
        await trio.sleep(0.3)
        async with httpx.AsyncClient() as admin:
            r = await admin.get(f"http://127.0.0.1:{ports['admin']}/ready")
            assert r.status_code == 503  # draining: the admin listener still answers
            assert (await admin.get(f"http://127.0.0.1:{ports['admin']}/live")).status_code == 200
        # new inbound connections are refused while the in-flight request finishes
        try:
            await trio.open_tcp_stream("127.0.0.1", ports["inbound"])
            raise AssertionError("inbound listener still accepting")
        except OSError:
            pass
    assert results == {"status": 200, "connection": "close"}
    with trio.fail_after(10):
        while proc.proc.poll() is None:
            await trio.sleep(0.05)
    assert proc.proc.returncode == 0, proc.output()


async def test_post_drain_keeps_outbound_serving_until_the_app_disconnects(
    mesh: Mesh, tmp_path: Path, processes: list[Process]
) -> None:
    app = await mesh.origin()
    ports = sidecar_config(tmp_path, mesh.pki, app)
    proc = Process(tmp_path / "cfg", tmp_path / "sidecar.log")
    processes.append(proc)
    await wait_ready(ports["admin"])
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{ports['outbound']}", headers={"host": "self"}
    ) as app_client:
        assert (await app_client.get("/info")).status_code == 200  # an open keep-alive connection
        async with httpx.AsyncClient() as admin:
            r = await admin.post(f"http://127.0.0.1:{ports['admin']}/drain")
            assert r.status_code == 202
        for _ in range(3):  # the terminating app can still call out
            assert (await app_client.get("/info")).status_code == 200
        assert proc.proc.poll() is None
    # the app closed its connection: nothing is in flight, the sidecar exits by itself
    with trio.fail_after(10):
        while proc.proc.poll() is None:
            await trio.sleep(0.05)
    assert proc.proc.returncode == 0


async def test_drain_timeout_bounds_the_wait(mesh: Mesh, tmp_path: Path, processes: list[Process]) -> None:
    app = await mesh.origin()
    ports = sidecar_config(tmp_path, mesh.pki, app, drain_timeout="1s")
    proc = Process(tmp_path / "cfg", tmp_path / "sidecar.log")
    processes.append(proc)
    await wait_ready(ports["admin"])
    idle_app_connection = await trio.open_tcp_stream("127.0.0.1", ports["outbound"])
    proc.proc.send_signal(signal.SIGINT)
    start = trio.current_time()
    with trio.fail_after(8):
        while proc.proc.poll() is None:
            await trio.sleep(0.05)
    assert proc.proc.returncode == 0
    assert trio.current_time() - start >= 0.9
    await idle_app_connection.aclose()


async def test_second_signal_exits_at_once(mesh: Mesh, tmp_path: Path, processes: list[Process]) -> None:
    app = await mesh.origin()
    ports = sidecar_config(tmp_path, mesh.pki, app, drain_timeout="60s")
    proc = Process(tmp_path / "cfg", tmp_path / "sidecar.log")
    processes.append(proc)
    await wait_ready(ports["admin"])
    held = await trio.open_tcp_stream("127.0.0.1", ports["outbound"])
    proc.proc.send_signal(signal.SIGTERM)
    await trio.sleep(0.3)
    assert proc.proc.poll() is None  # draining, held open by the app's connection
    proc.proc.send_signal(signal.SIGTERM)
    with trio.fail_after(5):
        while proc.proc.poll() is None:
            await trio.sleep(0.05)
    await held.aclose()


async def test_admin_ready_and_live(mesh: Mesh) -> None:
    sc = await mesh.sidecar()
    held = await trio.open_tcp_stream("127.0.0.1", sc.outbound)  # keeps the drain from finishing
    async with httpx.AsyncClient(base_url=sc.admin_url) as admin:
        assert (await admin.get("/ready")).status_code == 200
        assert (await admin.get("/live")).status_code == 200
        assert (await admin.get("/drain")).status_code == 405
        assert (await admin.post("/drain")).status_code == 202
        assert (await admin.get("/ready")).status_code == 503
    await held.aclose()


async def test_requests_in_flight_over_the_hop_survive_the_peer_sidecars_drain(mesh: Mesh, hop: str) -> None:
    """Drain: the inbound listener's in-flight requests finish; HTTP/2 peers get GOAWAY and HTTP/1.1
    responses get `Connection: close`. Sidecar A loses none of the requests it had in flight at B, passes
    no `Connection: close` on (hop-by-hop), and puts none of those connections back to use."""
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app)
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol=hop)])
    responses: list[httpx.Response] = []
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}, timeout=10) as client:
        assert (await client.get("/info")).status_code == 200  # a connection A -> B is up

        async def one(i: int) -> None:
            responses.append(await client.get(f"/slow/{400 + i}"))

        def in_flight_at_the_app() -> int:
            assert b.runtime.registry.app is not None
            return sum(e.active_requests for e in b.runtime.registry.app.endpoints)

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)
            with trio.fail_after(5):
                while in_flight_at_the_app() < 10:
                    await trio.sleep(0.01)
            b.runtime.start_drain("test")  # GOAWAY (HTTP/2) at once; HTTP/1.1 answers will say close
    assert [r.status_code for r in responses] == [200] * 10  # none was lost
    assert not [r for r in responses if "close" in r.headers.get("connection", "").lower()]
    pool = a.runtime.registry.clusters["orders"].endpoints[0].pool
    if hop == "auto":
        assert all(conn.goaway for conn in pool.h2_conns)  # A takes no new stream there
    else:
        assert pool.idle == []  # every answer said close: no connection went back to the pool

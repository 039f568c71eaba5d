"""Bodies stream through two real sidecar processes (mutual TLS between them) with backpressure:
50 MiB up and 50 MiB down while each sidecar's peak RSS stays far below the body size."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from .conftest import Mesh, Process, free_port, wait_ready, write_config

MiB = 1024 * 1024
BODY = 50 * MiB


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_50_mib_each_way_through_two_sidecars_in_bounded_memory(
    mesh: Mesh, tmp_path: Path, processes: list[Process]
) -> None:
    app = await mesh.origin()
    b_ports = {name: free_port() for name in ("inbound", "outbound", "admin")}
    a_ports = {name: free_port() for name in ("outbound", "admin")}
    write_config(
        tmp_path / "b",
        [
            {
                "kind": "Sidecar",
                "service": "orders",
                "tls": mesh.pki.tls_section("orders"),
                "inbound": {"listen": f"127.0.0.1:{b_ports['inbound']}", "app": f"127.0.0.1:{app}"},
                "outbound": {"listen": f"127.0.0.1:{b_ports['outbound']}"},
                "admin": {"listen": f"127.0.0.1:{b_ports['admin']}"},
            }
        ],
    )
    write_config(
        tmp_path / "a",
        [
            {
                "kind": "Sidecar",
                "service": "frontend",
                "tls": mesh.pki.tls_section("frontend"),
                "outbound": {"listen": f"127.0.0.1:{a_ports['outbound']}"},
                "admin": {"listen": f"127.0.0.1:{a_ports['admin']}"},
            },
            {
                "kind": "Service",
                "name": "orders",
                "endpoints": [{"address": f"127.0.0.1:{b_ports['inbound']}"}],
                "tls": {"identity": "spiffe://mesh.local/ns/default/sa/orders"},  # mutual TLS between the two
            },
        ],
    )
    b = Process(tmp_path / "b", tmp_path / "b.log")
    a = Process(tmp_path / "a", tmp_path / "a.log")
    processes += [a, b]
    await wait_ready(b_ports["admin"])
    await wait_ready(a_ports["admin"])
    before = {p: rss_kib(p.proc.pid) for p in (a, b)}

    piece = bytes(range(256)) * 256  # 64 KiB

    async def upload() -> object:
        for _ in range(BODY // len(piece)):
            yield piece

    url = f"http://127.0.0.1:{a_ports['outbound']}"
    async with httpx.AsyncClient(base_url=url, headers={"host": "orders"}, timeout=120) as client:
        # Up: the app counts what arrives (httpx writes the whole body before reading a reply, so an
        # echo of 50 MiB would stall on the client, not on us).
        r = await client.post("/info", content=upload())
        assert r.status_code == 200
        assert r.json()["body_length"] == BODY
        # Down: 50 MiB streamed from the app.
        total = 0
        async with client.stream("GET", f"/bytes/{BODY}") as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                total += len(chunk)
        assert total == BODY
    for p in (a, b):
        growth = p.peak_rss_kib() - before[p]
        assert growth < 10 * 1024, f"peak RSS grew {growth} KiB while streaming {BODY // MiB} MiB"
        assert p.peak_rss_kib() < 64 * 1024
    await trio.sleep(0)

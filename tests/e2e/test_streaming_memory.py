"""Bodies stream through two sidecars with backpressure and nothing buffers a whole body: 50 MiB up
and 50 MiB down through two real sidecar processes (mutual TLS between them) while each one's peak RSS
stays far below the body size; a reader that stops (the client, or the app) stops the writer at the
other end a few MiB later, over both hops; and on an HTTP/2 hop, a stream stalled either way holds up
none of the others sharing the connection."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import trio

from .conftest import Mesh, Pairing, Process, free_port, wait_ready, write_config
from .matrix import Client, MatrixPath, RecordingApp, Seen, Step, Wait

MiB = 1024 * 1024
BODY = 50 * MiB
HELD = 64 * MiB  # the most a stalled path may take in: kernel and window buffers, far from a whole body
QUIET = 0.5  # seconds without progress: the writer has been stopped


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


class Streams(RecordingApp):
    """RecordingApp, and:

    /endless   answers 200 with an endless body; `sent` counts what the server has taken from the app
    /ignore    never reads the request body and never answers
    """

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    async def _serve(self, seen: Seen, receive: Any, send: Any) -> None:
        if seen.path == "/endless":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            piece = b"s" * 65536
            while True:
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                self.sent += len(piece)
        elif seen.path == "/ignore":
            await trio.sleep_forever()
        else:
            await super()._serve(seen, receive, send)


async def progress_stops(count: Callable[[], int]) -> int:
    """Wait until `count()` has not grown for QUIET seconds (or has passed HELD); return it."""
    with trio.fail_after(30):
        last, since = count(), trio.current_time()
        while count() < HELD:
            await trio.sleep(0.05)
            if count() != last:
                last, since = count(), trio.current_time()
            elif trio.current_time() - since >= QUIET:
                break
    return count()


async def stop_reading_a_download(port: int, downstream: str) -> trio.SocketStream:
    """GET /endless on the outbound listener at `port`, read 1 MiB of it, then read nothing more (the
    connection stays open; over HTTP/2 the window is given back for that 1 MiB only)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = 0
    with trio.fail_after(10):
        if downstream == "http1":
            await stream.send_all(b"GET /endless HTTP/1.1\r\nHost: orders\r\n\r\n")
            while received < MiB:
                received += len(await stream.receive_some(65536))
            return stream
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"orders"), (b":path", b"/endless")]
        conn.send_headers(1, head, end_stream=True)
        while received < MiB:
            await stream.send_all(conn.data_to_send())
            for event in conn.receive_data(await stream.receive_some(65536)):
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        await stream.send_all(conn.data_to_send())
    return stream


def endless_upload() -> tuple[list[Step], int, Callable[[], int]]:
    """A 256 MiB request body in 64 KiB pieces, its length, and how much of it the client has sent."""
    piece, sent = b"u" * 65536, [0]

    async def count() -> None:
        sent[0] += len(piece)

    body: list[Step] = [piece, Wait(count)] * (256 * MiB // len(piece))
    return body, 256 * MiB, lambda: sent[0]


async def test_a_client_that_stops_reading_stops_the_app(mesh: Mesh, hop: str, downstream: str) -> None:
    """Bodies are streamed both ways with backpressure; nothing buffers a whole body: a client that stops
    reading a response stops the app writing it a few MiB later (the app speaks HTTP/1.1: hypercorn's
    h2c server takes an app's writes without waiting for the window)."""
    app = Streams()
    path = await MatrixPath(mesh, Pairing(downstream, hop, "http1")).build(app)
    stream = await stop_reading_a_download(path.a.outbound, downstream)
    assert await progress_stops(lambda: app.sent) < HELD
    await stream.aclose()


async def test_an_app_that_stops_reading_stops_the_client(mesh: Mesh, pairing: Pairing) -> None:
    """Bodies are streamed both ways with backpressure; nothing buffers a whole body: an app that reads
    none of a request body stops the client sending it a few MiB in, on every pairing."""
    app = Streams()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    body, length, sent = endless_upload()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.exchange, "POST", "/ignore", body=body, length=length))
        with trio.fail_after(10):
            await app.arrived("/ignore")
        assert await progress_stops(sent) < HELD
        nursery.cancel_scope.cancel()
    await client.aclose()


async def test_a_stalled_stream_holds_up_no_other_on_the_http2_hop(mesh: Mesh) -> None:
    """On the one HTTP/2 connection between the sidecars, a stream stalled either way (a download its
    client stopped reading, an upload its app does not read) holds up none of the requests beside it."""
    app = Streams()
    one_connection = {"circuit_breaker": {"max_connections": 1}}  # every stream shares it
    path = await MatrixPath(mesh, Pairing("http1", "auto", "http1")).build(app, service_fields=one_connection)
    download = await stop_reading_a_download(path.a.outbound, "http1")
    await progress_stops(lambda: app.sent)
    uploader: Client = await path.client()
    body, length, sent = endless_upload()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(uploader.exchange, "POST", "/ignore", body=body, length=length))
        await progress_stops(sent)
        for _ in range(5):
            await path.serves()  # each within REPLY_TIMEOUT
        nursery.cancel_scope.cancel()
    await download.aclose()
    await uploader.aclose()

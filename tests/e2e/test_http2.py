"""HTTP/2 on the downstream side: prior-knowledge h2c on the outbound listener, ALPN h2 on the
inbound listener, translated to HTTP/1.1 apps; clients someone else wrote (curl, httpx, h2load)."""

from __future__ import annotations

import hashlib
import shutil
from typing import Any

import httpx
import pytest
import trio

from .apps import header_values
from .conftest import Mesh, mesh_service, service


async def test_h2c_prior_knowledge_with_curl(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)])
    result = await trio.run_process(
        [
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            "-H",
            "Host: orders",
            "-w",
            "\\n%{http_version}",
            f"{sc.outbound_url}/info?x=1",
        ],
        capture_stdout=True,
    )
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"2"
    assert b'"path": "/info"' in body and b'"query": "x=1"' in body


async def test_h2c_bodies_and_concurrent_streams_with_httpx(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)])
    async with httpx.AsyncClient(
        http1=False, http2=True, base_url=sc.outbound_url, headers={"host": "orders"}
    ) as client:
        payload = bytes(range(256)) * 4096  # 1 MiB up, echoed back
        r = await client.post("/echo", content=payload)
        assert r.http_version == "HTTP/2" and r.status_code == 200
        assert hashlib.sha256(r.content).digest() == hashlib.sha256(payload).digest()
        results: list[int] = []

        async def one(i: int) -> None:
            r = await client.get(f"/slow/{50 + i}")
            results.append(r.status_code)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, i)
        assert results == [200] * 20
    assert sc.runtime.listeners["outbound"].accepted == 1  # twenty concurrent streams, one connection


async def test_local_replies_over_h2(mesh: Mesh) -> None:
    sc = await mesh.sidecar()
    async with httpx.AsyncClient(http1=False, http2=True, base_url=sc.outbound_url) as client:
        r = await client.get("/", headers={"host": "nowhere"})
    assert r.http_version == "HTTP/2"
    assert r.status_code == 404 and r.headers["x-sidecar-reason"] == "no_route"


async def test_h2_over_mtls_to_the_inbound_listener(mesh: Mesh) -> None:
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app)
    async with httpx.AsyncClient(
        http1=False, http2=True, base_url=b.inbound_url, verify=mesh.pki.client_context("frontend")
    ) as client:
        r = await client.get("/info", headers={"host": "orders"})
    assert r.http_version == "HTTP/2" and r.status_code == 200
    info = r.json()
    assert header_values(info, "host") == ["orders"]  # :authority became Host for the HTTP/1.1 app
    assert header_values(info, "x-forwarded-client-cert")[0].endswith("URI=spiffe://mesh.local/ns/default/sa/frontend")


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load comes with nghttp2-client")
async def test_h2load_thousands_of_requests_without_errors(mesh: Mesh) -> None:
    origin = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=origin, inbound={"mode": "permissive"})
    a = await mesh.sidecar(services=[mesh_service("orders", b)])
    result = await trio.run_process(
        ["h2load", "-n", "2000", "-c", "4", "-m", "10", "-H", ":authority: orders", f"{a.outbound_url}/info"],
        capture_stdout=True,
    )
    out = result.stdout.decode()
    assert "2000 succeeded, 0 failed, 0 errored" in out, out


async def test_sidecars_multiplex_over_http2_when_the_service_says_auto(mesh: Mesh) -> None:
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app)
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol="auto")])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}, timeout=30) as client:
        payload = bytes(range(256)) * 1024
        r = await client.post("/echo", content=payload)
        assert r.status_code == 200 and r.content == payload
        statuses: list[int] = []

        async def one(i: int) -> None:
            statuses.append((await client.get(f"/slow/{20 + i}")).status_code)

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i)
        assert statuses == [200] * 30
        r = await client.get("/info")
        assert header_values(r.json(), "host") == ["orders"]
    pool = a.runtime.registry.clusters["orders"].endpoints[0].pool
    assert len(pool.h2_conns) == 1 and pool.idle == []  # all of it on one HTTP/2 connection
    assert b.runtime.listeners["inbound"].accepted == 1


async def test_a_first_burst_to_a_new_peer_shares_one_http2_connection(mesh: Mesh) -> None:
    """Before any connection to the peer, ALPN's answer is unknown: the burst's requests wait for the
    one connection being opened rather than each opening its own (and timing out in a pile of
    handshakes)."""
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app)
    a = await mesh.sidecar(services=[mesh_service("orders", b)])  # protocol: auto, the default
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}, limits=limits) as client:

        async def one() -> None:
            statuses.append((await client.get("/slow/300")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(60):  # sixty app connections at once
                nursery.start_soon(one)
    assert statuses == [200] * 60
    assert b.runtime.listeners["inbound"].accepted == 1


async def test_an_h2c_connection_outlives_the_header_read_timeout(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)], limits={"header_read_timeout": "300ms"})
    async with httpx.AsyncClient(http1=False, http2=True, base_url=sc.outbound_url, headers={"host": "orders"}) as c:
        r = await c.get("/slow/900")  # longer than the header read timeout: the stream is busy, not idle
        assert r.status_code == 200
        r = await c.get("/info")
        assert r.status_code == 200


async def test_h2c_preface_split_across_packets(mesh: Mesh) -> None:
    import h2.config
    import h2.connection
    import h2.events

    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)])
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.send_headers(
        1,
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"orders"), (b":path", b"/info")],
        end_stream=True,
    )
    data = client.data_to_send()
    stream = await trio.open_tcp_stream("127.0.0.1", sc.outbound)
    await stream.send_all(data[:6])  # "PRI * " ...
    await trio.sleep(0.05)
    await stream.send_all(data[6:])
    status = None
    with trio.fail_after(10):
        while status is None:
            for event in client.receive_data(await stream.receive_some(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
            await stream.send_all(client.data_to_send())
    assert status == b"200"
    await stream.aclose()


async def test_curl_http2_over_mutual_tls_to_the_inbound_listener(mesh: Mesh) -> None:
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app)
    caller = mesh.pki.workload("frontend")
    result = await trio.run_process(
        [
            "curl",
            "-sS",
            "--http2",
            "--cert",
            str(caller / "cert.pem"),
            "--key",
            str(caller / "key.pem"),
            "-k",  # mesh certificates name a SPIFFE ID, not a host name curl could check
            "-H",
            "Host: orders",
            "-w",
            "\\n%{http_version}",
            f"{b.inbound_url}/info",
        ],
        capture_stdout=True,
    )
    body, _, version = result.stdout.rpartition(b"\n")
    assert version == b"2"  # ALPN chose h2
    assert b"URI=spiffe://mesh.local/ns/default/sa/frontend" in body


async def test_hypercorn_as_an_h2c_origin(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin, protocol="http2")])
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info")  # HTTP/1.1 in, h2c (prior knowledge) out
        assert r.status_code == 200 and r.json()["http_version"] == "2"
        payload = bytes(range(256)) * 2048
        r = await client.post("/echo", content=payload)
        assert r.status_code == 200 and r.content == payload
        r = await client.get("/trailers")
        assert r.content == b"part one,part two"
    pool = sc.runtime.registry.clusters["orders"].endpoints[0].pool
    assert len(pool.h2_conns) == 1


async def test_inbound_app_protocol_h2c_with_hypercorn(mesh: Mesh) -> None:
    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app, inbound={"app_protocol": "h2c"})
    a = await mesh.sidecar(services=[mesh_service("orders", b)])
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/info")
    assert r.status_code == 200
    info = r.json()
    assert info["http_version"] == "2"  # B spoke h2c to the app
    assert header_values(info, "host") == ["orders"]


async def test_drain_sends_goaway_at_once_and_lets_streams_in_flight_finish(mesh: Mesh) -> None:
    from tests.h2_peer import RawH2Peer

    app = await mesh.origin()
    b = await mesh.sidecar(service="orders", inbound_app=app)
    context = mesh.pki.client_context("frontend")
    context.set_alpn_protocols(["h2"])
    stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", b.inbound), context)
    await stream.do_handshake()
    peer = RawH2Peer(stream)
    await peer.start()
    await peer.send(peer.request(1, "/slow/600"), peer.request(3, "/info"))
    await peer.until(lambda: 3 in peer.ended)
    b.runtime.start_drain("test")
    await peer.until(lambda: peer.goaway is not None)  # at once, while stream 1 is still running
    assert peer.goaway is not None and peer.goaway.last_stream_id == 3 and 1 not in peer.ended
    await peer.send(peer.request(5, "/info"))  # a stream opened after the GOAWAY is refused, unprocessed
    await peer.until(lambda: 5 in peer.resets)
    assert peer.resets[5] == 0x7 and 5 not in peer.status  # REFUSED_STREAM
    await peer.until(lambda: 1 in peer.ended)  # the stream in flight finishes
    assert peer.status[1] == 200
    await peer.until_closed()  # and the connection closes after its last stream


class RawH2Origin:
    """An h2c origin built on h2's server side, for what a well-behaved server rarely does: it refuses
    the first `refuse` streams (REFUSED_STREAM), or answers the first request on its first connection
    with GOAWAY naming an earlier last stream (`goaway_first`). Counts what it actually served."""

    def __init__(self, refuse: int = 0, goaway_first: bool = False) -> None:
        self.refuse = refuse
        self.goaway_first = goaway_first
        self.served = 0
        self.connections = 0

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        import h2.config
        import h2.connection
        import h2.errors
        import h2.events

        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        first = True
        while data := await stream.receive_some(65536):
            for event in conn.receive_data(data):
                if not isinstance(event, h2.events.RequestReceived):
                    continue
                if self.goaway_first and first:
                    self.goaway_first = False  # on the first connection only
                    conn.close_connection(last_stream_id=max(0, event.stream_id - 2))  # "never processed"
                    await stream.send_all(conn.data_to_send())
                    await stream.aclose()
                    return
                first = False
                if self.refuse:
                    self.refuse -= 1
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                self.served += 1
                conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-length", b"2")])
                conn.send_data(event.stream_id, b"ok", end_stream=True)
            await stream.send_all(conn.data_to_send())


@pytest.mark.parametrize("behaviour", [{"refuse": 1}, {"goaway_first": True}])
async def test_a_request_the_upstream_never_processed_is_sent_again(
    mesh: Mesh, nursery: trio.Nursery, behaviour: dict[str, Any]
) -> None:
    origin = RawH2Origin(**behaviour)
    port = await nursery.start(origin.serve)
    sc = await mesh.sidecar(services=[service("orders", port, protocol="http2")])
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/x")
    assert r.status_code == 200 and r.text == "ok"
    assert origin.served == 1  # processed once, never twice
    if behaviour.get("goaway_first"):
        assert origin.connections == 2  # sent again on a new connection


async def test_more_connections_open_when_one_is_full(mesh: Mesh) -> None:
    origin = await mesh.origin(h2_max_concurrent_streams=2)
    sc = await mesh.sidecar(services=[service("orders", origin, protocol="http2")])
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}, timeout=10) as client:

        async def one() -> None:
            statuses.append((await client.get("/slow/300")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)
    assert statuses == [200] * 6
    pool = sc.runtime.registry.clusters["orders"].endpoints[0].pool
    assert len(pool.h2_conns) == 3  # two streams each, as the origin allows


async def test_an_h2_body_over_the_limit_gets_413(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", origin)], limits={"max_request_body": "64KiB"})
    async with httpx.AsyncClient(http1=False, http2=True, base_url=sc.outbound_url, headers={"host": "orders"}) as c:
        r = await c.post("/echo", content=b"x" * 200_000)  # declared length over the limit
        assert r.status_code == 413 and r.headers["x-sidecar-reason"] == "too_large"

        async def chunks() -> Any:
            for _ in range(20):
                yield b"y" * 16384  # no content-length: the limit is found while streaming

        r = await c.post("/info", content=chunks())
        assert r.status_code == 413 and r.headers["x-sidecar-reason"] == "too_large"
        r = await c.get("/info")  # the connection goes on
        assert r.status_code == 200

"""HTTP/2 abuse against a real sidecar on 127.0.0.1: each attack from a raw h2 client (tests/h2_peer.py)
over TCP to the outbound listener, the answer it gets (GOAWAY or RST_STREAM and its error code), what
it cost (origin requests, stream tasks, open connections), and a fresh httpx HTTP/2 client served
afterwards."""

from __future__ import annotations

import contextlib
import shutil
from typing import Any

import httpx
import pytest
import trio
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import HeadersFrame, SettingsFrame

from sidecar.transport.h2_guard import MAX_CONCURRENT_STREAMS, RESET_BURST, STALL_TIMEOUT_FACTOR, STREAM_HARD_LIMIT
from sidecar.transport.h2_server import STATS
from tests.h2_peer import RawH2Peer

from .apps import Receive, Scope, Send, echo_app
from .conftest import Mesh, SidecarHandle, service

HEADER_READ_TIMEOUT = 0.2  # the stall timeout is STALL_TIMEOUT_FACTOR times this
STALL_TIMEOUT = STALL_TIMEOUT_FACTOR * HEADER_READ_TIMEOUT


class CountingOrigin:
    """The echo app, counting the requests it received and the ones still running; /hang answers
    only when the caller goes away (hypercorn tells the app with `http.disconnect`)."""

    def __init__(self) -> None:
        self.requests = 0
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await echo_app(scope, receive, send)
            return
        self.requests += 1
        self.active += 1
        try:
            if scope["path"] == "/hang":
                while (await receive())["type"] != "http.disconnect":
                    pass
            else:
                await echo_app(scope, receive, send)
        finally:
            self.active -= 1


async def sidecar_for(mesh: Mesh, app: Any = echo_app, **fields: Any) -> SidecarHandle:
    origin = await mesh.origin(app)
    return await mesh.sidecar(services=[service("orders", origin)], **fields)


async def attack(sc: SidecarHandle, settings: dict[int, int] | None = None) -> RawH2Peer:
    peer = RawH2Peer(await trio.open_tcp_stream("127.0.0.1", sc.outbound))
    await peer.start(settings)
    return peer


async def send_while_open(peer: RawH2Peer, *frames: Any) -> None:
    """Send, as an attacker does, without caring whether the server already hung up."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await peer.send(*frames)


async def assert_still_serves(sc: SidecarHandle) -> None:
    async with httpx.AsyncClient(http1=False, http2=True, base_url=sc.outbound_url, headers={"host": "orders"}) as c:
        r = await c.get("/info")
        assert r.status_code == 200 and r.http_version == "HTTP/2"


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


# -- rapid reset (CVE-2023-44487) ---------------------------------------------------------------


async def test_rapid_reset_gets_goaway_and_never_reaches_the_origin_in_bulk(mesh: Mesh) -> None:
    origin = CountingOrigin()
    sc = await sidecar_for(mesh, origin)
    streams_before = STATS.streams
    peer = await attack(sc)
    sent = 0
    with trio.fail_after(20):
        while not peer.closed and sent < 20_000:
            frames: list[Any] = []
            for stream_id in range(2 * sent + 1, 2 * sent + 200, 2):
                frames += [peer.request(stream_id, "/slow/3000"), peer.reset(stream_id)]
            await send_while_open(peer, *frames, peer.ping())
            sent += 100
            acks = peer.ping_acks
            while peer.ping_acks == acks and not peer.closed:
                await peer.receive()
        await peer.until_closed()
    assert peer.goaway is not None and peer.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert sent <= RESET_BURST + 300  # stopped within a few rounds past the budget
    assert origin.requests < RESET_BURST  # reset streams are cancelled before they cost an upstream request
    await wait_for(lambda: STATS.streams == streams_before)
    await assert_still_serves(sc)


async def test_reset_streams_cancel_their_upstream_requests(mesh: Mesh) -> None:
    origin = CountingOrigin()
    sc = await sidecar_for(mesh, origin)
    peer = await attack(sc)
    ids = range(1, 41, 2)
    await peer.send(*(peer.request(i, "/hang") for i in ids))
    await wait_for(lambda: origin.active == len(ids))
    await peer.send(*(peer.reset(i) for i in ids))
    await wait_for(lambda: origin.active == 0, timeout=3)  # the origin saw the requests go away at once
    await peer.send(peer.request(99))
    await peer.until(lambda: 99 in peer.ended)
    assert peer.status[99] == 200 and peer.goaway is None


# -- header blocks -------------------------------------------------------------------------------


async def test_continuation_flood_gets_goaway(mesh: Mesh) -> None:
    sc = await sidecar_for(mesh)
    peer = await attack(sc)
    piece = b"\x82" * 16000
    await send_while_open(peer, HeadersFrame(1, piece))  # HEADERS without END_HEADERS
    for _ in range(1000):  # and CONTINUATION for ever, 16 MB if nobody stops it
        if peer.closed:
            break
        await send_while_open(peer, peer.continuation(1, piece))
    assert await peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    await assert_still_serves(sc)


async def test_header_list_over_the_limit_gets_431_and_an_hpack_bomb_goaway(mesh: Mesh) -> None:
    sc = await sidecar_for(mesh, limits={"max_request_headers": "16KiB"})
    peer = await attack(sc)
    await peer.send(peer.request(1, extra=[(b"x-big", b"a" * 20_000)]))
    await peer.until(lambda: 1 in peer.ended)
    assert peer.status[1] == 431 and peer.headers[1][b"x-sidecar-reason"] == b"too_large"
    bomb = peer.request(3, extra=[(b"x-bomb", b"b" * 4000)] * 10_000)  # 40 MB decoded from 14 KB
    await peer.send(bomb)
    assert await peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    await assert_still_serves(sc)


# -- floods --------------------------------------------------------------------------------------


async def test_ping_flood_gets_goaway(mesh: Mesh) -> None:
    sc = await sidecar_for(mesh)
    peer = await attack(sc)
    await send_while_open(peer, *(peer.ping(i) for i in range(5000)))
    assert await peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    await assert_still_serves(sc)


async def test_rapid_reset_over_mutual_tls_on_the_inbound_listener(mesh: Mesh) -> None:
    """The same limits guard HTTP/2 negotiated by ALPN on the inbound (mutual TLS) listener."""
    origin = CountingOrigin()
    app = await mesh.origin(origin)
    sc = await mesh.sidecar(service="orders", inbound_app=app)
    assert sc.inbound is not None

    async def over_tls() -> RawH2Peer:
        context = mesh.pki.client_context("frontend")
        context.set_alpn_protocols(["h2"])
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", sc.inbound), context)
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "h2"
        peer = RawH2Peer(stream)
        await peer.start()
        return peer

    peer = await over_tls()
    frames: list[Any] = []
    for stream_id in range(1, 2 * 1000, 2):
        frames += [peer.request(stream_id, "/hang"), peer.reset(stream_id)]
    await send_while_open(peer, *frames)
    assert await peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    assert origin.requests < RESET_BURST
    fresh = await over_tls()
    await fresh.send(fresh.request(1))
    await fresh.until(lambda: 1 in fresh.ended)
    assert fresh.status[1] == 200


async def test_settings_flood_gets_goaway(mesh: Mesh) -> None:
    sc = await sidecar_for(mesh)
    peer = await attack(sc)
    await send_while_open(peer, *(SettingsFrame(0, settings={SettingCodes.HEADER_TABLE_SIZE: i}) for i in range(5000)))
    assert await peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    await assert_still_serves(sc)


# -- concurrent streams --------------------------------------------------------------------------


async def test_streams_past_the_limit_are_refused_and_the_others_complete(mesh: Mesh) -> None:
    sc = await sidecar_for(mesh)
    peer = await attack(sc)
    total = MAX_CONCURRENT_STREAMS + 10
    # In waves, so that the origin's accept backlog (hypercorn's is 100) takes the sidecar's connections.
    for first in range(0, total, 32):
        await peer.send(*(peer.request(2 * i + 1, "/slow/2000") for i in range(first, min(first + 32, total))))
        await trio.sleep(0.05)
    await peer.until(lambda: len(peer.ended) + len(peer.resets) == total, timeout=20)
    assert peer.resets == {2 * i + 1: ErrorCodes.REFUSED_STREAM for i in range(MAX_CONCURRENT_STREAMS, total)}
    assert len(peer.status) == MAX_CONCURRENT_STREAMS and set(peer.status.values()) == {200}
    assert peer.goaway is None
    await assert_still_serves(sc)


async def test_streams_far_past_the_limit_get_goaway(mesh: Mesh) -> None:
    sc = await sidecar_for(mesh)
    peer = await attack(sc)
    await send_while_open(peer, *(peer.request(2 * i + 1, "/slow/500") for i in range(STREAM_HARD_LIMIT + 50)))
    assert await peer.goaway_code() == ErrorCodes.PROTOCOL_ERROR
    await assert_still_serves(sc)


# -- peers that do not read ----------------------------------------------------------------------


async def test_stream_never_given_window_is_reset_while_the_others_flow(mesh: Mesh) -> None:
    sc = await sidecar_for(mesh, limits={"header_read_timeout": f"{int(HEADER_READ_TIMEOUT * 1000)}ms"})
    peer = await attack(sc, {SettingCodes.INITIAL_WINDOW_SIZE: 0})
    size = 100_000
    start = trio.current_time()
    await peer.send(peer.request(1, f"/bytes/{size}"), peer.request(3, f"/bytes/{size}"))
    await peer.send(peer.window_update(3, size), peer.window_update(0, 10 * size))
    await peer.until(lambda: 3 in peer.ended)
    assert peer.body[3] == size and 1 not in peer.body  # stream 1's stall did not hold stream 3 back
    await peer.until(lambda: 1 in peer.resets)
    assert peer.resets[1] == ErrorCodes.CANCEL
    assert trio.current_time() - start >= STALL_TIMEOUT
    await peer.send(peer.request(5, f"/bytes/{size}"), peer.window_update(5, size))  # the connection still serves
    await peer.until(lambda: 5 in peer.ended)
    assert peer.body[5] == size and peer.goaway is None


async def test_connection_window_kept_shut_gets_goaway(mesh: Mesh) -> None:
    origin = CountingOrigin()
    sc = await sidecar_for(mesh, origin, limits={"header_read_timeout": f"{int(HEADER_READ_TIMEOUT * 1000)}ms"})
    peer = await attack(sc)
    start = trio.current_time()
    await peer.send(peer.request(1, "/bytes/10000000"))
    assert await peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
    assert trio.current_time() - start >= STALL_TIMEOUT
    assert peer.body[1] == 65535  # the initial window, no more
    await wait_for(lambda: origin.active == 0)  # the upstream request went with the stream
    await assert_still_serves(sc)


async def test_peer_that_never_reads_the_socket_is_cut(mesh: Mesh) -> None:
    origin = CountingOrigin()
    sc = await sidecar_for(mesh, origin, limits={"header_read_timeout": f"{int(HEADER_READ_TIMEOUT * 1000)}ms"})
    streams_before, stalls_before = STATS.streams, STATS.abuse["send_stalled"]
    big = 1 << 30
    peer = await attack(sc, {SettingCodes.INITIAL_WINDOW_SIZE: big - 1})
    await peer.send(peer.window_update(0, big), peer.request(1, "/bytes/200000000"))  # then never read
    listener = sc.runtime.listeners["outbound"]
    await wait_for(lambda: origin.active == 1)
    start = trio.current_time()
    await wait_for(lambda: listener.connections == 0, timeout=STALL_TIMEOUT + 10)
    assert trio.current_time() - start >= STALL_TIMEOUT - 0.5  # cut by the stall timeout, not before
    await wait_for(lambda: origin.active == 0 and STATS.streams == streams_before)
    assert STATS.abuse["send_stalled"] == stalls_before + 1
    await peer.stream.aclose()
    await assert_still_serves(sc)


async def test_reset_of_a_stream_whose_write_is_blocked_keeps_the_connection_whole(mesh: Mesh) -> None:
    """The sidecar is writing stream 1 into a full socket when the client resets it: the write is
    finished, not cut half-way (which would leave a partial frame and kill the connection)."""
    sc = await sidecar_for(mesh)
    big = 1 << 30
    peer = await attack(sc, {SettingCodes.INITIAL_WINDOW_SIZE: big - 1})
    await peer.send(peer.window_update(0, big), peer.request(1, "/bytes/50000000"))
    await trio.sleep(0.5)  # not reading: the socket buffers fill and the sidecar's write blocks
    await peer.send(peer.reset(1), peer.request(3, "/info"))
    await peer.until(lambda: 3 in peer.ended, timeout=30)
    assert peer.status[3] == 200 and peer.goaway is None and not peer.closed


# -- no false alarms -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load comes with nghttp2-client")
async def test_a_client_at_the_full_stream_limit_is_never_refused(mesh: Mesh) -> None:
    """h2load keeps MAX_CONCURRENT_STREAMS streams open and opens the next one the moment one ends:
    nothing is refused or counted as abuse (the admin listener answers without an upstream)."""
    sc = await mesh.sidecar()
    before = dict(STATS.abuse)
    result = await trio.run_process(
        ["h2load", "-n", "5000", "-c", "2", "-m", str(MAX_CONCURRENT_STREAMS), f"{sc.admin_url}/live"],
        capture_stdout=True,
    )
    out = result.stdout.decode()
    assert "5000 succeeded, 0 failed, 0 errored" in out, out
    assert dict(STATS.abuse) == before

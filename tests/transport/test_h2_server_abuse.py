"""sidecar.transport.h2_server.H2Server under attack, over in-memory streams with trio's MockClock:
the peer is a raw HTTP/2 client (tests/h2_peer.py) that breaks the rules h2's own client keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio.testing
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import HeadersFrame, SettingsFrame

from sidecar.config.schema import Address
from sidecar.http.message import BytesBody, ConnectionInfo, Headers, Request, Response
from sidecar.logger import capture_logs
from sidecar.transport.h1_server import ServerLimits
from sidecar.transport.h2_guard import MAX_CONCURRENT_STREAMS, RESET_BURST, STALL_TIMEOUT_FACTOR, STREAM_HARD_LIMIT
from sidecar.transport.h2_server import STATS, H2Server
from sidecar.transport.listener import Listener
from tests.h2_peer import RawH2Peer

TICK = 0.1  # the listener's watchdog period
PEER = "10.0.0.9"


class Work:
    """The handler: answers `body` at once, except for /hang, which waits for `release`. Counts the
    requests it started and the ones cancelled while waiting."""

    def __init__(self, body: bytes = b"hello") -> None:
        self.body = body
        self.started = 0
        self.cancelled = 0
        self.release = trio.Event()

    async def __call__(self, request: Request) -> Response:
        self.started += 1
        if request.target == b"/hang":
            try:
                await self.release.wait()
            except trio.Cancelled:
                self.cancelled += 1
                raise
        return Response(200, Headers.of([(b"content-type", b"text/plain")]), BytesBody(self.body))


@dataclass
class Harness:
    peer: RawH2Peer
    server: H2Server
    work: Work
    done: trio.Event
    escaped: list[BaseException] = field(default_factory=list)

    async def round_trip(self, n: int = 0) -> None:
        """A PING answered: the server has processed everything sent before it."""
        acks = self.peer.ping_acks
        await self.peer.send(self.peer.ping(n))
        await self.peer.until(lambda: self.peer.ping_acks > acks)


@asynccontextmanager
async def serving(
    work: Work | None = None,
    limits: ServerLimits | None = None,
    pair: Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]] = trio.testing.memory_stream_pair,
    settings: dict[int, int] | None = None,
    start: bool = True,
) -> AsyncIterator[Harness]:
    client, server_stream = pair()
    listener = Listener("test", Address("127.0.0.1", 15001))
    listener.tick = TICK
    work = work or Work()
    server = H2Server(server_stream, ConnectionInfo(PEER, 5555), work, limits or ServerLimits(), listener)
    harness = Harness(RawH2Peer(client), server, work, trio.Event())

    async def run() -> None:
        try:
            await server.serve()
        except Exception as exc:
            harness.escaped.append(exc)
        finally:
            await trio.aclose_forcefully(server_stream)
            harness.done.set()

    async def no_connections(stream: object) -> None:
        raise AssertionError("the test listener has no sockets")

    streams_before = STATS.streams
    async with trio.open_nursery() as nursery:
        await listener.serve(no_connections, nursery)
        nursery.start_soon(run)
        if start:
            await harness.peer.start(settings)
        yield harness
        await trio.aclose_forcefully(client)
        with trio.fail_after(5):
            await harness.done.wait()
        nursery.cancel_scope.cancel()
    assert harness.escaped == [], f"serve() raised {harness.escaped!r}"
    assert STATS.streams == streams_before, "stream tasks left running"


def requests_and_resets(peer: RawH2Peer, first: int, count: int, path: str = "/hang") -> list:
    frames = []
    for stream_id in range(first, first + 2 * count, 2):
        frames += [peer.request(stream_id, path), peer.reset(stream_id)]
    return frames


# -- rapid reset --------------------------------------------------------------------------------


async def test_reset_stream_work_is_cancelled_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        await h.peer.send(h.peer.request(1, "/hang"))
        await h.round_trip()
        assert h.work.started == 1 and STATS.streams >= 1
        start = trio.current_time()
        await h.peer.send(h.peer.reset(1))
        await h.round_trip()
        assert h.work.cancelled == 1
        assert trio.current_time() == start  # no timeout involved
        await h.peer.send(h.peer.request(3, "/info"))
        await h.peer.until(lambda: 3 in h.peer.ended)
        assert h.peer.status[3] == 200


async def test_rapid_reset_ends_the_connection_with_enhance_your_calm(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        with capture_logs() as logs:
            await h.peer.send(*requests_and_resets(h.peer, 1, 1000))
            assert await h.peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
        assert h.peer.goaway is not None
        assert h.peer.goaway.last_stream_id < 2 * (RESET_BURST + 1)  # streams past the limit were not taken
        assert h.work.started == h.work.cancelled  # whatever started was cancelled
        abuse = [e for e in logs if e["event"] == "h2_abuse"]
        assert abuse == [{"event": "h2_abuse", "reason": "rapid_reset", "peer": PEER, "level": "warning"}]


async def test_sustained_reset_rate_past_the_budget_is_caught(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        stream_id = 1
        with trio.fail_after(60):
            while not h.peer.closed:  # 1000 resets a second, in rounds of 100
                try:
                    await h.peer.send(*requests_and_resets(h.peer, stream_id, 100), h.peer.ping())
                except trio.BrokenResourceError:
                    break
                stream_id += 200
                acks = h.peer.ping_acks
                while h.peer.ping_acks == acks and not h.peer.closed:
                    await h.peer.receive()
                await trio.sleep(0.1)
        assert stream_id // 2 < RESET_BURST + 1000  # caught within about a second
        assert h.peer.goaway is not None and h.peer.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


async def test_clients_that_cancel_at_a_modest_rate_are_served(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        for i in range(1, 4 * RESET_BURST, 2):  # 50 resets a second for ten seconds
            await h.peer.send(*requests_and_resets(h.peer, i, 1))
            await trio.sleep(0.02)
        await h.peer.send(h.peer.request(4 * RESET_BURST + 1))
        await h.peer.until(lambda: 4 * RESET_BURST + 1 in h.peer.ended)
        assert h.peer.goaway is None


async def test_clients_that_cancel_half_their_streams_are_served(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        start = trio.current_time()
        for i in range(1, 8 * RESET_BURST, 4):  # as fast as it goes: one completed, one cancelled
            await h.peer.send(h.peer.request(i, "/info"), *requests_and_resets(h.peer, i + 2, 1))
            await h.peer.until(lambda i=i: i in h.peer.ended)  # type: ignore[misc]
        assert trio.current_time() - start < 1  # completed streams, not time, kept the budget up
        assert h.peer.goaway is None


# -- floods --------------------------------------------------------------------------------------


async def test_ping_flood_ends_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        await h.peer.send(*(h.peer.ping(i) for i in range(1000)))
        assert await h.peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM


async def test_pings_at_a_steady_modest_rate_are_answered(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        for i in range(600):  # ten a second for a minute
            await h.round_trip(i)
            await trio.sleep(0.1)
        assert h.peer.ping_acks == 600 and h.peer.goaway is None


async def test_settings_flood_ends_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        flood = [SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: 65535 + i}) for i in range(500)]
        await h.peer.send(*flood)
        assert await h.peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM


async def test_acks_of_a_flood_are_bounded_when_the_peer_does_not_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reader does not read again until what it queued is written: a peer that sends PINGs and
    never reads gets at most one read's worth of ACKs queued, then is cut by the stall timeout."""
    limits = ServerLimits(header_read_timeout=1.0)
    stalls_before = STATS.abuse["send_stalled"]
    async with serving(limits=limits, pair=trio.testing.lockstep_stream_pair, start=False) as h:
        await h.peer.receive()  # the server's SETTINGS, then never read again
        pings = 0

        async def flood() -> None:
            nonlocal pings
            try:
                await h.peer.start()
                while True:  # one PING per second, within the budget: only the stall can stop it
                    await h.peer.send(h.peer.ping(pings))
                    pings += 1
                    await trio.sleep(1)
            except trio.BrokenResourceError:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            start = trio.current_time()
            await h.done.wait()
            nursery.cancel_scope.cancel()
        assert trio.current_time() - start <= STALL_TIMEOUT_FACTOR * 1.0 + 2 * TICK
        assert pings <= STALL_TIMEOUT_FACTOR + 2  # the server stopped reading once its writes blocked
        assert STATS.abuse["send_stalled"] == stalls_before + 1


# -- concurrent streams --------------------------------------------------------------------------


async def test_streams_past_the_limit_are_refused_and_the_others_complete(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving() as h:
        total = MAX_CONCURRENT_STREAMS + 10
        await h.peer.send(*(h.peer.request(2 * i + 1, "/hang") for i in range(total)))
        await h.peer.until(lambda: len(h.peer.resets) == 10)
        refused = sorted(h.peer.resets)
        assert refused == [2 * i + 1 for i in range(MAX_CONCURRENT_STREAMS, total)]  # the last ones
        assert set(h.peer.resets.values()) == {ErrorCodes.REFUSED_STREAM}
        await h.round_trip()
        assert h.work.started == MAX_CONCURRENT_STREAMS
        h.work.release.set()
        await h.peer.until(lambda: len(h.peer.ended) == MAX_CONCURRENT_STREAMS)
        assert set(h.peer.status.values()) == {200} and len(h.peer.status) == MAX_CONCURRENT_STREAMS
        await h.peer.send(h.peer.request(2 * total + 1))  # room again
        await h.peer.until(lambda: 2 * total + 1 in h.peer.ended)
        assert h.peer.goaway is None


async def test_streams_far_past_the_limit_end_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with serving() as h:
        await h.peer.send(*(h.peer.request(2 * i + 1, "/hang") for i in range(STREAM_HARD_LIMIT + 10)))
        assert await h.peer.goaway_code() == ErrorCodes.PROTOCOL_ERROR
        assert h.work.started == h.work.cancelled


# -- header blocks -------------------------------------------------------------------------------


SMALL = ServerLimits(max_request_headers=16 * 1024)


async def test_continuation_flood_bounded_in_bytes(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=SMALL) as h:
        piece = b"\x82" * 16000  # ":method GET" again and again: any bytes will do, never decoded
        await h.peer.send(HeadersFrame(1, piece), *(h.peer.continuation(1, piece) for _ in range(60)))
        assert await h.peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
        assert h.work.started == 0


async def test_empty_continuation_flood_ends_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=SMALL) as h:
        head = h.peer.request(1)
        head.flags.discard("END_HEADERS")
        await h.peer.send(head, *(h.peer.continuation(1, b"") for _ in range(1000)))
        assert await h.peer.goaway_code() == ErrorCodes.PROTOCOL_ERROR


async def test_header_list_over_the_limit_is_431_on_its_stream(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=SMALL) as h:
        await h.peer.send(h.peer.request(1, extra=[(b"x-big", b"a" * 20_000)]))
        await h.peer.until(lambda: 1 in h.peer.ended)
        assert h.peer.status[1] == 431
        assert h.peer.headers[1][b"x-sidecar-reason"] == b"too_large"
        await h.peer.send(h.peer.request(3))
        await h.peer.until(lambda: 3 in h.peer.ended)
        assert h.peer.status[3] == 200 and h.work.started == 1


async def test_header_list_over_the_default_limit_is_431(autojump_clock: trio.testing.MockClock) -> None:
    """HPACK decoding goes on past the advertised limit (to twice it), so that the list can be answered."""
    async with serving() as h:
        await h.peer.send(*h.peer.request_frames(1, extra=[(b"x-big-%d" % i, b"a" * 8000) for i in range(9)]))
        await h.peer.until(lambda: 1 in h.peer.ended)
        assert h.peer.status[1] == 431


async def test_small_hpack_bomb_is_431(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=SMALL) as h:
        await h.peer.send(h.peer.request(1, extra=[(b"x-bomb", b"a" * 4000)] * 6))  # ~24 KiB from ~4 KiB
        await h.peer.until(lambda: 1 in h.peer.ended)
        assert h.peer.status[1] == 431


async def test_hpack_bomb_ends_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(limits=SMALL) as h:
        frame = h.peer.request(1, extra=[(b"x-bomb", b"a" * 4000)] * 10_000)  # 40 MB from 14 KB
        assert len(frame.data) < 16_000
        await h.peer.send(frame)
        assert await h.peer.goaway_code() == ErrorCodes.ENHANCE_YOUR_CALM
        assert h.work.started == 0


# -- peers that do not read ----------------------------------------------------------------------

STALL = ServerLimits(header_read_timeout=1.0)
STALL_TIMEOUT = STALL_TIMEOUT_FACTOR * 1.0


async def test_stream_without_window_is_reset_and_the_others_flow(autojump_clock: trio.testing.MockClock) -> None:
    size = 100_000
    async with serving(Work(b"x" * size), limits=STALL, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as h:
        peer = h.peer
        start = trio.current_time()
        await peer.send(peer.request(1), peer.request(3), peer.window_update(3, size), peer.window_update(0, 10 * size))
        await peer.until(lambda: 3 in peer.ended)
        assert peer.body[3] == size and peer.status[1] == 200 and 1 not in peer.body
        await peer.until(lambda: 1 in peer.resets)
        assert peer.resets[1] == ErrorCodes.CANCEL
        assert STALL_TIMEOUT <= trio.current_time() - start <= STALL_TIMEOUT + 1
        await peer.send(peer.request(5), peer.window_update(5, size))  # the connection still serves
        await peer.until(lambda: 5 in peer.ended)
        assert peer.body[5] == size and peer.goaway is None


async def test_window_opened_by_settings_lets_a_waiting_stream_go_on(autojump_clock: trio.testing.MockClock) -> None:
    """A larger SETTINGS_INITIAL_WINDOW_SIZE opens every stream's window without a WINDOW_UPDATE."""
    size = 100_000
    async with serving(Work(b"x" * size), limits=STALL, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as h:
        await h.peer.send(h.peer.request(1), h.peer.window_update(0, size))
        await trio.sleep(1)
        start = trio.current_time()
        await h.peer.send(SettingsFrame(0, settings={SettingCodes.INITIAL_WINDOW_SIZE: size}))
        await h.peer.until(lambda: 1 in h.peer.ended)
        assert h.peer.body[1] == size and trio.current_time() - start < 1


async def test_connection_window_kept_shut_ends_the_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(Work(b"x" * 200_000), limits=STALL) as h:
        start = trio.current_time()
        await h.peer.send(h.peer.request(1), h.peer.request(3))
        assert await h.peer.goaway_code(timeout=STALL_TIMEOUT + 5) == ErrorCodes.ENHANCE_YOUR_CALM
        assert STALL_TIMEOUT <= trio.current_time() - start <= STALL_TIMEOUT + 1
        assert sum(h.peer.body.values()) == 65535  # the initial connection window, no more


async def test_window_trickle_keeps_a_stream_alive(autojump_clock: trio.testing.MockClock) -> None:
    """Backpressure from a slow consumer is legitimate: only a stall (no window at all) is cut."""
    size = 40_000
    async with serving(Work(b"x" * size), limits=STALL, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0}) as h:
        await h.peer.send(h.peer.request(1))
        for _ in range(size // 4000):
            await trio.sleep(STALL_TIMEOUT - 1)
            await h.peer.send(h.peer.window_update(1, 4000))
        await h.peer.until(lambda: 1 in h.peer.ended)
        assert h.peer.body[1] == size and h.peer.resets == {}


async def test_peer_that_never_reads_is_cut_after_the_stall_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with serving(Work(b"x" * 1_000_000), limits=STALL, pair=trio.testing.lockstep_stream_pair, start=False) as h:
        await h.peer.receive()  # the server's SETTINGS
        await h.peer.stream.send_all(h.peer.opening() + h.peer.request(1).serialize())
        start = trio.current_time()
        await h.done.wait()  # never reading: the server gives up by itself
        assert STALL_TIMEOUT <= trio.current_time() - start <= STALL_TIMEOUT + 2 * TICK
        assert h.work.started == 1


async def test_idle_connection_closed_after_its_last_stream(autojump_clock: trio.testing.MockClock) -> None:
    """The idle timeout starts when the last stream ends, even while the reader waits for a frame."""
    async with serving(limits=STALL) as h:
        await h.peer.send(h.peer.request(1))
        await h.peer.until(lambda: 1 in h.peer.ended)
        start = trio.current_time()
        await h.peer.until_closed(timeout=5)
        assert trio.current_time() - start <= 1.0 + 2 * TICK

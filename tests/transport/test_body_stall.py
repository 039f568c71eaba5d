"""The stall timeout of response bodies, WireBody (HTTP/1.1) and H2Body (HTTP/2): a body that stops
sending ends with 504 upstream_timeout after `stall_timeout` of silence; a body that keeps trickling is
never cut (MockClock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from sidecar.http.errors import UpstreamTimeout
from sidecar.transport.body import WireBody
from sidecar.transport.h2_body import H2Body
from sidecar.transport.wire import Wire


def body_over(stream: trio.abc.Stream, length: int, stall: float | None, ended: list[str]) -> WireBody:
    return WireBody(
        Wire(stream),
        length,
        truncated=lambda m: Exception(m),
        violation=lambda m: Exception(m),
        on_end=lambda: ended.append("end"),
        on_abort=lambda: ended.append("abort"),
        stall_timeout=stall,
    )


async def test_silence_longer_than_the_stall_timeout_ends_the_body(autojump_clock: trio.testing.MockClock) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    ended: list[str] = []
    body = body_over(ours, 100, 5.0, ended)
    await theirs.send_all(b"x" * 10)
    assert await body.read() == b"x" * 10
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout):
        await body.read()
    assert trio.current_time() - started == pytest.approx(5.0)
    assert ended == ["abort"] and body.failed


async def test_a_trickle_is_never_cut(autojump_clock: trio.testing.MockClock) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    ended: list[str] = []
    body = body_over(ours, 30, 5.0, ended)
    received = b""

    async def trickle() -> None:
        for _ in range(30):
            await trio.sleep(4)  # just under the stall timeout, thirty times
            await theirs.send_all(b"y")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        while chunk := await body.read():
            received += chunk
    assert received == b"y" * 30 and ended == ["end"]


class Credits:
    """The FlowOwner of an H2Body: records the credit returned for read and for abandoned chunks."""

    def __init__(self) -> None:
        self.acknowledged = 0
        self.released = 0

    async def acknowledge(self, stream_id: int, flow_controlled: int) -> None:
        self.acknowledged += flow_controlled

    def release(self, stream_id: int, flow_controlled: int) -> None:
        self.released += flow_controlled


async def test_an_http2_response_body_that_stalls_is_given_up(autojump_clock: trio.testing.MockClock) -> None:
    credits = Credits()
    outcomes: list[bool] = []
    body = H2Body(credits, 1, 100, on_done=outcomes.append, stall_timeout=5.0)
    body.feed(b"x" * 10, 10)
    assert await body.read() == b"x" * 10
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout):
        await body.read()
    assert trio.current_time() - started == pytest.approx(5.0)
    assert outcomes == [True] and body.failed  # failed: the connection resets the stream
    body.feed(b"late", 4)
    assert credits.acknowledged == 10 and credits.released == 4  # a late chunk's credit goes back


async def test_an_http2_body_that_trickles_is_never_cut(autojump_clock: trio.testing.MockClock) -> None:
    body = H2Body(Credits(), 1, 30, stall_timeout=5.0)
    received = b""

    async def trickle() -> None:
        for _ in range(30):
            await trio.sleep(4)
            body.feed(b"y", 1)
        body.end()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        while chunk := await body.read():
            received += chunk
    assert received == b"y" * 30 and not body.failed

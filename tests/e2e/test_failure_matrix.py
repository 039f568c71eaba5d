"""Every local reply and failure path over every protocol pairing (see `matrix.py`): downstream
HTTP/1.1 and h2c x hop HTTP/1.1 and HTTP/2 x app HTTP/1.1 and h2c.

Each failure gets its reply at once (well before the request timeout the path is built with), the
upstream try ends with it (the app sees the request vanish, nothing stays in flight), and the sidecars
keep serving. A request body that turns bad before any response byte gets its local reply; after the
response started, the response is cut (HTTP/1.1: the connection closes short; HTTP/2: RST_STREAM).
"""

from __future__ import annotations

import h2.errors
import pytest
import trio

from .conftest import Mesh, Pairing, free_port
from .matrix import (
    BAD,
    LEAVE,
    RESPONSE_STARTED,
    STALL,
    H1Client,
    H2Client,
    MatrixPath,
    RecordingApp,
    Reply,
    RudeApp,
    Trailers,
    Wait,
)

CANCEL = h2.errors.ErrorCodes.CANCEL
PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR


def assert_local_reply(reply: Reply, status: int, reason: str) -> None:
    assert (reply.status, reply.reason) == (status, reason), reply
    assert reply.complete, reply
    assert b"127.0.0.1" not in reply.body  # never an internal address


async def assert_vanished(app: RecordingApp | RudeApp, path: str) -> None:
    """The app saw the request go away (the upstream try was ended, not left to time out)."""
    (seen,) = app.of(path)
    with trio.fail_after(5):
        await seen.gone.wait()
    assert not seen.ended


# --------------------------------------------------------------------------------------------------
# Request bodies that turn bad after the head went upstream
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["a", "b"])
async def test_body_crossing_the_limit_while_streaming_is_413(mesh: Mesh, pairing: Pairing, where: str) -> None:
    """The limit is crossed after the head was forwarded: at sidecar A (outbound) or at B (inbound)."""
    app = RecordingApp()
    limits = {"limits": {"max_request_body": "1KiB"}}
    path = await MatrixPath(mesh, pairing).build(
        app, a_fields=limits if where == "a" else None, b_fields=limits if where == "b" else None
    )
    client = await path.client()
    body = [b"a" * 600, app.head_seen("/read"), b"b" * 600, b"c" * 600]
    reply = await path.exchange(client, "POST", "/read", body=body)
    assert_local_reply(reply, 413, "too_large")
    if pairing.downstream == "http1" and where == "a":
        assert await client.closed()  # the rest of the body is never read
    await assert_vanished(app, "/read")
    await path.settled()
    await path.serves()


async def test_body_over_the_limit_known_up_front_is_413_and_never_forwarded(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app, a_fields={"limits": {"max_request_body": "1KiB"}})
    client = await path.client()
    reply = await path.exchange(client, "POST", "/read", body=[b"x" * 2048], length=2048)
    assert_local_reply(reply, 413, "too_large")
    if pairing.downstream == "http1":
        assert await client.closed()
    assert app.seen == []
    await path.settled()
    await path.serves()


async def test_malformed_body_after_forwarding_started_is_400(mesh: Mesh, pairing: Pairing) -> None:
    """HTTP/1.1: a chunk size that is not hex; HTTP/2: more DATA than the content-length said."""
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    length = None if pairing.downstream == "http1" else 1200
    reply = await path.exchange(client, "POST", "/read", body=[b"a" * 600, app.head_seen("/read"), BAD], length=length)
    if pairing.downstream == "http1":
        assert_local_reply(reply, 400, "bad_request")
        assert await client.closed()
    else:  # RFC 9113 §8.1.1: a stream error, with or without a 400 first
        assert reply.status == 400 or reply.reset == PROTOCOL_ERROR, reply
        assert reply.status is None or reply.reason == "bad_request", reply
    await assert_vanished(app, "/read")
    await path.settled()
    await path.serves()


async def test_trailers_over_the_header_limit_are_431(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app, a_fields={"limits": {"max_request_headers": "4KiB"}})
    client = await path.client()
    big = Trailers(((b"x-checksum", b"c" * 6000),))
    reply = await path.exchange(client, "POST", "/read", body=[b"a" * 600, app.head_seen("/read"), big])
    assert_local_reply(reply, 431, "too_large")
    if pairing.downstream == "http1":
        assert await client.closed()
    await assert_vanished(app, "/read")
    await path.settled()
    await path.serves()


async def test_body_turning_bad_after_the_response_started_cuts_the_response(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app, a_fields={"limits": {"max_request_body": "1KiB"}})
    client = await path.client()
    reply = await path.exchange(client, "POST", "/echo", body=[b"a" * 600, RESPONSE_STARTED, b"b" * 600])
    assert reply.status == 200 and reply.cut, reply
    if pairing.downstream == "http1":
        assert reply.closed
    else:
        assert reply.reset is not None
    await assert_vanished(app, "/echo")
    await path.settled()
    await path.serves()


async def test_client_leaving_mid_body_ends_the_upstream_try(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    length = None if pairing.downstream == "http1" else 5000
    reply = await path.exchange(
        client, "POST", "/read", body=[b"a" * 600, app.head_seen("/read"), LEAVE], length=length
    )
    assert reply.status is None
    await assert_vanished(app, "/read")
    await path.settled()
    if isinstance(client, H2Client):  # the stream went, the connection stays
        assert (await path.exchange(client, "GET", "/info")).status == 200
    await path.serves()


async def test_client_leaving_while_waiting_for_the_response_ends_the_upstream_try(
    mesh: Mesh, pairing: Pairing
) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.exchange, "GET", "/hold")
        await app.arrived("/hold")
        nursery.cancel_scope.cancel()
    await client.aclose()
    await assert_vanished(app, "/hold")
    await path.settled()
    await path.serves()


async def test_body_that_stalls_gets_504_at_the_request_timeout(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app, service_fields={"timeouts": {"request": "500ms"}})
    client = await path.client()
    length = None if pairing.downstream == "http1" else 5000
    reply = await path.exchange(
        client, "POST", "/read", body=[b"a" * 600, app.head_seen("/read"), STALL], length=length
    )
    assert_local_reply(reply, 504, "upstream_timeout")
    if pairing.downstream == "http1":
        assert await client.closed()
    await assert_vanished(app, "/read")
    await path.settled()
    await path.serves()


# --------------------------------------------------------------------------------------------------
# The app misbehaves
# --------------------------------------------------------------------------------------------------


async def test_app_resetting_mid_request_body_is_502_reset(mesh: Mesh, pairing: Pairing) -> None:
    app = RudeApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    length = None if pairing.downstream == "http1" else 5000
    reply = await path.exchange(
        client, "POST", "/reset-body", body=[b"a" * 600, app.head_seen("/reset-body"), STALL], length=length
    )
    assert_local_reply(reply, 502, "upstream_reset")
    if pairing.downstream == "http1":
        assert await client.closed()  # the rest of the body was never read
    await path.settled()
    await path.serves()


async def test_app_cutting_its_response_cuts_the_response(mesh: Mesh, pairing: Pairing) -> None:
    app = RudeApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    reply = await path.exchange(client, "GET", "/cut")
    assert reply.status == 200 and reply.cut, reply
    assert len(reply.body) < 100
    await path.settled()
    await path.serves()


@pytest.mark.parametrize(
    ("app_path", "reason"), [("/close", "upstream_reset"), ("/garbage", "upstream_protocol_error")]
)
async def test_app_failing_before_a_response_is_502(mesh: Mesh, pairing: Pairing, app_path: str, reason: str) -> None:
    app = RudeApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    reply = await path.exchange(client, "POST", app_path, body=[b"a" * 100], length=100)
    assert_local_reply(reply, 502, reason)
    assert len(app.of(app_path)) == 1  # a POST is not retried (by either sidecar)
    await path.settled()
    await path.serves()


async def test_dead_app_is_502_connect_failure(mesh: Mesh, pairing: Pairing) -> None:
    path = await MatrixPath(mesh, pairing).build(None)
    client = await path.client()
    reply = await path.exchange(client, "GET", "/info")
    assert_local_reply(reply, 502, "upstream_connect_failure")
    await path.settled()


async def test_slow_app_is_504_and_the_app_sees_the_request_go(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app, service_fields={"timeouts": {"request": "500ms"}})
    client = await path.client()
    reply = await path.exchange(client, "GET", "/hold")
    assert_local_reply(reply, 504, "upstream_timeout")
    for seen in app.of("/hold"):
        with trio.fail_after(5):
            await seen.gone.wait()
    await path.settled()
    await path.serves()


# --------------------------------------------------------------------------------------------------
# Replies made before anything is forwarded
# --------------------------------------------------------------------------------------------------

SMUGGLING = {
    "content-length and transfer-encoding": (
        b"POST /read HTTP/1.1\r\nHost: orders\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "differing content-lengths": (
        b"POST /read HTTP/1.1\r\nHost: orders\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"
    ),
    "content-length list": b"POST /read HTTP/1.1\r\nHost: orders\r\nContent-Length: 4, 5\r\n\r\nabcde",
    "obfuscated transfer-encoding": (
        b"POST /read HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    ),
    "transfer-encoding list": (
        b"POST /read HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "space before colon": b"POST /read HTTP/1.1\r\nHost: orders\r\nContent-Length : 5\r\n\r\nabcde",
    "bare LF": b"GET /info HTTP/1.1\nHost: orders\n\n",
    "obs-fold": b"GET /info HTTP/1.1\r\nHost: orders\r\nX-A: 1\r\n  folded\r\n\r\n",
    "missing host": b"GET /info HTTP/1.1\r\n\r\n",
    "two hosts": b"GET /info HTTP/1.1\r\nHost: orders\r\nHost: evil\r\n\r\n",
    "bad request line": b"GET /info HTTP/1.1 extra\r\nHost: orders\r\n\r\n",
    "control character": b"GET /info HTTP/1.1\r\nHost: orders\r\nX-A: a\x00b\r\n\r\n",
    "smuggled second request": (
        b"POST /read HTTP/1.1\r\nHost: orders\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: orders\r\n\r\n"
    ),
}
"""HTTP/1.1 requests a proxy must refuse rather than guess at (RFC 9112 §6.3, §5.1, §5.2)."""

_PSEUDO = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"orders"), (b":path", b"/read")]
MALFORMED_H2 = {
    "connection header": [*_PSEUDO, (b"connection", b"keep-alive")],
    "transfer-encoding": [*_PSEUDO, (b"transfer-encoding", b"chunked")],
    "te other than trailers": [*_PSEUDO, (b"te", b"gzip")],
    "upper-case name": [*_PSEUDO, (b"X-Upper", b"1")],
    "pseudo-header after a regular one": [*_PSEUDO[:3], (b"x-a", b"1"), _PSEUDO[3]],
    "missing :path": _PSEUDO[:3],
    "unknown pseudo-header": [*_PSEUDO, (b":protocol2", b"x")],
    "control character in a value": [*_PSEUDO, (b"x-a", b"a\x00b")],
    "differing content-lengths": [*_PSEUDO, (b"content-length", b"3"), (b"content-length", b"4")],
    "empty :path": [*_PSEUDO[:3], (b":path", b"")],
}
"""HTTP/2 requests RFC 9113 §8.2 and §8.3 call malformed."""


BAD_CHUNKS = {
    "hex prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "negative": b"-5\r\nhello\r\n0\r\n\r\n",
    "not hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "data longer than size": b"3\r\nhello\r\n0\r\n\r\n",
    "oversized": b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
}


async def test_bad_chunks_are_400_and_close(mesh: Mesh, pairing: Pairing) -> None:
    """However the chunked framing breaks, the reply is 400 and the connection closes; the app never
    gets a whole request (its head may have gone upstream with the good bytes before the bad ones)."""
    if pairing.downstream != "http1":
        pytest.skip("chunked framing is HTTP/1.1's")
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app)
    for shape, chunks in BAD_CHUNKS.items():
        client = await path.client()
        assert isinstance(client, H1Client)
        with trio.fail_after(5):
            reply = await client.send_raw(
                b"POST /read HTTP/1.1\r\nHost: orders\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
            )
            assert (reply.status, reply.reason) == (400, "bad_request"), shape
            assert reply.closed or await client.closed(), shape
    await path.settled()
    assert not any(seen.ended for seen in app.seen)


async def test_smuggling_shapes_are_400_close_and_reach_nobody(mesh: Mesh, pairing: Pairing) -> None:
    """HTTP/1.1: each shape gets 400 and the connection closed; HTTP/2: each malformed request is a
    400 or a stream error (PROTOCOL_ERROR) and the connection goes on. Nothing reaches the app."""
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app)
    if pairing.downstream == "http1":
        for shape, data in SMUGGLING.items():
            client = await path.client()
            assert isinstance(client, H1Client)
            with trio.fail_after(5):
                reply = await client.send_raw(data)
                assert (reply.status, reply.reason) == (400, "bad_request"), shape
                assert reply.closed or await client.closed(), shape
    else:
        client = await path.client()
        assert isinstance(client, H2Client)
        for shape, fields in MALFORMED_H2.items():
            reply = await path.exchange(client, fields=fields, body=[b"abc"])
            assert reply.reset == PROTOCOL_ERROR or (reply.status, reply.reason) == (400, "bad_request"), shape
        assert (await path.exchange(client, "GET", "/info")).status == 200  # the connection goes on
    assert app.of("/read") == [] and app.of("/admin") == []
    await path.settled()


async def test_unknown_host_is_404_no_route(mesh: Mesh, pairing: Pairing) -> None:
    path = await MatrixPath(mesh, pairing).build(RecordingApp())
    client = await path.client()
    client.authority = b"nowhere.example"
    assert_local_reply(await path.exchange(client, "GET", "/info"), 404, "no_route")


async def test_caller_outside_the_allow_list_is_403(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(
        app, b_inbound={"allow": ["spiffe://mesh.local/ns/default/sa/billing"]}
    )
    client = await path.client()
    assert_local_reply(await path.exchange(client, "POST", "/read", body=[b"a" * 100]), 403, "unauthorized")
    assert app.seen == []
    await path.settled()


@pytest.mark.parametrize("where", ["a", "b"])
async def test_headers_over_the_limit_are_431(mesh: Mesh, pairing: Pairing, where: str) -> None:
    """Headers over `max_request_headers` (at sidecar A, or at B behind the hop) get 431 `too_large`
    for that request alone, even a block several times the limit: a request in flight beside it (on
    the same connection where HTTP/2 shares one) goes on."""
    app = RecordingApp()
    limits = {"limits": {"max_request_headers": "4KiB"}}
    path = await MatrixPath(mesh, pairing).build(
        app, a_fields=limits if where == "a" else None, b_fields=limits if where == "b" else None
    )
    beside = await path.client()
    release = trio.Event()
    replies: list[Reply] = []

    async def in_flight() -> None:
        replies.append(await path.exchange(beside, "POST", "/read", body=[b"a" * 100, Wait(release.wait)]))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_flight)
        await app.arrived("/read")
        client = beside if isinstance(beside, H2Client) else await path.client()
        reply = await path.exchange(client, "GET", "/info", headers=[(b"x-big", b"a" * 20_000)])
        assert_local_reply(reply, 431, "too_large")
        release.set()
    assert (replies[0].status, replies[0].complete) == (200, True), replies
    assert app.of("/info") == []
    await path.serves()


async def test_no_endpoint_left_is_503_no_healthy_upstream(mesh: Mesh, pairing: Pairing) -> None:
    path = await MatrixPath(mesh, pairing).build(
        RecordingApp(), service_fields={"endpoints": [{"address": "no-such-host.invalid:15006"}]}
    )
    client = await path.client()
    assert_local_reply(await path.exchange(client, "GET", "/info"), 503, "no_healthy_upstream")


async def test_full_breaker_is_503_overflow(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app, service_fields={"circuit_breaker": {"max_requests": 1}})
    holder = await path.client()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder.exchange, "GET", "/hold")
        await app.arrived("/hold")
        client = await path.client()
        reply = await path.exchange(client, "POST", "/read", body=[b"a" * 100])
        assert_local_reply(reply, 503, "overflow")
        assert reply.headers["x-sidecar-overloaded"] == "true"
        nursery.cancel_scope.cancel()
    await holder.aclose()
    await path.settled()
    await path.serves()


async def test_dead_peer_sidecar_is_502_connect_failure(mesh: Mesh, pairing: Pairing) -> None:
    path = await MatrixPath(mesh, pairing).build(
        RecordingApp(), service_fields={"endpoints": [{"address": f"127.0.0.1:{free_port()}"}]}
    )
    client = await path.client()
    assert_local_reply(await path.exchange(client, "POST", "/read", body=[b"a" * 100]), 502, "upstream_connect_failure")
    await path.settled()

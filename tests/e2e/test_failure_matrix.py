"""Every local reply and failure path over every protocol pairing (see `matrix.py`):
downstream HTTP/1.1 and h2c x hop HTTP/1.1 and HTTP/2 x app HTTP/1.1 and h2c."""

from __future__ import annotations

import h2.errors

from .conftest import Mesh, Pairing
from .matrix import BAD, MatrixPath, RecordingApp


async def test_body_crossing_the_limit_after_forwarding_started_is_413(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app, a_fields={"limits": {"max_request_body": "1KiB"}})
    client = await path.client()
    reply = await path.exchange(
        client, "POST", "/read", body=[b"a" * 600, app.head_seen("/read"), b"b" * 600, b"c" * 600]
    )
    assert reply.status == 413 and reply.reason == "too_large", reply
    if pairing.downstream == "http1":
        assert await client.closed()
    (seen,) = app.of("/read")
    assert not seen.ended  # the app never got a whole request
    await path.settled()
    await path.serves()


async def test_malformed_chunk_after_forwarding_started_is_400(mesh: Mesh, pairing: Pairing) -> None:
    app = RecordingApp()
    path = await MatrixPath(mesh, pairing).build(app)
    client = await path.client()
    length = None if pairing.downstream == "http1" else 1200
    reply = await path.exchange(client, "POST", "/read", body=[b"a" * 600, app.head_seen("/read"), BAD], length=length)
    if pairing.downstream == "http1":
        assert reply.status == 400 and reply.reason == "bad_request", reply
        assert await client.closed()
    else:  # HTTP/2: a malformed request is a stream error, with or without a 400 first
        assert reply.status == 400 or reply.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR, reply
    (seen,) = app.of("/read")
    assert not seen.ended
    await path.settled()
    await path.serves()

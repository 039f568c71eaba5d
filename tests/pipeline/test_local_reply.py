"""sidecar.pipeline.local_reply: every ProxyError becomes its local reply (`http/replies.py`)."""

from __future__ import annotations

import pytest

from sidecar.http import errors
from sidecar.http.errors import ProxyError
from sidecar.http.message import BytesBody, ConnectionInfo, EmptyBody, Headers, Request, Response
from sidecar.http.replies import error_response
from sidecar.pipeline.local_reply import local_reply

EXPECTED = [
    (errors.BadRequest, 400, "bad_request"),
    (errors.Unauthorized, 403, "unauthorized"),
    (errors.NoRoute, 404, "no_route"),
    (errors.BodyTooLarge, 413, "too_large"),
    (errors.HeadersTooLarge, 431, "too_large"),
    (errors.UpstreamConnectFailure, 502, "upstream_connect_failure"),
    (errors.UpstreamReset, 502, "upstream_reset"),
    (errors.UpstreamProtocolError, 502, "upstream_protocol_error"),
    (errors.NoHealthyUpstream, 503, "no_healthy_upstream"),
    (errors.Overflow, 503, "overflow"),
    (errors.UpstreamTimeout, 504, "upstream_timeout"),
]


def test_every_error_class_is_covered() -> None:
    classes = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, ProxyError) and obj is not ProxyError
    }
    assert classes == {cls for cls, _, _ in EXPECTED}


async def _body_bytes(response: Response) -> bytes:
    out = b""
    while chunk := await response.body.read():
        out += chunk
    return out


@pytest.mark.parametrize(("cls", "status", "reason"), EXPECTED)
async def test_error_response(cls: type[ProxyError], status: int, reason: str) -> None:
    response = error_response(cls(detail="10.9.8.7:15006 connection refused"))
    assert response.status == status
    assert response.headers.get_all(b"x-sidecar-reason") == [reason.encode()]
    assert response.headers.get(b"content-type") == b"text/plain; charset=utf-8"
    body = await _body_bytes(response)
    assert body == cls.default_message.encode() + b"\n"
    assert response.headers.get_all(b"content-length") == [str(len(body)).encode()]
    assert response.body.length == len(body)
    # The detail (an internal address) never reaches the client.
    assert b"10.9.8.7" not in body
    assert all(b"10.9.8.7" not in value for _, _, value in response.headers.fields)
    assert (b"x-sidecar-overloaded" in response.headers) == (reason == "overflow")


async def test_custom_message_used() -> None:
    response = error_response(errors.BadRequest("both Content-Length and Transfer-Encoding"))
    assert await _body_bytes(response) == b"both Content-Length and Transfer-Encoding\n"
    assert response.headers.get(b"content-length") == b"42"


async def test_base_proxy_error() -> None:
    response = error_response(ProxyError())
    assert response.status == 500
    assert response.headers.get(b"x-sidecar-reason") == b"internal"
    assert await _body_bytes(response) == b"internal error\n"


async def test_overflow_marks_overloaded() -> None:
    response = error_response(errors.Overflow())
    assert response.status == 503
    assert response.headers.get(b"x-sidecar-reason") == b"overflow"
    assert response.headers.get_all(b"x-sidecar-overloaded") == [b"true"]


def _request() -> Request:
    return Request(b"GET", b"/x", b"shop", Headers.of([(b"Host", b"shop")]), EmptyBody(), ConnectionInfo("1.2.3.4", 9))


@pytest.mark.parametrize(("cls", "status", "reason"), EXPECTED)
async def test_layer_turns_raised_error_into_reply(cls: type[ProxyError], status: int, reason: str) -> None:
    async def inner(request: Request) -> Response:
        raise cls(detail="secret 10.0.0.1")

    response = await local_reply(inner)(_request())
    assert response.status == status
    assert response.headers.get(b"x-sidecar-reason") == reason.encode()
    body = await _body_bytes(response)
    assert body == cls.default_message.encode() + b"\n"
    assert b"secret" not in body


async def test_layer_passes_normal_response_untouched() -> None:
    expected = Response(
        201, Headers.of([(b"X-App", b"1"), (b"Content-Length", b"2")]), BytesBody(b"ok"), reason=b"Made"
    )
    seen: list[Request] = []

    async def inner(request: Request) -> Response:
        seen.append(request)
        return expected

    request = _request()
    response = await local_reply(inner)(request)
    assert response is expected
    assert seen == [request]
    assert response.headers.fields == [(b"x-app", b"X-App", b"1"), (b"content-length", b"Content-Length", b"2")]
    assert await _body_bytes(response) == b"ok"


async def test_layer_does_not_swallow_other_exceptions() -> None:
    async def inner(request: Request) -> Response:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await local_reply(inner)(_request())


GRPC_CODES = {
    "bad_request": b"13",
    "unauthorized": b"7",
    "no_route": b"12",
    "too_large": b"8",
    "upstream_connect_failure": b"14",
    "upstream_reset": b"14",
    "upstream_protocol_error": b"13",
    "no_healthy_upstream": b"14",
    "overflow": b"14",
    "upstream_timeout": b"4",
}


@pytest.mark.parametrize(("cls", "status", "reason"), EXPECTED)
async def test_toward_a_grpc_client_the_reply_is_a_grpc_error(cls: type[ProxyError], status: int, reason: str) -> None:
    async def inner(request: Request) -> Response:
        raise cls(detail="secret 10.0.0.1")

    request = _request()
    request.headers.add(b"Content-Type", b"application/grpc+proto")
    response = await local_reply(inner)(request)
    assert response.status == 200  # gRPC clients read the outcome from grpc-status
    assert response.headers.get(b"content-type") == b"application/grpc"
    assert response.headers.get(b"grpc-status") == GRPC_CODES[reason]
    assert response.headers.get(b"grpc-message") == cls.default_message.encode()  # printable ASCII as is
    assert response.headers.get(b"x-sidecar-reason") == reason.encode()
    assert await _body_bytes(response) == b""
    assert all(b"secret" not in value for _, _, value in response.headers.fields)

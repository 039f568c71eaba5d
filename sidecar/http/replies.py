"""The replies the sidecar makes itself (docs: reference/replies.md), sans-IO: a `ProxyError` in, a
`Response` out.

Every such reply carries `x-sidecar-reason: CODE` and a short text body, and never an internal
address or a stack trace (`ProxyError.detail`, which may, goes to the log only). Toward a gRPC
client the same reply is a gRPC error instead: HTTP 200, `grpc-status` mapped from the reason and
`grpc-message`, no body (see `grpc.py`). A 503 `overflow` also says `x-sidecar-overloaded: true`.

Used by the `local_reply` layer (`pipeline/local_reply.py`) and by the protocol servers, which
answer errors found before any handler (malformed requests, limits) and errors escaping one.
"""

from __future__ import annotations

from .errors import ProxyError
from .grpc import grpc_message, grpc_status_for, is_grpc
from .message import BytesBody, Headers, Request, Response


def error_response(error: ProxyError, request: Request | None = None) -> Response:
    """The local reply for `error`; shaped as a gRPC error when `request` is a gRPC call."""
    if request is not None and is_grpc(request.headers.get(b"content-type")):
        return grpc_error_response(error)
    text = error.message.encode() + b"\n"
    headers = Headers(
        [
            (b"content-type", b"content-type", b"text/plain; charset=utf-8"),
            (b"x-sidecar-reason", b"x-sidecar-reason", error.reason.encode()),
            (b"content-length", b"content-length", str(len(text)).encode()),
        ]
    )
    if error.reason == "overflow":
        headers.add(b"x-sidecar-overloaded", b"true")
    return Response(error.status, headers, BytesBody(text))


def grpc_error_response(error: ProxyError) -> Response:
    headers = Headers(
        [
            (b"content-type", b"content-type", b"application/grpc"),
            (b"grpc-status", b"grpc-status", str(grpc_status_for(error.reason)).encode()),
            (b"grpc-message", b"grpc-message", grpc_message(error.message)),
            (b"x-sidecar-reason", b"x-sidecar-reason", error.reason.encode()),
            (b"content-length", b"content-length", b"0"),
        ]
    )
    if error.reason == "overflow":
        headers.add(b"x-sidecar-overloaded", b"true")
    return Response(200, headers, BytesBody(b""))

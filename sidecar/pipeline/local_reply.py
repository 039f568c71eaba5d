"""The one place a `ProxyError` becomes a reply the sidecar makes itself (SPEC §5).

Every such reply carries `x-sidecar-reason: CODE` and a short text body, and never an internal
address or a stack trace (`ProxyError.detail`, which may, goes to the log only). Toward a gRPC
client the same reply is a gRPC error instead: HTTP 200, `grpc-status` mapped from the reason and
`grpc-message`, no body (see `http/grpc.py`).
"""

from __future__ import annotations

import structlog

from ..http.errors import DownstreamGone, ProxyError
from ..http.grpc import grpc_message, grpc_status_for, is_grpc
from ..http.message import BytesBody, Headers, Request, Response
from .handler import Handler

log = structlog.get_logger("sidecar.local_reply")


def error_response(error: ProxyError, request: Request | None = None) -> Response:
    """The SPEC §5 reply for `error`; shaped as a gRPC error when `request` is a gRPC call."""
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


async def call_guarded(handler: Handler, request: Request) -> Response:
    """What a protocol server calls: the handler, with anything that escapes it answered here too
    (a ProxyError as its SPEC reply, a bug as a plain 500); a vanished client is passed on."""
    try:
        return await handler(request)
    except ProxyError as error:
        return error_response(error, request)
    except DownstreamGone:
        raise
    except Exception:
        log.exception("handler_failed")
        internal = ProxyError()
        if request.observer is not None:
            request.observer.reason = internal.reason
        return error_response(internal, request)


def local_reply(inner: Handler) -> Handler:
    """Layer: answer any ProxyError raised below with its SPEC reply."""

    async def handle(request: Request) -> Response:
        try:
            return await inner(request)
        except ProxyError as error:
            if error.status >= 500:
                log.warning(
                    "local_reply",
                    reason=error.reason,
                    status=error.status,
                    detail=error.detail,
                    authority=request.authority.decode("latin-1") if request.authority else None,
                )
            if request.observer is not None:
                request.observer.reason = error.reason
            return error_response(error, request)

    return handle

"""The one place a `ProxyError` becomes a reply the sidecar makes itself (SPEC §5).

Every such reply carries `x-sidecar-reason: CODE` and a short text body, and never an internal
address or a stack trace (`ProxyError.detail`, which may, goes to the log only).
"""

from __future__ import annotations

import structlog

from ..http.errors import DownstreamGone, ProxyError
from ..http.message import BytesBody, Headers, Request, Response
from .handler import Handler

log = structlog.get_logger("sidecar.local_reply")


def error_response(error: ProxyError) -> Response:
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


async def call_guarded(handler: Handler, request: Request) -> Response:
    """What a protocol server calls: the handler, with anything that escapes it answered here too
    (a ProxyError as its SPEC reply, a bug as a plain 500); a vanished client is passed on."""
    try:
        return await handler(request)
    except ProxyError as error:
        return error_response(error)
    except DownstreamGone:
        raise
    except Exception:
        log.exception("handler_failed")
        return error_response(ProxyError())


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
            return error_response(error)

    return handle

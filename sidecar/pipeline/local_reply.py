"""The layer where a `ProxyError` raised below becomes a reply the sidecar makes itself (docs:
reference/replies.md).

The reply is `http/replies.py`'s `error_response`: `x-sidecar-reason: CODE` and a short text body,
never an internal address or a stack trace (`ProxyError.detail`, which may hold one, is only logged,
for a 5xx), and toward a gRPC client a gRPC error instead (HTTP 200, `grpc-status`, `grpc-message`).
The reason is left on the request's telemetry record. What escapes a whole stack anyway (a bug) is
answered by the protocol server (`transport/handler.py`'s `call_guarded`).
"""

from __future__ import annotations

from ..http.errors import ProxyError
from ..http.message import Request, Response
from ..http.replies import error_response
from ..logger import get_logger
from .handler import Handler

log = get_logger("sidecar.local_reply")


def local_reply(inner: Handler) -> Handler:
    """Layer: answer any ProxyError raised below with its local reply."""

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

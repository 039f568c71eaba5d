"""The admin listener: `/ready`, `/live`, `POST /drain` (SPEC §6).

It answers throughout a drain, so an orchestrator can watch `/ready` turn 503.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..http.message import BytesBody, Headers, Request, Response
from ..pipeline.handler import Handler

if TYPE_CHECKING:
    from ..server import Runtime


def _text(status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = text.encode() + b"\n"
    headers = Headers.of(
        [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    )
    for name, value in extra or ():
        headers.add(name, value)
    return Response(status, headers, BytesBody(body))


def admin_handler(runtime: Runtime) -> Handler:
    async def handle(request: Request) -> Response:
        path = request.path
        method = request.method
        if path == b"/drain":
            if method != b"POST":
                return _text(405, "use POST", [(b"allow", b"POST")])
            runtime.start_drain("admin")
            return _text(202, "draining")
        if method not in (b"GET", b"HEAD"):
            return _text(405, "method not allowed", [(b"allow", b"GET, HEAD")])
        if path == b"/live":
            return _text(200, "live")
        if path == b"/ready":
            if runtime.ready and not runtime.draining:
                return _text(200, "ready")
            return _text(503, "draining" if runtime.draining else "not ready")
        return _text(404, "not found")

    return handle

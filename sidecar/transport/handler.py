"""What a protocol server hands its requests to, and what it does with what escapes.

A `Handler` is `async def handle(request) -> Response`: the servers (`h1_server.py`,
`h2_server.py`) are given one and know nothing of what it is made of (the listeners build theirs
from the layers of `pipeline/`, which shares this type). `call_guarded` is how a server calls it:
whatever escapes the handler is still answered rather than left to end the connection, except that
the client went away (`DownstreamGone`), which the server handles itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..http.errors import DownstreamGone, ProxyError
from ..http.message import Request, Response
from ..http.replies import error_response
from ..logger import get_logger

log = get_logger("sidecar.handler")

Handler = Callable[[Request], Awaitable[Response]]


async def call_guarded(handler: Handler, request: Request) -> Response:
    """The handler, with anything that escapes it answered here too (a ProxyError as its local
    reply, a bug as a plain 500); a vanished client is passed on."""
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

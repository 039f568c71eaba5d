"""Inbound layers about who is calling: the SPIFFE allow list, and the `x-forwarded-client-cert`
header that tells the app.

- `authorize`: with an allow list, a caller whose verified identity is not on it (or who has no
  identity: a plaintext caller in permissive mode) gets 403 `unauthorized`. Without one, any caller
  the TLS layer accepted is served (strict mode already demanded a mesh certificate).
- `forward_client_cert`: any XFCC header from the caller is removed (it could be forged); when the
  caller has a verified identity, `By=<our SPIFFE ID>;URI=<caller's SPIFFE ID>` is added (Envoy's format).
"""

from __future__ import annotations

from collections.abc import Callable

from ..http.errors import Unauthorized
from ..http.message import Request, Response
from ..tls import AllowList
from .handler import Handler, Layer

XFCC = b"x-forwarded-client-cert"
_XFCC_ONLY = frozenset({XFCC})


def authorize(current_allow: Callable[[], AllowList | None]) -> Layer:
    """`current_allow` gives the allow list of the config in force (it may change on reload)."""

    def layer(inner: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            allow = current_allow()
            if allow is None:
                return await inner(request)
            identity = request.conn.peer_identity
            if not allow.allows(identity):
                raise Unauthorized(detail=f"caller {identity or 'without identity'} not in allow list")
            return await inner(request)

        return handle

    return layer


def forward_client_cert(own_identity: Callable[[], str | None]) -> Layer:
    """`own_identity` gives this workload's SPIFFE ID (from its certificate, which may rotate)."""

    def layer(inner: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            headers = request.headers
            if XFCC in headers:
                headers.remove(_XFCC_ONLY)
            caller = request.conn.peer_identity
            if caller is not None:
                own = own_identity()
                by = f"By={own};URI={caller}" if own else f"URI={caller}"
                headers.add(b"x-forwarded-client-cert", by.encode())
            return await inner(request)

        return handle

    return layer

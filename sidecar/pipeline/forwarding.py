"""Layer: the header rules of one proxy hop (SPEC §4), both directions.

Request: hop-by-hop fields dropped, `x-forwarded-for` appended with the peer, `x-forwarded-proto`
set for this hop, `x-request-id` kept or generated. Response: hop-by-hop fields dropped.
"""

from __future__ import annotations

from ..http.headers import prepare_forwarded_request, strip_hop_by_hop
from ..http.message import Request, Response
from .handler import Handler


def forwarding(inner: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        prepare_forwarded_request(request.headers, request.conn.peer_host, request.scheme)
        response = await inner(request)
        strip_hop_by_hop(response.headers)
        return response

    return handle

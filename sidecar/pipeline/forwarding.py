"""Layer: the header rules of one proxy hop (docs: behaviour/protocols.md), both directions.

Request: hop-by-hop fields dropped, `x-forwarded-for` appended with the peer, `x-forwarded-proto`
set for this hop, `x-request-id` kept or generated. Response: hop-by-hop fields dropped.
A WebSocket upgrade (`request.websocket`) keeps `Upgrade: websocket` and `Connection: upgrade` on
the request, and on a `101` answer; every other upgrade is dropped with the hop-by-hop fields.
"""

from __future__ import annotations

from ..http.headers import prepare_forwarded_request, strip_hop_by_hop
from ..http.message import Request, Response
from ..http.websocket import websocket_upgrade_fields
from .handler import Handler


def forwarding(inner: Handler) -> Handler:
    async def handle(request: Request) -> Response:
        if request.websocket:
            return await _forward_websocket_upgrade(inner, request)
        prepare_forwarded_request(request.headers, request.conn.peer_host, request.scheme)
        response = await inner(request)
        strip_hop_by_hop(response.headers)
        return response

    return handle


async def _forward_websocket_upgrade(inner: Handler, request: Request) -> Response:
    headers = request.headers
    upgrade = websocket_upgrade_fields(headers)
    prepare_forwarded_request(headers, request.conn.peer_host, request.scheme)
    headers.fields += upgrade
    response = await inner(request)
    if response.status == 101:
        upgrade = websocket_upgrade_fields(response.headers)
        strip_hop_by_hop(response.headers)
        response.headers.fields += upgrade
    else:
        strip_hop_by_hop(response.headers)
    return response

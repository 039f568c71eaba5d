"""Layer: open the request's telemetry record (`telemetry/record.py`) on the way in.

It sits at the top of both listeners' stacks, so it sees every request the stack sees, replies the
sidecar makes itself included. On the inbound side it also starts the SERVER span and names it in
the `traceparent` the app receives. The protocol server closes the record once the response is
written; a request whose handler ends without a response (the client left) is closed here.

A request refused before it could become a `Request` (a malformed head, a header block over the
limit) never reaches a stack: the protocol server reports it through `Listener.rejected`, and
`telemetry.record.record_rejected` counts and logs it.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..http.errors import DownstreamGone
from ..http.message import Request, Response
from ..telemetry.record import INBOUND, RequestRecord, Telemetry
from .handler import Handler, Layer


def observe(direction: str, telemetry: Callable[[], Telemetry]) -> Layer:
    def layer(inner: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            record = RequestRecord(telemetry(), direction, request)
            request.observer = record
            if direction == INBOUND:
                record.start_server_span()
            try:
                return await inner(request)
            except (DownstreamGone, trio.Cancelled):
                record.client_gone()
                raise

        return handle

    return layer

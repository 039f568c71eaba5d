"""What one opaque TCP connection through a listener leaves behind: `sidecar_tcp_connections_total`
when it is taken, `sidecar_tcp_bytes_total` as its bytes pass, and one access-log line when it
closes (the HTTP fields method, path and status are null; `protocol` is "tcp"). No spans: there is
no request to hang them on.

`authority` holds the destination the caller dialed (the original destination, or a tcp Service's
own `listen` address; inbound, the app address the bytes were handed to) so that a line says where
the bytes were going; `reason` is set when the connection failed (no endpoint, a refused connect, a reset, a
destination the outbound policy refuses, a caller not allowed).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..transport.relay import Carried
from .record import rfc3339

if TYPE_CHECKING:
    from ..http.message import ConnectionInfo
    from .record import Telemetry

TCP = "tcp"


class TcpRecord:
    __slots__ = (
        "carried",
        "conn",
        "destination",
        "direction",
        "done",
        "reason",
        "service",
        "started",
        "started_ns",
        "telemetry",
        "upstream",
    )

    def __init__(
        self, telemetry: Telemetry, direction: str, conn: ConnectionInfo, service: str, destination: str | None
    ) -> None:
        self.telemetry = telemetry
        self.direction = direction
        self.conn = conn
        self.service = service
        self.destination = destination
        self.started = time.perf_counter()
        self.started_ns = time.time_ns()
        self.upstream: str | None = None
        self.reason: str | None = None
        self.done = False
        metrics = telemetry.metrics
        metrics.tcp_connections[direction, service] += 1
        keys = ((direction, service, "received"), (direction, service, "sent"))
        self.carried = Carried(totals=metrics.tcp_bytes, keys=keys)

    def finish(self) -> None:
        """The connection closed: its access-log line, once."""
        if self.done:
            return
        self.done = True
        access_log = self.telemetry.access_log
        if access_log is None:
            return
        carried = self.carried
        access_log.write(
            {
                "time": rfc3339(self.started_ns),
                "direction": self.direction,
                "method": None,
                "authority": self.destination,
                "path": None,
                "protocol": TCP,
                "status": None,
                "reason": self.reason,
                "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
                "bytes_in": carried.received,
                "bytes_out": carried.sent,
                "service": self.service,
                "upstream": self.upstream,
                "attempts": 1 if self.upstream is not None else 0,
                "peer_identity": self.conn.peer_identity,
                "trace_id": None,
                "request_id": None,
            }
        )

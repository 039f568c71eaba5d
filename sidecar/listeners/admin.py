"""The admin listener (docs: reference/observability.md): `/ready`, `/live`, `POST /drain`,
`/metrics`, `/config`, `/clusters`.

It answers throughout a drain, so an orchestrator can watch `/ready` turn 503. Every page is built
when asked, from the current snapshot and live state; HEAD answers as GET without the body. What
the pages read of the running sidecar (and the drain `POST /drain` starts) is `RunningSidecar`,
defined here; the server's `Runtime` is one.

- `/metrics`: Prometheus text format, from `telemetry/prometheus.py` (the sidecar's own
  `Exposition`, handed to `admin_handler`).
- `/config`: the current snapshot's version (sha256 of its files), files, effective config, and the
  last failed reload (`config_error`) or null.
- `/clusters`: `services` lists every upstream service this sidecar calls (config order); the local
  app behind the inbound listener, when there is one, is shown apart under `app` (named after this
  Sidecar's own service), so `services` holds nothing but upstream services. Besides its endpoints
  each entry carries `direction`, `retries`, `ejections` and `open_connections`, and each endpoint
  `times_ejected`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

from ..http.message import BytesBody, Headers, Request, Response
from ..pipeline.handler import Handler
from ..telemetry.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..telemetry.prometheus import render

if TYPE_CHECKING:
    from ..config.snapshot import Snapshot
    from ..telemetry.prometheus import Exposition
    from ..upstream.registry import ClusterStatistics, UpstreamRegistry


class RunningSidecar(Protocol):
    """What the admin pages read of the running sidecar, and the drain they may start."""

    @property
    def ready(self) -> bool:
        """Every listener is bound and serving."""
        ...

    @property
    def draining(self) -> bool:
        """A drain has started (`/ready` answers 503 from then on)."""
        ...

    @property
    def snapshot(self) -> Snapshot:
        """The config in force."""
        ...

    @property
    def config_error(self) -> tuple[str, str] | None:
        """The last failed reload, as (RFC 3339 UTC time, message); None after a good one."""
        ...

    @property
    def registry(self) -> UpstreamRegistry:
        """The upstream services and the local app, with their live state."""
        ...

    def start_drain(self, cause: str) -> None:
        """Begin the drain (`POST /drain`: `cause` is "admin")."""
        ...


def _reply(status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
    headers = Headers.of([(b"content-type", content_type), (b"content-length", str(len(body)).encode())])
    for name, value in extra or ():
        headers.add(name, value)
    return Response(status, headers, BytesBody(body))


def _text(status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
    return _reply(status, text.encode() + b"\n", b"text/plain; charset=utf-8", extra)


def _json(document: dict[str, Any]) -> Response:
    return _reply(200, json.dumps(document, indent=2).encode() + b"\n", b"application/json")


def config_document(sidecar: RunningSidecar) -> dict[str, Any]:
    snapshot = sidecar.snapshot
    error = sidecar.config_error
    return {
        "version": snapshot.version,
        "files": list(snapshot.files),
        "config": snapshot.to_json(),
        "last_error": None if error is None else {"time": error[0], "message": error[1]},
    }


def _service(stats: ClusterStatistics, name: str, direction: str) -> dict[str, Any]:
    return {
        "name": name,
        "direction": direction,
        "breaker_open": stats.breaker_open,
        "retries": stats.retries,
        "ejections": stats.ejections,
        "open_connections": stats.open_connections,
        "endpoints": [
            {
                "address": e.address,
                "healthy": e.healthy,
                "ejected": e.ejected,
                "active_requests": e.active_requests,
                "times_ejected": e.times_ejected,
            }
            for e in stats.endpoints
        ],
    }


def clusters_document(sidecar: RunningSidecar) -> dict[str, Any]:
    services = [_service(stats, stats.name, "outbound") for stats in sidecar.registry.statistics()]
    app = sidecar.registry.app
    local = None if app is None else _service(app.statistics(), sidecar.snapshot.sidecar.service, "inbound")
    return {"services": services, "app": local}


def admin_handler(sidecar: RunningSidecar, metrics: Exposition) -> Handler:
    """The admin pages of `sidecar`; `/metrics` renders the families of `metrics` (its own exposition)."""

    async def handle(request: Request) -> Response:
        path = request.path
        method = request.method
        if path == b"/drain":
            if method != b"POST":
                return _text(405, "use POST", [(b"allow", b"POST")])
            sidecar.start_drain("admin")
            return _text(202, "draining")
        if method not in (b"GET", b"HEAD"):
            return _text(405, "method not allowed", [(b"allow", b"GET, HEAD")])
        if path == b"/live":
            return _text(200, "live")
        if path == b"/ready":
            if sidecar.ready and not sidecar.draining:
                return _text(200, "ready")
            return _text(503, "draining" if sidecar.draining else "not ready")
        if path == b"/metrics":
            return _reply(200, render(metrics.families()), METRICS_CONTENT_TYPE.encode())
        if path == b"/config":
            return _json(config_document(sidecar))
        if path == b"/clusters":
            return _json(clusters_document(sidecar))
        return _text(404, "not found")

    return handle

"""What one request through one listener leaves behind: a count and a duration in the metrics, one
access-log line, and its spans (docs: reference/observability.md).

`pipeline/observe.py` opens a `RequestRecord` when a request enters a listener's stack and leaves it
on `request.observer`; the layers below fill it in (the route names the service, `local_reply` the
reason code of a local reply, the upstream call each try's endpoint and outcome); the protocol
server closes it with `response_sent` once the response is written, or given up (a client that
leaves before its response is logged as 499, as nginx does). A record closes once.

Spans: the inbound listener makes one SERVER span per request, a child of the caller's trace
context, and hands the app a `traceparent` naming that span. The outbound listener makes one CLIENT
span per try, each a child of the app's context (siblings when retried, with
`http.request.resend_count`), and sends the upstream a `traceparent` naming that try's span; a
request answered without any try (no route, a full breaker, no healthy endpoint) still gets one
CLIENT span, carrying the reason. A span ends when its response ends; an error sets the span's
status and `error.type` (the reply's reason code, else the status code for a 5xx).

Access log: one line on stdout per request with a fixed set of fields, written by an `AccessLog`
(`telemetry/logging.py`): JSON, or a line for humans when the process logs in the `console` format
(the renderer is picked once, when the `AccessLog` is made). Off
(`SIDECAR_ACCESS_LOG=off`, or a log level above info), nothing is built.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..http.errors import ProxyError
from ..logger import get_logger
from .logging import AccessLog
from .span import CLIENT, SERVER, Parent, Span, parse_traceparent

if TYPE_CHECKING:
    from ..http.message import ConnectionInfo, Request
    from ..upstream.endpoint import Endpoint
    from ..upstream.registry import Cluster
    from .metrics import RequestMetrics
    from .tracing import Tracing

log = get_logger("sidecar.telemetry")

INBOUND = "inbound"
OUTBOUND = "outbound"
UNROUTED = "unknown"  # the service label of an outbound request no route matched
CLIENT_GONE = 499  # the status logged for a client that left before its response (nginx's)
_NO_PARENT: Any = object()  # the app's trace context, not looked up yet


def access_log_wanted(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Whether access-log lines are written: on, unless `SIDECAR_ACCESS_LOG` says off/0/false or
    `SIDECAR_LOG_LEVEL` is above info."""
    if environ.get("SIDECAR_ACCESS_LOG", "on").strip().lower() in ("off", "0", "false", "no"):
        return False
    return environ.get("SIDECAR_LOG_LEVEL", "info").strip().lower() in ("debug", "info")


def access_logger(fmt: str | None = None) -> AccessLog:
    """The writer of access lines, no `event` or `level` key added: JSON, or `console` lines (`fmt`,
    default the process log format)."""
    return AccessLog(fmt)


class Telemetry:
    """Per process: the metrics finished requests feed, the tracer (None: tracing off) and the
    access log (None: off)."""

    def __init__(self, service: str, metrics: RequestMetrics, tracing: Tracing | None, access_log: Any) -> None:
        self.service = service
        self.metrics = metrics
        self.tracing = tracing
        self.access_log = access_log


class RequestRecord:
    """One request through one listener, from its head to the end of its response."""

    __slots__ = (
        "attempts",
        "direction",
        "done",
        "parent",
        "reason",
        "request",
        "request_body",
        "service",
        "span",
        "started",
        "started_ns",
        "telemetry",
        "upstream",
    )

    def __init__(self, telemetry: Telemetry, direction: str, request: Request) -> None:
        self.telemetry = telemetry
        self.direction = direction
        self.request = request
        self.request_body = request.body  # the body as it came in, whatever replays it later
        self.started = time.perf_counter()
        self.started_ns = time.time_ns()
        self.service = telemetry.service if direction == INBOUND else UNROUTED
        self.reason: str | None = None  # the reason code of a reply this sidecar made
        self.upstream: str | None = None  # the endpoint of the last try
        self.attempts = 0
        self.span: Span | None = None  # the SERVER span, or the CLIENT span of the current try
        self.parent: Parent | None = _NO_PARENT
        self.done = False

    # -- spans --------------------------------------------------------------------------------------

    def start_server_span(self) -> None:
        """Inbound: the SERVER span, child of the caller's context; the app gets it as its parent."""
        tracing = self.telemetry.tracing
        if tracing is None:
            return
        request = self.request
        attributes = _request_attributes(request, self.service)
        identity = request.conn.peer_identity
        if identity is not None:
            attributes["mesh.peer.identity"] = identity
        span = tracing.start(request.method.decode("latin-1"), SERVER, _parent(request), attributes)
        self.span = span
        _inject(request, span)

    def try_started(self, cluster: Cluster, endpoint: Endpoint, attempt: int) -> None:
        """A try to `endpoint` begins (outbound: its own CLIENT span, named in the request's traceparent)."""
        self.upstream = endpoint.address
        self.attempts = attempt
        tracing = self.telemetry.tracing
        if tracing is None:
            return
        if self.direction == INBOUND:
            if self.span is not None:
                self.span.attributes["mesh.upstream.address"] = endpoint.address
            return
        if self.span is not None:  # the previous try's answer was not taken
            self.span.end(time.time_ns())
        request = self.request
        if self.parent is _NO_PARENT:
            self.parent = _parent(request)
        attributes = _request_attributes(request, cluster.name)
        attributes["mesh.upstream.address"] = endpoint.address
        tls = cluster.settings.tls
        if tls is not None and tls.identity:
            attributes["mesh.peer.identity"] = tls.identity
        if attempt > 1:
            attributes["http.request.resend_count"] = attempt - 1
        span = tracing.start(request.method.decode("latin-1"), CLIENT, self.parent, attributes)
        if self.parent is None:  # no context from the app: the next tries join this one's trace, as roots
            self.parent = Parent(span.trace_id, 0, span.flags, "")
        self.span = span
        _inject(request, span)

    def try_failed(self, error: ProxyError) -> None:
        """The try got no response head: its span ends with the reason."""
        span = self.span
        if span is None or self.direction == INBOUND:
            return
        _set_error(span, error.reason, reason=error.reason)
        span.end(time.time_ns())
        self.span = None

    def try_abandoned(self, status: int) -> None:
        """The try's answer (`status`) is replaced by a retry's: its span ends now."""
        span = self.span
        if span is not None and self.direction == OUTBOUND:
            _end_with_status(span, status, None, client=True)
            self.span = None

    # -- the end ------------------------------------------------------------------------------------

    def response_sent(self, status: int, bytes_out: int, reason: str | None = None) -> None:
        """The response is written (or given up): count, log and end the spans. Once only. Telemetry
        never fails a request: an error here (stdout closed under the access log, say) is logged."""
        if self.done:
            return
        self.done = True
        try:
            self._finish(status, bytes_out, reason)
        except Exception:
            log.exception("telemetry_failed")

    def _finish(self, status: int, bytes_out: int, reason: str | None) -> None:
        if reason is not None:
            self.reason = reason
        duration = time.perf_counter() - self.started
        telemetry = self.telemetry
        telemetry.metrics.request_finished(self.direction, self.service, status, duration)
        tracing = telemetry.tracing
        span = self.span
        if tracing is not None:
            if span is None and self.direction == OUTBOUND and self.attempts == 0:
                span = self._unsent_span()
            if span is not None:
                _end_with_status(span, status, self.reason, client=self.direction == OUTBOUND)
        if telemetry.access_log is not None:
            telemetry.access_log.write(self._access_fields(status, bytes_out, duration, span))

    def client_gone(self) -> None:
        """The client left before a response was written."""
        self.response_sent(CLIENT_GONE, 0)

    def _unsent_span(self) -> Span:
        """Outbound, answered without any try: one CLIENT span from the request's start."""
        tracing = self.telemetry.tracing
        assert tracing is not None
        request = self.request
        attributes = _request_attributes(request, self.service)
        parent = _parent(request) if self.parent is _NO_PARENT else self.parent
        return tracing.start(request.method.decode("latin-1"), CLIENT, parent, attributes, self.started_ns)

    def _access_fields(self, status: int, bytes_out: int, duration: float, span: Span | None) -> dict[str, Any]:
        request = self.request
        headers = request.headers
        request_id = headers.get(b"x-request-id")
        return {
            "time": rfc3339(self.started_ns),
            "direction": self.direction,
            "method": request.method.decode("latin-1"),
            "authority": request.authority.decode("latin-1") if request.authority else None,
            "path": request.path.decode("latin-1"),
            "protocol": "HTTP/2" if request.http_version == "2" else f"HTTP/{request.http_version}",
            "status": status,
            "reason": self.reason,
            "duration_ms": round(duration * 1000, 3),
            "bytes_in": getattr(self.request_body, "received", 0),
            "bytes_out": bytes_out,
            "service": self.service,
            "upstream": self.upstream,
            "attempts": self.attempts,
            "peer_identity": request.conn.peer_identity,
            "trace_id": _trace_id(span, headers.get(b"traceparent")),
            "request_id": request_id.decode("latin-1") if request_id is not None else None,
        }


def record_rejected(
    telemetry: Telemetry, direction: str, conn: ConnectionInfo, protocol: str, status: int, reason: str
) -> None:
    """A request answered before it became a `Request` (a malformed head, a header block over the
    limit): counted, and logged with what is known of it (no method, path or trace)."""
    service = telemetry.service if direction == INBOUND else UNROUTED
    telemetry.metrics.request_finished(direction, service, status, 0.0)
    if telemetry.access_log is None:
        return
    telemetry.access_log.write(
        {
            "time": rfc3339(time.time_ns()),
            "direction": direction,
            "method": None,
            "authority": None,
            "path": None,
            "protocol": protocol,
            "status": status,
            "reason": reason,
            "duration_ms": 0.0,
            "bytes_in": 0,
            "bytes_out": 0,
            "service": service,
            "upstream": None,
            "attempts": 0,
            "peer_identity": conn.peer_identity,
            "trace_id": None,
            "request_id": None,
        }
    )


def _request_attributes(request: Request, service: str) -> dict[str, Any]:
    return {
        "http.request.method": request.method.decode("latin-1"),
        "url.path": request.path.decode("latin-1"),
        "server.address": request.host,
        "network.protocol.version": request.http_version,
        "mesh.service": service,
    }


def _parent(request: Request) -> Parent | None:
    headers = request.headers
    traceparent = headers.get(b"traceparent")
    if traceparent is None:
        return None
    return parse_traceparent(traceparent, headers.get(b"tracestate"))


def _inject(request: Request, span: Span) -> None:
    value = span.traceparent()
    headers = request.headers
    if b"traceparent" in headers:
        headers.set(b"traceparent", value)
    else:
        headers.fields.append((b"traceparent", b"traceparent", value))


def _set_error(span: Span, error_type: str, *, reason: str | None) -> None:
    span.set_error(error_type)
    if reason is not None:
        span.attributes["mesh.reason"] = reason


def _end_with_status(span: Span, status: int, reason: str | None, *, client: bool) -> None:
    """Status and error of a span whose response came: a sidecar reason, or a 5xx (4xx too on the
    client side, as the HTTP conventions say) is an error."""
    span.attributes["http.response.status_code"] = status
    if reason is not None:
        _set_error(span, reason, reason=reason)
    elif status >= 500 or (client and status >= 400):
        _set_error(span, str(status), reason=None)
    span.end(time.time_ns())


def _trace_id(span: Span | None, traceparent: bytes | None) -> str | None:
    if span is not None:
        return f"{span.trace_id:032x}"
    parent = parse_traceparent(traceparent)
    return f"{parent.trace_id:032x}" if parent is not None else None


_seconds_cache: tuple[int, str] = (-1, "")


def rfc3339(ns: int) -> str:
    """`2026-11-27T21:05:03.123Z`: UTC, milliseconds; the seconds part is formatted once a second."""
    global _seconds_cache
    seconds, rest = divmod(ns, 1_000_000_000)
    cached_second, text = _seconds_cache
    if seconds != cached_second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _seconds_cache = (seconds, text)
    return f"{text}.{rest // 1_000_000:03d}Z"

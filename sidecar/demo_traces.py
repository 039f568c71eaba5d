"""The demo's trace collector and the trace tree it prints (docs: reference/cli.md).

This module owns two things `sidecar demo` needs to show one request's trace across the mesh:

- `TraceReceiver`: a minimal OTLP/HTTP trace receiver on trio, in the demo's own process. A small
  HTTP/1.1 server on 127.0.0.1 (keep-alive, `Content-Length` or chunked bodies, gzip
  `Content-Encoding`) that accepts `POST /v1/traces` with `application/x-protobuf`, decodes each
  `ExportTraceServiceRequest` with the `opentelemetry-proto` package (a demo extra) and keeps the
  spans: the last `limit` of them (10,000 by default), plus every span of the few traces the demo
  pinned, so a long run never pushes out the trace it prints. A receiver may also be told which
  spans make a trace worth keeping (`keep_traces_with`, e.g. a retried try): the first few such
  traces are pinned as their spans arrive, and listed in `matched`. It answers 200 with an empty
  `ExportTraceServiceResponse`, 404 to any other path, 405/415/400/413 to what it cannot take.
  It is for the demo only: no TLS, no authentication, no OTLP/JSON, no metrics or logs.
- `render_tree`: a pure function from a trace's spans to the indented lines of its tree, root
  first and each span under its parent; a span whose parent is not among them is a root. A retried
  try's CLIENT span is marked `retry=N`.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

TRACES_PATH = "/v1/traces"
SPAN_LIMIT = 10_000  # spans kept, oldest dropped first (pinned traces aside)
PINNED_TRACE_LIMIT = 1_000  # spans kept per pinned trace
MATCHED_TRACE_LIMIT = 8  # traces pinned because one of their spans matched `keep_traces_with`
MAX_HEAD = 64 * 1024  # bytes of request line and headers
MAX_BODY = 16 * 1024 * 1024  # bytes of one export, after decompression too
SPAN_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS_CODES = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass(frozen=True)
class SpanRecord:
    """One received span, as the demo reads it."""

    trace_id: str  # hex
    span_id: str  # hex
    parent_span_id: str  # hex, "" for a span that names no parent
    name: str
    kind: str  # SERVER, CLIENT, ...
    service: str  # the resource's service.name
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    status: str = "UNSET"

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e6


# -- the receiver -----------------------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class TraceReceiver:
    """Keeps the spans exported to it; `serve` runs the HTTP side."""

    def __init__(self, limit: int = SPAN_LIMIT, keep_traces_with: Callable[[SpanRecord], bool] | None = None) -> None:
        self.limit = limit
        self.keep_traces_with = keep_traces_with
        self.matched: list[str] = []  # ids of the traces pinned for `keep_traces_with`, first first
        self._traces: OrderedDict[str, list[SpanRecord]] = OrderedDict()  # oldest trace first
        self._count = 0  # spans in `_traces`
        self._pinned: dict[str, list[SpanRecord]] = {}
        self.exports = 0  # export requests taken
        self.received = 0  # spans taken, dropped ones included
        self._changed = trio.Event()

    # -- what it keeps ----------------------------------------------------------------------------

    @property
    def spans(self) -> list[SpanRecord]:
        """Every span kept, the pinned traces' first."""
        return [s for trace in (*self._pinned.values(), *self._traces.values()) for s in trace]

    def trace(self, trace_id: str) -> list[SpanRecord]:
        return list(self._pinned.get(trace_id) or self._traces.get(trace_id) or ())

    def pin(self, trace_id: str) -> None:
        """Keep every span of `trace_id`, those already here and those to come, past the limit."""
        if trace_id not in self._pinned:
            spans = self._traces.pop(trace_id, [])
            self._count -= len(spans)
            self._pinned[trace_id] = spans

    def keep(self, spans: Iterable[SpanRecord]) -> None:
        wanted = self.keep_traces_with
        for span in spans:
            self.received += 1
            if (
                wanted is not None
                and span.trace_id not in self._pinned
                and len(self.matched) < MATCHED_TRACE_LIMIT
                and wanted(span)
            ):
                self.matched.append(span.trace_id)
                self.pin(span.trace_id)
            pinned = self._pinned.get(span.trace_id)
            if pinned is not None:
                if len(pinned) < PINNED_TRACE_LIMIT:
                    pinned.append(span)
                continue
            trace = self._traces.get(span.trace_id)
            if trace is None:
                trace = self._traces[span.trace_id] = []
            trace.append(span)
            self._count += 1
            while self._count > self.limit:
                oldest = next(iter(self._traces.values()))
                oldest.pop(0)
                self._count -= 1
                if not oldest:
                    self._traces.popitem(last=False)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_trace(self, trace_id: str, complete: Any, timeout: float) -> list[SpanRecord]:
        """The spans of `trace_id` once `complete(spans)` is true, or what came within `timeout` s."""
        with trio.move_on_after(timeout):
            while not complete(self.trace(trace_id)):
                await self._changed.wait()
        return self.trace(trace_id)

    def keep_export(self, body: bytes) -> None:
        """Decode one ExportTraceServiceRequest and keep its spans (BadRequest if it is not one)."""
        from google.protobuf.message import DecodeError
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as error:
            raise BadRequest(400, f"not an ExportTraceServiceRequest: {error}") from None
        self.exports += 1
        self.keep(spans_of(request))

    # -- HTTP ---------------------------------------------------------------------------------------

    async def serve(self, *, port: int = 0, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on 127.0.0.1:`port` (0: a free one) and report the port bound to `task_status`."""
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        reader = _Reader(stream)
        try:
            while True:
                try:
                    head = await reader.head()
                    if head is None:
                        return
                    method, target, version, headers = head
                    status, body = await self._answer(reader, method, target, headers)
                except BadRequest as error:
                    await _respond(stream, error.status, b"text/plain", str(error).encode() + b"\n", close=True)
                    return
                close = version == "HTTP/1.0" or "close" in headers.get("connection", "").lower()
                await _respond(
                    stream, status, b"application/x-protobuf" if status == 200 else b"text/plain", body, close
                )
                if close:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def _answer(self, reader: _Reader, method: str, target: str, headers: dict[str, str]) -> tuple[int, bytes]:
        if headers.get("expect", "").lower() == "100-continue":
            await reader.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.body(headers)  # read whatever the answer, so the connection stays usable
        if target.split("?", 1)[0] != TRACES_PATH:
            return 404, b"not found: this receiver takes POST /v1/traces only\n"
        if method != "POST":
            return 405, b"method not allowed\n"
        if headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/x-protobuf":
            return 415, b"only application/x-protobuf (OTLP/HTTP binary) is taken\n"
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding == "gzip":
            body = _gunzip(body)
        elif encoding not in ("identity", ""):
            return 415, f"content-encoding {encoding} not supported\n".encode()
        self.keep_export(body)
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        return 200, ExportTraceServiceResponse().SerializeToString()


class _Reader:
    """Reads HTTP/1.1 request heads and bodies off a stream, keeping what came past them."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _more(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def head(self) -> tuple[str, str, str, dict[str, str]] | None:
        """The next request's method, target, version and headers (lower-cased names); None when
        the client closed between requests."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise BadRequest(431, "request head too large")
            if not await self._more():
                if self.buffer.strip():
                    raise BadRequest(400, "connection closed in a request head")
                return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        while lines and not lines[0]:  # stray CRLFs between requests are allowed
            lines.pop(0)
        parts = lines[0].split(" ") if lines else []
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(400, "bad request line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest(400, "bad header line")
            key = name.lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        return parts[0], parts[1], parts[2], headers

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._more():
                raise BadRequest(400, "connection closed in a request body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_HEAD:
                raise BadRequest(400, "bad chunk")
            if not await self._more():
                raise BadRequest(400, "connection closed in a request body")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def body(self, headers: Mapping[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                try:
                    size = int((await self._line()).split(b";", 1)[0], 16)
                except ValueError:
                    raise BadRequest(400, "bad chunk size") from None
                if size == 0:
                    while await self._line():  # trailers, up to the empty line
                        pass
                    return bytes(body)
                if len(body) + size > MAX_BODY:
                    raise BadRequest(413, "export too large")
                body += await self._exactly(size)
                if await self._exactly(2) != b"\r\n":
                    raise BadRequest(400, "bad chunk")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest(400, "bad content-length") from None
        if length < 0:
            raise BadRequest(400, "bad content-length")
        if length > MAX_BODY:
            raise BadRequest(413, "export too large")
        return await self._exactly(length)


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large"}
_REASONS |= {415: "Unsupported Media Type", 431: "Request Header Fields Too Large"}


async def _respond(stream: trio.SocketStream, status: int, content_type: bytes, body: bytes, close: bool) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n".encode()
        + b"content-type: "
        + content_type
        + f"\r\ncontent-length: {len(body)}\r\n".encode()
        + (b"connection: close\r\n" if close else b"")
        + b"\r\n"
    )
    await stream.send_all(head + body)


def _gunzip(body: bytes) -> bytes:
    decompressor = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        data = decompressor.decompress(body, MAX_BODY + 1)
    except zlib.error as error:
        raise BadRequest(400, f"bad gzip body: {error}") from None
    if len(data) > MAX_BODY:
        raise BadRequest(413, "export too large")
    return data


# -- decoding -------------------------------------------------------------------------------------


def _value(value: Any) -> Any:
    """An OTLP AnyValue as a Python value."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def spans_of(request: Any) -> list[SpanRecord]:
    """The spans of an ExportTraceServiceRequest, each with its resource's service.name."""
    out = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        service = str(resource.get("service.name", "unknown_service"))
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                        service=service,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status=STATUS_CODES.get(span.status.code, str(span.status.code)),
                    )
                )
    return out


# -- the tree ---------------------------------------------------------------------------------------


def render_tree(spans: Iterable[SpanRecord], names: Mapping[str, str] | None = None) -> list[str]:
    """The indented lines of a trace: roots first (a span whose parent is not among `spans`),
    children under their parent by `parent_span_id`, siblings by start time. Each line: service,
    kind, name, `url.path`, status code, duration, and `mesh.reason`/`error.type` when set; a CLIENT
    span names its upstream (`mesh.upstream.address`, through `names` when it knows the address),
    and a retried try its `http.request.resend_count` as `retry=N`."""
    spans = sorted(spans, key=lambda s: (s.start_ns, s.span_id))
    ids = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = {}
    roots = []
    for span in spans:
        if span.parent_span_id and span.parent_span_id in ids and span.parent_span_id != span.span_id:
            children.setdefault(span.parent_span_id, []).append(span)
        else:
            roots.append(span)
    rows: list[tuple[int, SpanRecord]] = []
    seen: set[str] = set()

    def walk(span: SpanRecord, depth: int) -> None:
        if span.span_id in seen:  # a cycle or a repeated id: show it once
            return
        seen.add(span.span_id)
        rows.append((depth, span))
        for child in children.get(span.span_id, ()):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    if not rows:
        return []
    left = max(2 * depth + len(span.service) for depth, span in rows)
    what = max(len(_what(span)) for _, span in rows)
    took = max(len(f"{span.duration_ms:.1f}") for _, span in rows)
    return [_line(depth, span, (left, what, took), names or {}) for depth, span in rows]


def _what(span: SpanRecord) -> str:
    path = span.attributes.get("url.path")
    return f"{span.kind:<6} {span.name}" + (f" {path}" if path else "")


def _line(depth: int, span: SpanRecord, widths: tuple[int, int, int], names: Mapping[str, str]) -> str:
    left, what, took = widths
    attributes = span.attributes
    status = attributes.get("http.response.status_code")
    where = "  " * depth + span.service
    line = f"{where:<{left}}  {_what(span):<{what}}  {status or '-':>3}  {span.duration_ms:{took}.1f} ms"
    upstream = attributes.get("mesh.upstream.address")
    if span.kind == "CLIENT" and upstream:
        line += f"  -> {names.get(upstream, upstream)}"
    reason, error = attributes.get("mesh.reason"), attributes.get("error.type")
    if reason:
        line += f"  reason={reason}"
    if error and error != reason:
        line += f"  error={error}"
    resent = attributes.get("http.request.resend_count")
    if span.kind == "CLIENT" and resent:
        line += f"  retry={resent}"
    return line

"""A span as this sidecar records it, and W3C trace context (`traceparent`) in and out of headers.

A `Span` is a plain slotted record: ids, parent, name, kind, times, attributes and an error status.
Ending a sampled span hands it to its `Tracing` for export (`tracing.py`); nothing else happens on
the request path. Kinds and status codes use OTLP's numbers (SERVER 2, CLIENT 3; ERROR 2), so
`otlp.py` writes them as they are.

`parse_traceparent` follows W3C Trace Context: version `00` is exactly four dash-separated fields
(2, 32, 16 and 2 lower-case hex digits); a later version may append fields; version `ff`, all-zero
ids and malformed values are ignored, so the request starts a new trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SERVER = 2
CLIENT = 3
STATUS_UNSET = 0
STATUS_ERROR = 2
SAMPLED = 0x01

_HEX = frozenset(b"0123456789abcdef")


class Parent:
    """The caller's span, from its `traceparent` (and `tracestate`, passed on as it came). A
    `span_id` of 0 names a trace only: the span started under it is a root of that trace (the later
    tries of a request that came without trace context)."""

    __slots__ = ("flags", "span_id", "trace_id", "trace_state")

    def __init__(self, trace_id: int, span_id: int, flags: int, trace_state: str) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.trace_state = trace_state

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def parse_traceparent(value: bytes | None, trace_state: bytes | None = None) -> Parent | None:
    """The parent in a `traceparent` value, or None when it is absent or invalid."""
    if value is None or len(value) < 55:
        return None
    value = value.strip()
    version = value[:2]
    if len(value) < 55 or value[2:3] != b"-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    if version == b"ff" or not _is_hex(version) or (version == b"00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55:56] != b"-":  # a later version's extra fields follow a dash
        return None
    trace_hex, span_hex, flags_hex = value[3:35], value[36:52], value[53:55]
    if not (_is_hex(trace_hex) and _is_hex(span_hex) and _is_hex(flags_hex)):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = trace_state.decode("latin-1").strip() if trace_state else ""
    return Parent(trace_id, span_id, int(flags_hex, 16), state)


def _is_hex(text: bytes) -> bool:
    return all(c in _HEX for c in text)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}".encode()


class Span:
    """One span: set attributes and the error while it runs, then `end()` it once."""

    __slots__ = (
        "_on_end",
        "attributes",
        "end_ns",
        "flags",
        "kind",
        "name",
        "parent_id",
        "parent_remote",
        "span_id",
        "start_ns",
        "status",
        "status_message",
        "trace_id",
        "trace_state",
    )

    def __init__(
        self,
        trace_id: int,
        span_id: int,
        parent: Parent | Span | None,
        flags: int,
        name: str,
        kind: int,
        start_ns: int,
        attributes: dict[str, Any],
        on_end: Callable[[Span], None] | None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent.span_id if parent is not None else 0  # 0: a root (a trace-only parent)
        self.parent_remote = isinstance(parent, Parent) and parent.span_id != 0
        self.trace_state: str = parent.trace_state if parent is not None else ""
        self.flags = flags
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = 0
        self.attributes = attributes
        self.status = STATUS_UNSET
        self.status_message = ""
        self._on_end = on_end  # None: not sampled, nothing to export

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def traceparent(self) -> bytes:
        return format_traceparent(self.trace_id, self.span_id, self.flags)

    def set_error(self, error_type: str) -> None:
        self.attributes["error.type"] = error_type
        self.status = STATUS_ERROR

    def end(self, end_ns: int) -> None:
        on_end, self._on_end = self._on_end, None
        if on_end is not None:
            self.end_ns = end_ns
            on_end(self)

"""The process's log settings, and the access log's lines.

`configure_logging` (`sidecar run` calls it once) picks the format of everything the process writes
on stdout: JSON lines by default, `console` for humans; and the lowest level of the process lines,
from `SIDECAR_LOG_LEVEL` (default info). The process lines themselves are `sidecar/logger.py`'s,
which filters levels before any formatting, so a debug call on the hot path costs one method call
when debug is off.

The access log follows the same format (`telemetry/record.py` makes its `AccessLog`): JSON lines
with a fixed set of fields (docs: reference/observability.md), or with `console` one line a human
reads, beside the console process lines. The renderer is picked once, when the `AccessLog` is made,
so a request pays for one format only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..logger import configure, json_line, write_line

_format = "json"  # the format `configure_logging` chose; the access log follows it


def configure_logging(fmt: str = "json", level: str | None = None) -> None:
    """Process lines and access lines in `fmt`; process lines from `level` (default:
    `SIDECAR_LOG_LEVEL`, else info) up."""
    global _format
    _format = fmt
    configure(fmt, level or os.environ.get("SIDECAR_LOG_LEVEL") or "info")


def access_renderer(fmt: str | None = None) -> Callable[[dict[str, Any]], str]:
    """The renderer of access-log entries in `fmt` (default: the format `configure_logging` chose)."""
    return console_access_line if (fmt or _format) == "console" else json_line


class AccessLog:
    """Writes access-log entries on stdout, one line each, in the format chosen when it was made."""

    __slots__ = ("_render",)

    def __init__(self, fmt: str | None = None) -> None:
        self._render = access_renderer(fmt)

    def write(self, entry: dict[str, Any]) -> None:
        """`entry`: the documented fields, in their order."""
        write_line(self._render(entry))


_ACCESS_DETAILS = (
    "reason",
    "service",
    "upstream",
    "attempts",
    "peer_identity",
    "bytes_in",
    "bytes_out",
    "trace_id",
    "request_id",
)


def console_access_line(entry: dict[str, Any]) -> str:
    """An access-log entry for humans: when, direction, request line, status and duration, then
    `key=value` for the other fields that are known (what is null is left out), e.g.
    `2026-01-05T10:00:00.123Z [access   ] outbound GET orders/x HTTP/1.1 200 1.234 ms service=orders ...`"""
    target = f"{entry.get('authority') or ''}{entry.get('path') or ''}" or "-"
    line = (
        f"{entry.get('time')} [access   ] {entry.get('direction')} {entry.get('method') or '-'} {target} "
        f"{entry.get('protocol')} {entry.get('status')} {entry.get('duration_ms')} ms"
    )
    details = " ".join(f"{key}={value}" for key in _ACCESS_DETAILS if (value := entry.get(key)) is not None)
    return f"{line} {details}" if details else line

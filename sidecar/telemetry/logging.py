"""Process logging: structlog to stdout, JSON lines by default, `console` for humans.

The level comes from `SIDECAR_LOG_LEVEL` (default info). Filtering happens before any formatting,
so a debug call on the hot path costs one method call when debug is off.

The format chosen here is also the access log's (`telemetry/record.py` builds its logger with
`access_renderer()`): JSON lines with a fixed set of fields (docs: reference/observability.md), or
with `console` one line a human reads, beside the console process lines. The renderer is picked
once, when a logger is made, so a request pays for one format only.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_format = "json"  # the format `configure_logging` chose; the access log follows it


def configure_logging(fmt: str = "json", level: str | None = None) -> None:
    global _format
    _format = fmt
    name = (level or os.environ.get("SIDECAR_LOG_LEVEL") or "info").upper()
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    processors: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]
    if fmt != "console":
        processors.append(structlog.processors.format_exc_info)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def access_renderer(fmt: str | None = None) -> structlog.typing.Processor:
    """The renderer of access-log entries in `fmt` (default: the format `configure_logging` chose)."""
    return console_access_line if (fmt or _format) == "console" else structlog.processors.JSONRenderer()


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


def console_access_line(_logger: Any, _method: str, entry: structlog.typing.EventDict) -> str:
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

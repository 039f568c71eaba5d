"""Process logging: structlog to stdout, JSON lines by default, `console` for humans.

The level comes from `SIDECAR_LOG_LEVEL` (default info). Filtering happens before any formatting,
so a debug call on the hot path costs one method call when debug is off.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(fmt: str = "json", level: str | None = None) -> None:
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

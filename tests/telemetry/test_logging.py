"""sidecar/telemetry/logging.py: `configure_logging` sets the format of the process lines and of the
access log together, and an `AccessLog` writes one line per entry, JSON (the entry's keys in their
order, byte for byte what structlog's JSONRenderer wrote) or for humans."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.logger import Logger, get_logger
from sidecar.telemetry import logging
from sidecar.telemetry.logging import AccessLog, configure_logging, console_access_line

ENTRY: dict[str, Any] = {
    "time": "2026-01-01T00:00:00.000Z",
    "direction": "outbound",
    "method": "GET",
    "authority": "orders",
    "path": "/x",
    "protocol": "HTTP/1.1",
    "status": 200,
    "reason": None,
    "duration_ms": 1.5,
    "bytes_in": 0,
    "bytes_out": 12,
    "service": "orders",
    "upstream": "1.2.3.4:80",
    "attempts": 1,
    "peer_identity": None,
    "trace_id": None,
    "request_id": "ré",
}
# The line structlog's JSONRenderer wrote for ENTRY before the project had its own logger.
STRUCTLOG_LINE = (
    '{"time": "2026-01-01T00:00:00.000Z", "direction": "outbound", "method": "GET", "authority": "orders", '
    '"path": "/x", "protocol": "HTTP/1.1", "status": 200, "reason": null, "duration_ms": 1.5, "bytes_in": 0, '
    '"bytes_out": 12, "service": "orders", "upstream": "1.2.3.4:80", "attempts": 1, "peer_identity": null, '
    '"trace_id": null, "request_id": "r\\u00e9"}'
)
CONSOLE_LINE = (
    "2026-01-01T00:00:00.000Z [access   ] outbound GET orders/x HTTP/1.1 200 1.5 ms service=orders "
    "upstream=1.2.3.4:80 attempts=1 bytes_in=0 bytes_out=12 request_id=ré"
)


@pytest.fixture(autouse=True)
def restore(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`configure_logging` changes the whole process: its format and the Logger class's methods."""
    monkeypatch.setattr(logging, "_format", logging._format)
    saved = {method: Logger.__dict__[method] for method in ("debug", "info", "warning", "error", "exception")}
    yield
    for method, function in saved.items():
        setattr(Logger, method, function)


def test_a_json_access_line_is_the_entry_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    AccessLog("json").write(dict(ENTRY))
    assert capsys.readouterr().out == STRUCTLOG_LINE + "\n"


def test_a_console_access_line_leaves_out_what_is_null(capsys: pytest.CaptureFixture[str]) -> None:
    AccessLog("console").write(dict(ENTRY))
    assert capsys.readouterr().out == CONSOLE_LINE + "\n"
    refused = {**ENTRY, "method": None, "authority": None, "path": None, "request_id": None, "upstream": None}
    assert console_access_line(refused).startswith("2026-01-01T00:00:00.000Z [access   ] outbound - - HTTP/1.1 ")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_configure_logging_sets_both_logs_format(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    configure_logging(fmt, "info")
    get_logger("x").info("ready", service="frontend")
    AccessLog().write(dict(ENTRY))
    process, access = capsys.readouterr().out.splitlines()
    if fmt == "json":
        assert json.loads(process)["event"] == "ready"
        assert access == STRUCTLOG_LINE
    else:
        assert process.startswith("[info     ] ready ")
        assert access == CONSOLE_LINE


def test_the_level_comes_from_the_environment_unless_given(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_LOG_LEVEL", "error")
    configure_logging("json")
    log = get_logger("x")
    log.warning("hidden")
    log.error("shown")
    configure_logging("json", "warning")
    log.warning("given")
    assert [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()] == ["shown", "given"]

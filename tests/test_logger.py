"""sidecar/logger.py, the process's own logger: the shape of a JSON line (the keys structlog wrote,
in its order), the level filter (a filtered call formats nothing), the console format, exceptions,
loggers made before `configure`, the capture facility; and that the running proxy's modules no
longer import structlog (nor asyncio, which it brought)."""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import sidecar
from sidecar import logger
from sidecar.logger import Logger, capture_logs, configure, get_logger

EARLY = get_logger("tests.early")  # made at import, before any `configure`
METHODS = ("debug", "info", "warning", "error", "exception", "critical")
TIME = "2026-12-03T19:11:45.892453Z"
TIME_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z"


@pytest.fixture(autouse=True)
def restore_methods() -> Iterator[None]:
    """`configure` changes the Logger class for the whole process: put the methods back after."""
    saved = {method: Logger.__dict__[method] for method in METHODS}
    yield
    for method, function in saved.items():
        setattr(Logger, method, function)


@pytest.fixture
def fixed_time(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(logger, "utc_timestamp", lambda: TIME)
    return TIME


class Unprintable:
    """A value that fails the test if anything formats it."""

    def __repr__(self) -> str:
        raise AssertionError("a filtered call formatted its arguments")

    __str__ = __repr__


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.splitlines()


# -- JSON -----------------------------------------------------------------------------------------


def test_a_json_line_has_the_call_keys_then_event_level_time(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    log = get_logger("sidecar.test")
    log.info("ready", service="frontend", outbound="127.0.0.1:1", n=3, flag=True, none=None)
    (line,) = lines(capsys)
    entry = json.loads(line)
    assert list(entry) == ["service", "outbound", "n", "flag", "none", "event", "level", "time"]
    assert line.startswith(
        '{"service": "frontend", "outbound": "127.0.0.1:1", "n": 3, "flag": true, "none": null, '
        '"event": "ready", "level": "info", "time": "'
    )
    assert re.fullmatch(TIME_RE, entry["time"]), entry["time"]


def test_json_escapes_non_ascii_and_writes_other_values_as_their_repr(
    capsys: pytest.CaptureFixture[str], fixed_time: str
) -> None:
    class Thing:
        def __repr__(self) -> str:
            return "<thing>"

    configure("json", "info")
    get_logger("x").warning("odd", text='a"bé\n', thing=Thing(), path=Path("/etc"))
    (line,) = lines(capsys)
    assert line == (
        '{"text": "a\\"b\\u00e9\\n", "thing": "<thing>", "path": "PosixPath(\'/etc\')", '
        f'"event": "odd", "level": "warning", "time": "{fixed_time}"}}'
    )


@pytest.mark.parametrize(
    ("method", "level"),
    [("debug", "debug"), ("info", "info"), ("warning", "warning"), ("error", "error"), ("critical", "critical")],
)
def test_each_method_writes_its_level_name(capsys: pytest.CaptureFixture[str], method: str, level: str) -> None:
    configure("json", "debug")
    getattr(get_logger("x"), method)("e")
    (line,) = lines(capsys)
    assert json.loads(line)["level"] == level


# -- levels ---------------------------------------------------------------------------------------


def test_levels_below_the_minimum_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "warning")
    log = get_logger("x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert [json.loads(line)["event"] for line in lines(capsys)] == ["w", "e", "c"]


def test_a_filtered_call_formats_nothing(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    configure("json", "error")

    def no_clock() -> str:
        raise AssertionError("a filtered call read the clock")

    monkeypatch.setattr(logger, "utc_timestamp", no_clock)
    log = get_logger("x")
    log.debug("d", value=Unprintable())
    log.info("i", value=Unprintable())
    log.warning("w", value=Unprintable())
    assert capsys.readouterr().out == ""
    assert Logger.__dict__["debug"] is Logger.__dict__["warning"]  # one shared no-op


@pytest.mark.parametrize(("name", "written"), [("WARN", ["w"]), ("Warning", ["w"]), ("nonsense", ["i", "w"])])
def test_level_names_are_case_blind_and_an_unknown_one_means_info(
    capsys: pytest.CaptureFixture[str], name: str, written: list[str]
) -> None:
    configure("json", name)
    log = get_logger("x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    assert [json.loads(line)["event"] for line in lines(capsys)] == written


def test_loggers_made_before_configure_follow_it(capsys: pytest.CaptureFixture[str]) -> None:
    made_here = get_logger("tests.before")
    configure("json", "warning")
    EARLY.info("hidden")
    made_here.info("hidden")
    EARLY.warning("early")
    made_here.warning("here")
    assert [json.loads(line)["event"] for line in lines(capsys)] == ["early", "here"]
    configure("console", "error")  # and again
    EARLY.warning("hidden")
    EARLY.error("console")
    (line,) = lines(capsys)
    assert line.startswith("[error    ] console ")


# -- console --------------------------------------------------------------------------------------


def test_the_console_line_pads_level_and_event_and_sorts_the_keys(
    capsys: pytest.CaptureFixture[str], fixed_time: str
) -> None:
    configure("console", "info")
    log = get_logger("x")
    log.info("ready", service="frontend", admin="127.0.0.1:25000", note="two words", n=1, none=None)
    log.warning("stopped")
    assert lines(capsys) == [
        "[info     ] ready                          admin=127.0.0.1:25000 n=1 none=None note='two words' "
        f"service=frontend time={fixed_time}",
        f"[warning  ] stopped                        time={fixed_time}",
    ]


def test_the_console_colours_a_terminal(monkeypatch: pytest.MonkeyPatch, fixed_time: str) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    configure("console", "info")
    get_logger("x").error("failed", n=1)
    assert terminal.getvalue() == (
        "[\x1b[31m\x1b[1merror    \x1b[0m] \x1b[1mfailed                        \x1b[0m "
        f"\x1b[36mn\x1b[0m=\x1b[35m1\x1b[0m \x1b[36mtime\x1b[0m=\x1b[35m{fixed_time}\x1b[0m\n"
    )


def fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by a new interpreter that imports this tree's sidecar."""
    env = dict(os.environ, PYTHONPATH=str(Path(sidecar.__file__).parents[1]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)


def test_before_configure_every_level_is_written_for_humans() -> None:
    result = fresh_python("from sidecar.logger import get_logger\nget_logger('x').debug('early', n=1)\n")
    assert re.fullmatch(rf"\[debug    \] early {{25}} n=1 time={TIME_RE}\n", result.stdout), result.stdout


# -- exceptions -----------------------------------------------------------------------------------


def fail() -> None:
    raise ZeroDivisionError("division by zero")


def test_exception_adds_the_traceback_last_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "info")
    log = get_logger("x")
    try:
        fail()
    except ZeroDivisionError:
        log.exception("handler_failed", listener="outbound")
    (line,) = lines(capsys)
    entry = json.loads(line)
    assert list(entry) == ["listener", "event", "level", "time", "exception"]
    assert entry["level"] == "error"
    text = entry["exception"]
    assert text.startswith("Traceback (most recent call last):\n") and "in fail\n" in text
    assert text.endswith("ZeroDivisionError: division by zero")


def test_exc_info_names_an_exception_and_exception_outside_a_handler_adds_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("json", "info")
    log = get_logger("x")
    try:
        fail()
    except ZeroDivisionError as error:
        caught = error
    log.error("given", exc_info=caught)
    log.exception("no_exception_active")
    log.error("falsy", exc_info=None)
    given, none, falsy = (json.loads(line) for line in lines(capsys))
    assert given["exception"].endswith("ZeroDivisionError: division by zero")
    assert list(none) == list(falsy) == ["event", "level", "time"]


def test_the_console_prints_the_traceback_below_the_line(capsys: pytest.CaptureFixture[str], fixed_time: str) -> None:
    configure("console", "info")
    try:
        fail()
    except ZeroDivisionError:
        get_logger("x").exception("handler_failed")
    out = capsys.readouterr().out
    first, second, *_, last, end = out.split("\n")
    assert first == f"[error    ] handler_failed                 time={fixed_time}"
    assert second == "Traceback (most recent call last):"
    assert (last, end) == ("ZeroDivisionError: division by zero", "")


# -- time -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", [1_764_790_305_892_453_999, 1_764_790_305_000_000_000, 1_764_790_306_000_001_000])
def test_time_is_what_isoformat_writes(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    monkeypatch.setattr(logger.time, "time_ns", lambda: ns)
    seconds, nanos = divmod(ns, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC).replace(microsecond=nanos // 1000)
    assert logger.utc_timestamp() == moment.isoformat().replace("+00:00", "Z")


# -- capture --------------------------------------------------------------------------------------


def test_capture_logs_keeps_calls_at_every_level_then_restores(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json", "error")
    log = get_logger("x")
    with capture_logs() as logs:
        log.debug("d", n=1)
        log.exception("e")
    assert logs == [
        {"n": 1, "event": "d", "level": "debug"},
        {"exc_info": True, "event": "e", "level": "error"},
    ]
    assert capsys.readouterr().out == ""
    log.info("hidden")
    log.error("shown")
    assert [json.loads(line)["event"] for line in lines(capsys)] == ["shown"]


# -- what the running proxy imports ---------------------------------------------------------------


def test_the_proxy_imports_neither_structlog_nor_asyncio() -> None:
    code = (
        "import sys, sidecar.server, sidecar.cli\n"
        "print(sidecar.__file__)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('structlog', 'asyncio')))\n"
    )
    result = fresh_python(code)
    assert result.returncode == 0, result.stderr
    imported_from, modules = result.stdout.splitlines()
    assert imported_from == sidecar.__file__  # this tree, not an installed copy
    assert modules == "[]"

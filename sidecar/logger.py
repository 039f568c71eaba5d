"""Process log lines: the project's own logger, in place of structlog (whose import, asyncio
included, cost about 4 MiB of resident memory in every sidecar).

It owns what a process log line looks like and how it reaches stdout:

- `get_logger(name)` gives a `Logger`; a line is a call such as `log.info("event_name", key=value)`,
  with the methods `debug`, `info`, `warning`, `error`, `exception` (an error with the exception
  being handled) and `critical`. The name is not written: the event names the line.
- `configure(fmt, level)` picks the format and the lowest level written. `json`: one object per
  line, the call's keys in call order, then `event`, `level`, `time` (RFC 3339 UTC, microseconds) and,
  when there is one, `exception` (the traceback). `console`: `[level    ] event  key=value ...`, the
  keys sorted, the traceback on the lines below, colours on a terminal.
- `write_line` puts one whole line on stdout and flushes it (the access log writes through it too);
  `json_line` is the JSON encoding both logs share.
- `capture_logs()` keeps the calls instead of writing them, for tests.

The level filter comes before any formatting: `configure` installs the methods on the `Logger`
class, a no-op for each level below the minimum, so a disabled call costs one method call and builds
nothing. The methods are the class's, not each logger's, so a logger made at import time, before
`configure` runs, follows it. Until then (tests, tools) every level is written, in the console format.

This module imports nothing of sidecar, so every layer may log.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

LEVELS = {"notset": 0, "debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "critical": 50, "fatal": 50}
# Each method of a Logger: the level name it writes, and its rank.
_METHODS = {
    "debug": ("debug", 10),
    "info": ("info", 20),
    "warning": ("warning", 30),
    "error": ("error", 40),
    "exception": ("error", 40),
    "critical": ("critical", 50),
}

Fields = dict[str, Any]
Handle = Callable[[str, str, Fields], None]  # what an enabled call does with (event, level, fields)


class Logger:
    """A named logger. Its methods are installed on the class by `configure` (and `capture_logs`)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Logger {self.name}>"

    if TYPE_CHECKING:

        def debug(self, event: str, **fields: Any) -> None: ...
        def info(self, event: str, **fields: Any) -> None: ...
        def warning(self, event: str, **fields: Any) -> None: ...
        def error(self, event: str, **fields: Any) -> None: ...
        def exception(self, event: str, **fields: Any) -> None: ...
        def critical(self, event: str, **fields: Any) -> None: ...


def get_logger(name: str) -> Logger:
    return Logger(name)


def configure(fmt: str = "json", level: str = "info") -> None:
    """Lines in `fmt` (`json`, or `console`), from `level` up (an unknown name means info)."""
    render = _console_renderer(sys.stdout.isatty()) if fmt == "console" else render_json
    _install(_writer(render), LEVELS.get(level.strip().lower(), LEVELS["info"]))


def _install(handle: Handle, minimum: int) -> None:
    for method, (level, rank) in _METHODS.items():
        setattr(Logger, method, _disabled if rank < minimum else _enabled(level, handle, method == "exception"))


def _disabled(_self: Logger, _event: str, **_fields: Any) -> None:
    """A level below the minimum: nothing is formatted or written."""


def _enabled(level: str, handle: Handle, exception: bool) -> Callable[..., None]:
    if exception:

        def log_exception(_self: Logger, event: str, **fields: Any) -> None:
            fields.setdefault("exc_info", True)
            handle(event, level, fields)

        return log_exception

    def log(_self: Logger, event: str, **fields: Any) -> None:
        handle(event, level, fields)

    return log


def _writer(render: Callable[[str, str, Fields], str]) -> Handle:
    def write(event: str, level: str, fields: Fields) -> None:
        write_line(render(event, level, fields))

    return write


# -- output ---------------------------------------------------------------------------------------

_WRITE_LOCK = threading.Lock()  # the trace exporter's thread logs too: lines stay whole


def write_line(line: str) -> None:
    """`line` on stdout (whatever `sys.stdout` is now), flushed at once."""
    stream = sys.stdout
    with _WRITE_LOCK:
        stream.write(line + "\n")
        stream.flush()


_ENCODER = json.JSONEncoder(default=repr)  # made once: `json.dumps(default=...)` makes one per call


def json_line(entry: Fields) -> str:
    """`entry` as one JSON object, keys in order, ASCII only; what JSON cannot hold is its repr."""
    return _ENCODER.encode(entry)


def render_json(event: str, level: str, fields: Fields) -> str:
    exception = exception_text(fields.pop("exc_info", None))
    fields["event"] = event
    fields["level"] = level
    fields["time"] = utc_timestamp()
    if exception is not None:
        fields["exception"] = exception
    return json_line(fields)


_RESET, _BRIGHT, _RED, _GREEN, _YELLOW, _MAGENTA, _CYAN = (f"\x1b[{n}m" for n in (0, 1, 31, 32, 33, 35, 36))
_LEVEL_COLOURS = {"debug": _GREEN, "info": _GREEN, "warning": _YELLOW, "error": _RED, "critical": _RED}
_QUOTED_IF = frozenset(" \t=\r\n\"'")  # a text value with one of these is written as its repr


def _console_renderer(colours: bool) -> Callable[[str, str, Fields], str]:
    """`[info     ] event_name                     key=value ...`: the level padded to 9, the event
    to 30, then every key sorted (`time` among them), the traceback below the line."""
    reset, bright, key_style, value_style = (_RESET, _BRIGHT, _CYAN, _MAGENTA) if colours else ("", "", "", "")

    def render_console(event: str, level: str, fields: Fields) -> str:
        exception = exception_text(fields.pop("exc_info", None))
        fields["time"] = utc_timestamp()
        level_style = _LEVEL_COLOURS.get(level, "") + bright if colours else ""
        parts = [f"[{level_style}{level:<9}{reset}]", f"{bright}{event:<30}{reset}"]
        parts += [f"{key_style}{key}{reset}={value_style}{console_value(fields[key])}{reset}" for key in sorted(fields)]
        line = " ".join(parts).rstrip(" ")
        return line if exception is None else f"{line}\n{exception}"

    return render_console


def console_value(value: Any) -> str:
    """A value as the console shows it: text as is, unless it holds a space, a quote or `=`; anything
    else as its repr."""
    if isinstance(value, str) and not _QUOTED_IF.intersection(value):
        return value
    return repr(value)


def exception_text(exc_info: Any) -> str | None:
    """The traceback `exc_info` names (an exception, a `sys.exc_info()` tuple, or true for the
    exception being handled), without its last newline; None when there is none."""
    if not exc_info:
        return None
    if isinstance(exc_info, BaseException):
        error: BaseException | None = exc_info
    elif isinstance(exc_info, tuple) and len(exc_info) == 3 and isinstance(exc_info[1], BaseException):
        error = exc_info[1]
    else:
        error = sys.exception()
    if error is None:
        return None
    import traceback

    return "".join(traceback.format_exception(error)).removesuffix("\n")


_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def utc_timestamp() -> str:
    """Now, as `datetime.now(timezone.utc).isoformat()` writes it with `Z` for `+00:00`:
    `2026-12-03T19:11:45.892453Z` (the fraction left out on a whole second, as isoformat does)."""
    global _second
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached, text = _second
    if seconds != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, text)
    micros = nanos // 1000
    return f"{text}.{micros:06d}Z" if micros else f"{text}Z"


# -- tests ----------------------------------------------------------------------------------------


@contextmanager
def capture_logs() -> Iterator[list[Fields]]:
    """Within the block every call, at any level, is kept instead of written: a list of dicts, the
    call's keys then `event` and `level` (`exc_info` too, from `exception`). Restores the methods
    after."""
    entries: list[Fields] = []
    saved = {method: Logger.__dict__[method] for method in _METHODS}

    def keep(event: str, level: str, fields: Fields) -> None:
        fields["event"] = event
        fields["level"] = level
        entries.append(fields)

    _install(keep, 0)
    try:
        yield entries
    finally:
        for method, function in saved.items():
            setattr(Logger, method, function)


_install(_writer(_console_renderer(False)), 0)  # until `configure`: every level, for humans

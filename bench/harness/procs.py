"""Processes the benchmark starts: launching pinned to a core, stopping by PID, and reading /proc.

Everything the harness runs for longer than one command (nginx, sidecars) is started through a
`ProcessSet`, which stops every process it started, by PID, in reverse order of start — also when
the run fails half-way (use it as a context manager). This module also owns the small amount of
/proc parsing the figures need: CPU seconds (utime + stime) and peak RSS (VmHWM) of a process tree.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartFailed(RuntimeError):
    """A process of a setup did not come up; `detail` holds the tail of its output."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def free_ports(count: int) -> list[int]:
    """Return `count` distinct TCP ports on 127.0.0.1 that are free right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pinned(core: int, argv: list[str]) -> list[str]:
    """Prefix a command line with `taskset` so that it runs on one CPU core."""
    return ["taskset", "-c", str(core), *argv]


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, or an empty string when there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


@dataclass
class Proc:
    """One long-running process we started, with where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 5.0
    known_descendants: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tree(self) -> list[int]:
        """PIDs of this process and its live descendants (e.g. nginx's master and its worker)."""
        pids = [self.pid, *descendants(self.pid)] if self.alive() else []
        self.known_descendants.update(pids[1:])
        return pids

    def output_tail(self, lines: int = 15) -> str:
        """Tail of stderr then stdout: where a failing process most likely explained itself."""
        parts = []
        for label, path in (("stderr", self.stderr_path), ("stdout", self.stdout_path)):
            text = tail(path, lines)
            if text:
                parts.append(f"--- {self.name} {label} (last lines) ---\n{text}")
        return "\n".join(parts) or f"--- {self.name}: no output ---"


class ProcessSet:
    """Starts processes and guarantees they are all stopped (by PID) when the block ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 5.0,
    ) -> Proc:
        """Start `argv` with stdout/stderr in log files named after `name`."""
        stdout_path = self.log_dir / f"{name}.stdout.log"
        stderr_path = self.log_dir / f"{name}.stderr.log"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        proc = Proc(name, popen, stdout_path, stderr_path, stop_signal, stop_timeout)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop one process: its stop signal, then SIGKILL; then any descendant it left behind."""
        proc.tree()  # remember the descendants while the parent still knows them
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(proc.stop_signal)
            try:
                proc.popen.wait(proc.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                proc.popen.wait()
        for pid in proc.known_descendants:
            kill_if_alive(pid)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def kill_if_alive(pid: int) -> None:
    """SIGKILL a leftover process by PID; quietly ignore one that is already gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid`, found through the parent PID field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (index 0 is the state, 1 the parent PID)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds consumed so far by the given processes (utime + stime)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # stat fields 14 and 15
    return total / CLOCK_TICKS


def peak_rss_kib(pids: list[int]) -> int | None:
    """Sum of VmHWM (peak resident set size) over the given processes, in KiB."""
    total, seen = 0, False
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
                seen = True
    return total if seen else None


def http_get(port: int, path: str, host: str = "origin", timeout: float = 2.0) -> tuple[int, bytes]:
    """One plain HTTP/1.1 GET to 127.0.0.1:port; returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_http_ok(port: int, path: str, proc: Proc, timeout: float) -> str | None:
    """Poll GET path until it answers 200; returns None when it did, else why it did not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            return f"{proc.name} exited with code {proc.popen.returncode}"
        try:
            status, _ = http_get(port, path, host="127.0.0.1", timeout=1.0)
            if status == 200:
                return None
            last = f"GET {path} answered {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"GET {path}: {exc.__class__.__name__}: {exc}"
        time.sleep(0.1)
    return f"not ready after {timeout:.0f} s ({last})"


def wait_tcp_open(port: int, proc: Proc, timeout: float) -> str | None:
    """Poll until 127.0.0.1:port accepts a TCP connection; None when it did, else why it did not.
    For listeners that speak no HTTP (nginx `stream`, redis, the TCP sink)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            return f"{proc.name} exited with code {proc.popen.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return None
        except OSError as exc:
            last = f"connect to {port}: {exc.__class__.__name__}: {exc}"
        time.sleep(0.1)
    return f"not listening after {timeout:.0f} s ({last})"

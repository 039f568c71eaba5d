"""Measuring one setup: start it, check it answers correctly, run every figure, stop it.

The steps, in order, each against the setup's front door:
  warm-up      wrk -c50 for a moment, so pools and caches are warm
  rps          wrk -c50 keep-alive on the small response; proxy CPU seconds read around it
  latency      wrk -c1 --latency: p50 and p99
  body         wrk -c50 on the 16 KiB file: requests/s and MiB/s
  connections  wrk -c50 with `Connection: close`: one new connection per request
  h2           h2load, where the front has an HTTP/2 listener; "n/a" when it does not answer h2c
  rss          VmHWM of the proxy processes, read last
A setup that does not start, or whose proxy exits mid-way, becomes a failed column with the reason.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass, field
from typing import Any

from harness import loadgen, nginx
from harness.procs import ProcessSet, StartFailed, cpu_seconds, http_get, peak_rss_kib
from harness.setups import Bench, Front, Setup

CONNECTIONS = 50
H2_CLIENTS = 1
H2_STREAMS = 50  # concurrent streams on one connection: 50 requests in flight, as wrk's 50 connections


@dataclass
class Timing:
    """How long each load-generator step runs, in seconds."""

    duration: int
    warmup: int


@dataclass
class SetupResult:
    """One column of the table: figures by key, and what went wrong where."""

    key: str
    title: str
    failure: str | None = None  # why the whole setup has no figures
    detail: str = ""  # output tail of the failing process
    figures: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # figure key -> problem
    raw: dict[str, Any] = field(default_factory=dict)


def measure(bench: Bench, setup: Setup, timing: Timing) -> SetupResult:
    """Build the setup in its own process set (stopped afterwards, whatever happens) and measure it."""
    result = SetupResult(setup.key, setup.title)
    with ProcessSet(bench.run_dir) as procs:
        try:
            front = setup.build(bench, procs)
            smoke_check(front)
        except StartFailed as exc:
            result.failure, result.detail = exc.reason, exc.detail
            return result
        except (OSError, RuntimeError, ValueError) as exc:
            result.failure = f"{exc.__class__.__name__}: {exc}"
            return result
        run_steps(bench, front, timing, result)
    return result


def smoke_check(front: Front) -> None:
    """One request for each path through the front must come back 200 with the right body."""
    expected = {nginx.SMALL_PATH: len(nginx.SMALL_BODY), nginx.BODY_PATH: nginx.BODY_SIZE}
    for path, size in expected.items():
        try:
            status, body = http_get(front.http_port, path, timeout=5.0)
        except (OSError, http.client.HTTPException) as exc:
            raise StartFailed(f"smoke request GET {path} failed: {exc!r}", tails(front)) from exc
        if status != 200 or len(body) != size:
            answer = f"{status} with {len(body)} bytes ({body[:120]!r})"
            raise StartFailed(f"smoke request GET {path} answered {answer}", tails(front))


def tails(front: Front) -> str:
    return "\n".join(proc.output_tail() for proc in front.proxies)


def run_steps(bench: Bench, front: Front, timing: Timing, result: SetupResult) -> None:
    """Every figure in turn; stops early (with the reason) when a proxy process dies."""
    steps = [step_rps, step_latency, step_body, step_connections, step_h2]
    if timing.warmup:
        wrk(bench, front, nginx.SMALL_PATH, CONNECTIONS, timing.warmup)
    pids = proxy_pids(front)
    for step in steps:
        step(bench, front, timing, result)
        dead = [proc for proc in front.proxies if not proc.alive()]
        if dead:
            result.failure = f"{dead[0].name} exited with code {dead[0].popen.returncode} during {step.__name__}"
            result.detail = tails(front)
            return
    rss = peak_rss_kib(pids)
    result.figures["rss_mib"] = rss / 1024 if rss is not None else None


def proxy_pids(front: Front) -> list[int]:
    return [pid for proc in front.proxies for pid in proc.tree()]


def url(front: Front, path: str, port: int | None = None) -> str:
    return f"http://127.0.0.1:{port or front.http_port}{path}"


def wrk(bench: Bench, front: Front, path: str, connections: int, seconds: int, **options: bool) -> loadgen.WrkResult:
    return loadgen.run_wrk(bench.tools["wrk"], bench.loadgen_core, url(front, path), connections, seconds, **options)


def note(result: SetupResult, keys: list[str], problem: str | None) -> None:
    for key in keys:
        if problem:
            result.notes[key] = problem


def step_rps(bench: Bench, front: Front, timing: Timing, result: SetupResult) -> None:
    """Requests/s at 50 keep-alive connections, and the proxy CPU it cost."""
    pids = proxy_pids(front)
    before = cpu_seconds(pids)
    run = wrk(bench, front, nginx.SMALL_PATH, CONNECTIONS, timing.duration)
    cpu = cpu_seconds(pids) - before if pids else None
    result.figures["rps"] = run.rps
    result.figures["cpu_s"] = cpu
    result.figures["req_per_cpu_s"] = run.requests / cpu if cpu else None
    note(result, ["rps", "req_per_cpu_s"], run.problem)
    result.raw["rps"] = run.__dict__


def step_latency(bench: Bench, front: Front, timing: Timing, result: SetupResult) -> None:
    """p50 and p99 at one connection (the added latency is derived against direct in the report)."""
    run = wrk(bench, front, nginx.SMALL_PATH, 1, timing.duration, latency=True)
    result.figures["p50_ms"] = run.p50_ms
    result.figures["p99_ms"] = run.p99_ms
    note(result, ["p50_ms", "p99_ms"], run.problem)
    result.raw["latency"] = run.__dict__


def step_body(bench: Bench, front: Front, timing: Timing, result: SetupResult) -> None:
    """Fetching the 16 KiB file at 50 connections."""
    run = wrk(bench, front, nginx.BODY_PATH, CONNECTIONS, timing.duration)
    result.figures["body_rps"] = run.rps
    result.figures["body_mib_s"] = run.bytes_per_s / 1024**2
    note(result, ["body_rps", "body_mib_s"], run.problem)
    result.raw["body"] = run.__dict__


def step_connections(bench: Bench, front: Front, timing: Timing, result: SetupResult) -> None:
    """New connections/s: every request on its own connection (`Connection: close`)."""
    run = wrk(bench, front, nginx.SMALL_PATH, CONNECTIONS, timing.duration, close=True)
    result.figures["conn_rps"] = run.rps
    note(result, ["conn_rps"], run.problem)
    result.raw["connections"] = run.__dict__


def step_h2(bench: Bench, front: Front, timing: Timing, result: SetupResult) -> None:
    """HTTP/2 requests/s; a front that does not answer h2c gets "n/a" and a note, not a crash."""
    if front.h2_port is None:
        result.figures["h2_rps"] = None
        result.notes["h2_rps"] = "no HTTP/2 listener"
        return
    run = loadgen.run_h2load(
        bench.tools["h2load"],
        bench.loadgen_core,
        url(front, nginx.SMALL_PATH, front.h2_port),
        H2_CLIENTS,
        H2_STREAMS,
        timing.duration,
    )
    result.figures["h2_rps"] = run.rps if run.ok_2xx else None
    note(result, ["h2_rps"], run.problem)
    result.raw["h2"] = run.__dict__

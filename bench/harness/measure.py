"""Measuring one setup: start it, check it answers correctly, run every figure, stop it.

The steps, in order, each against the setup's front door:
  warm-up      wrk -c50 for a moment, so pools and caches are warm
  rps          wrk -c50 keep-alive on the small response; proxy CPU seconds read around it
  latency      wrk -c1 --latency: p50 and p99
  body         wrk -c50 on the 16 KiB file: requests/s and MiB/s
  connections  wrk -c50 with `Connection: close`: one new connection per request
  h2           h2load, where the front has an HTTP/2 listener; "n/a" when it does not answer h2c
  rate 500     only for setups marked `fixed_rate`: h2load --h1 at a fixed 500 requests/s in total
               (10 connections x 50/s, one request in flight each): p50 / p99 / p99.9 from its logs,
               and the proxy CPU it cost as vCPU per 1,000 req/s per proxy
  rate 2000    the same at 2,000 requests/s (20 x 100/s)
  rss          VmHWM of the proxy processes, read after the load steps
  idle         only for setups marked `idle`: KiB of resident memory per idle keep-alive connection,
               over 8,000 of them (harness/idle.py)
A setup that does not start, or whose proxy exits mid-way, becomes a failed column with the reason.
"""

from __future__ import annotations

import http.client
import math
import time
from dataclasses import dataclass, field
from typing import Any

from harness import idle, loadgen, nginx
from harness.procs import ProcessSet, StartFailed, cpu_seconds, http_get, peak_rss_kib
from harness.setups import Bench, Front, Setup

CONNECTIONS = 50
H2_CLIENTS = 1
H2_STREAMS = 50  # concurrent streams on one connection: 50 requests in flight, as wrk's 50 connections
RATE_CLIENTS = 10  # fewest connections of a fixed-rate step, one request in flight on each
RATES = (500, 2000)  # total requests/s of the fixed-rate steps; CPU per request is read at each
SATURATED = 0.9  # share of the proxy core busy in a fixed-rate step beyond which the proxy is at its limit


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
        run_steps(bench, front, timing, result, setup.fixed_rate)
        if setup.idle and result.failure is None:
            step_idle(front, result)
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


def run_steps(bench: Bench, front: Front, timing: Timing, result: SetupResult, fixed_rate: bool = False) -> None:
    """Every figure in turn (the fixed-rate ones only with `fixed_rate`); stops early (with the
    reason) when a proxy process dies."""
    steps = [step_rps, step_latency, step_body, step_connections, step_h2]
    if fixed_rate:
        steps += [step_rate_low, step_rate_high]
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


def rate_clients(rate: int) -> int:
    """Connections for a fixed rate: at least RATE_CLIENTS, and enough that none goes above
    h2load's 100 requests/s per client (its rate timer's limit; beyond it a client sends in bursts)."""
    return max(RATE_CLIENTS, math.ceil(rate / loadgen.MAX_CLIENT_RPS))


def rate_keys(rate: int) -> list[str]:
    """The figure keys of one fixed-rate step: p50, p99 and p99.9 in ms."""
    return [f"rate{rate}_{which}_ms" for which in ("p50", "p99", "p999")]


def step_fixed_rate(bench: Bench, front: Front, timing: Timing, result: SetupResult, rate: int) -> None:
    """Latency at a fixed request rate (open loop: requests go out on h2load's clock, not when the
    last answer came), HTTP/1.1, small file; the proxy CPU it cost, per request and per proxy."""
    clients = rate_clients(rate)
    pids = proxy_pids(front)
    before, started = cpu_seconds(pids), time.monotonic()
    run = loadgen.run_h2load_rate(
        bench.tools["h2load"],
        bench.loadgen_core,
        url(front, nginx.SMALL_PATH),
        clients,
        rate // clients,
        timing.duration,
        bench.run_dir / f"{result.key}-rate-{rate}",
    )
    cpu = cpu_seconds(pids) - before if pids else None
    busy = cpu / (time.monotonic() - started) if cpu is not None else None
    keys = rate_keys(rate)
    for key, value in zip(keys, (run.p50_ms, run.p99_ms, run.p999_ms), strict=True):
        result.figures[key] = value
    note(result, keys, rate_problem(run, busy))
    result.raw[f"rate_{rate}"] = {**run.__dict__, "cpu_s": cpu, "proxy_core_busy": busy, "proxies": len(front.proxies)}
    figure = "vcpu_per_krps" if rate == RATES[-1] else f"vcpu_per_krps_{rate}"
    result.figures[figure] = vcpu_per_krps(cpu, run.requests, len(front.proxies))
    at_limit = (busy is not None and busy >= SATURATED) or run.rps < loadgen.RATE_SHORTFALL * run.target_rps
    saturated = f"the proxy core was at its limit ({run.rps:,.0f} req/s achieved): CPU per request at saturation"
    note(result, [figure], saturated if at_limit else run.problem)


def rate_problem(run: loadgen.RateResult, busy: float | None) -> str | None:
    """What makes a fixed-rate step's latencies suspect: failed requests, a rate not achieved, or
    the proxy core busy all along (then requests waited in h2load, untimed, even if the rate held)."""
    problems = [run.problem] if run.problem else []
    if busy is not None and busy >= SATURATED:
        problems.append(
            f"the proxy core was busy {busy:.0%} of the step: at its limit, requests queued (partly in h2load, "
            "untimed), so these latencies are queueing at saturation, not valid at this rate"
        )
    return "; ".join(problems) or None


def vcpu_per_krps(cpu: float | None, requests: int, proxies: int) -> float | None:
    """(proxy CPU-s / step s) / (requests/s / 1000) / proxies: the step's seconds cancel, so it is
    the CPU seconds one proxy process spends on 1,000 requests."""
    if not cpu or not requests or not proxies:
        return None
    return 1000 * cpu / requests / proxies


def step_rate_low(bench: Bench, front: Front, timing: Timing, result: SetupResult) -> None:
    """The fixed-rate step at the lower rate (500 requests/s), with its CPU figure."""
    step_fixed_rate(bench, front, timing, result, RATES[0])


def step_rate_high(bench: Bench, front: Front, timing: Timing, result: SetupResult) -> None:
    """The fixed-rate step at the higher rate (2,000 requests/s), with the headline CPU figure."""
    step_fixed_rate(bench, front, timing, result, RATES[-1])


def step_idle(front: Front, result: SetupResult) -> None:
    """Resident memory per idle keep-alive connection (after the peak RSS was read)."""
    try:
        result.figures["idle_kib"] = idle.kib_per_idle_connection(front.http_port, proxy_pids(front))
    except OSError as exc:
        result.figures["idle_kib"] = None
        result.notes["idle_kib"] = f"idle connections failed: {exc!r}"

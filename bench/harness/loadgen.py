"""Load generators: wrk (HTTP/1.1) and h2load (HTTP/2, prior-knowledge h2c; and HTTP/1.1 at a fixed
rate, its per-request log read for latency percentiles), run and parsed; for the TCP scenario,
redis-benchmark (PING over persistent or one-request connections) and tcp_stream.py.

Both run pinned to the load-generator core with one thread. Every request carries `Host: origin`
(`:authority` for h2), which the sidecar routes by and nginx ignores. A result says what went wrong
(`problem`) when some requests failed, so a fast stream of error replies is never taken for speed.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.procs import pinned

HOST = "origin"
TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}  # to milliseconds
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}  # wrk prints binary units


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    rps: float
    bytes_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    non_2xx: int
    socket_errors: int
    problem: str | None


@dataclass
class H2Result:
    """What one h2load run measured; `rps` counts requests that finished, whatever their status."""

    rps: float
    succeeded: int
    ok_2xx: int
    failed: int
    problem: str | None


def run_wrk(
    wrk: str, core: int, url: str, connections: int, seconds: int, latency: bool = False, close: bool = False
) -> WrkResult:
    """One wrk run: -t1 -cN -dS, optional --latency and `Connection: close`."""
    return run_wrk_as((wrk,), core, url, connections, seconds, latency, close)


def run_wrk_as(
    command: tuple[str, ...], core: int, url: str, connections: int, seconds: int, latency: bool, close: bool
) -> WrkResult:
    """As run_wrk, `command` being wrk's path after what runs it (`ip netns exec NAME`)."""
    argv = [*command, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-H", f"Host: {HOST}"]
    if latency:
        argv.append("--latency")
    if close:
        argv += ["-H", "Connection: close"]
    result = run_tool(pinned(core, [*argv, url]), seconds)
    return parse_wrk(result.stdout, result.stderr, result.returncode)


def run_h2load(h2load: str, core: int, url: str, clients: int, streams: int, seconds: int) -> H2Result:
    """One h2load run over cleartext HTTP/2 with prior knowledge (h2load's default for http://)."""
    argv = [h2load, "-t1", f"-c{clients}", f"-m{streams}", f"-D{seconds}", "-H", f":authority: {HOST}", url]
    result = run_tool(pinned(core, argv), seconds)
    return parse_h2load(result.stdout, result.stderr, result.returncode)


@dataclass
class RateResult:
    """One fixed-rate h2load run: the rate asked and the rate achieved, and the latency percentiles
    of the responses in its per-request log (measured from when each request was sent)."""

    target_rps: float
    rps: float  # achieved: responses per second over the run (h2load's req/s)
    requests: int  # responses received, whatever their status
    ok_2xx: int
    failed: int  # requests that got no response
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    problem: str | None


RATE_SHORTFALL = 0.95  # below this share of the asked rate, a fixed-rate run's latencies are not valid
MAX_CLIENT_RPS = 100  # h2load's rate timer fires at most every 10 ms: above 100/s a client sends in bursts


def run_h2load_rate(
    h2load: str, core: int, url: str, clients: int, rps_per_client: int, seconds: int, log_prefix: Path
) -> RateResult:
    """HTTP/1.1 (`--h1`) at a fixed rate: `clients` h2load processes of one connection each, each at
    `rps_per_client` with one request in flight (-m1), for `seconds`; each request's status and
    duration go to LOG_PREFIX-N.log.

    One process per connection, started a fraction of the request interval apart: the clients of one
    h2load share its event loop and connect together, so their rate timers would fire together and
    send the requests of all clients in one burst at each tick."""
    interval = 1.0 / rps_per_client
    logs = [log_prefix.with_name(f"{log_prefix.name}-{n}.log") for n in range(clients)]
    argvs = [pinned(core, rate_argv(h2load, url, rps_per_client, seconds, log)) for log in logs]
    runs = run_staggered(argvs, interval + interval / clients, seconds)
    summary = combine([parse_h2load(run.stdout, run.stderr, run.returncode, "HTTP/1.1") for run in runs])
    log_text = "".join(read_or_empty(log) for log in logs)
    return rate_result(summary, log_text, float(clients * rps_per_client))


def rate_argv(h2load: str, url: str, rps: int, seconds: int, log_file: Path) -> list[str]:
    """One h2load client over HTTP/1.1 at `rps`, one request in flight, its per-request log."""
    argv = [h2load, "--h1", "-t1", "-c1", "-m1", f"--rps={rps}", f"-D{seconds}", f"--log-file={log_file}"]
    return [*argv, "-H", f":authority: {HOST}", url]


def run_staggered(argvs: list[list[str]], spacing: float, seconds: int) -> list[subprocess.CompletedProcess[str]]:
    """Start the commands `spacing` seconds apart and wait for all; any still running past the time
    limit (or when this is interrupted) is killed by PID."""
    procs: list[subprocess.Popen[str]] = []
    started = time.monotonic()
    try:
        for number, argv in enumerate(argvs):
            time.sleep(max(0.0, started + number * spacing - time.monotonic()))
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + seconds + 30
        results = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
                results.append(subprocess.CompletedProcess(proc.args, -1, out, f"timed out after {seconds + 30} s"))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def combine(runs: list[H2Result]) -> H2Result:
    """The sum of several h2load runs that ran side by side; the first failure explains them all."""
    rps = sum(run.rps for run in runs)
    succeeded, ok_2xx, failed = (sum(getattr(run, name) for run in runs) for name in ("succeeded", "ok_2xx", "failed"))
    broken = [run.problem for run in runs if run.problem and run.problem.startswith("h2load failed")]
    problem = broken[0] if broken else h2_problem(succeeded, ok_2xx, failed, "HTTP/1.1")
    return H2Result(rps, succeeded, ok_2xx, failed, problem)


def read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def rate_result(summary: H2Result, log: str, target_rps: float) -> RateResult:
    """Percentiles from the log's durations (failed streams, status -1, left out); the problem says
    when requests failed or the run fell short of the asked rate (then its latencies are invalid)."""
    durations_ms = sorted(ms for status, ms in parse_rate_log(log) if status >= 0)
    p50, p99, p999 = (nearest_rank(durations_ms, q) for q in (0.50, 0.99, 0.999))
    problems = [summary.problem] if summary.problem else []
    if summary.rps < RATE_SHORTFALL * target_rps and summary.succeeded:
        problems.append(
            f"achieved {summary.rps:,.0f} of {target_rps:,.0f} req/s asked (< {RATE_SHORTFALL:.0%}): the rate was "
            "not sustained, latencies (timed from when each request was sent) are not valid"
        )
    return RateResult(
        target_rps,
        summary.rps,
        summary.succeeded,
        summary.ok_2xx,
        summary.failed,
        p50,
        p99,
        p999,
        "; ".join(problems) or None,
    )


def parse_rate_log(log: str) -> list[tuple[int, float]]:
    """h2load's --log-file: per request, tab-separated start time (µs since the epoch), status (-1:
    failed), duration (µs); returns (status, duration in ms) per well-formed line."""
    rows = []
    for line in log.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[2].strip().isdigit():
            rows.append((int(fields[1]), int(fields[2]) / 1e3))
    return rows


def nearest_rank(sorted_values: list[float], quantile: float) -> float | None:
    """The nearest-rank percentile of already sorted values; None for none."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(quantile * len(sorted_values)) - 1)]


def run_tool(argv: list[str], seconds: int) -> subprocess.CompletedProcess[str]:
    """Run a load generator with a hard time limit well past its own duration."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(argv, -1, str(exc.stdout or ""), f"timed out after {exc.timeout} s")


def parse_wrk(out: str, err: str, code: int) -> WrkResult:
    """Read wrk's summary: totals, Requests/sec, Transfer/sec, latency percentiles, errors."""
    totals = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if code != 0 or not (totals and rps and transfer):
        why = (err.strip() or out.strip() or f"exit code {code}").splitlines()[-1]
        return WrkResult(0, 0.0, 0.0, 0.0, None, None, 0, 0, f"wrk failed: {why}")
    requests = int(totals.group(1))
    result = WrkResult(
        requests=requests,
        seconds=float(totals.group(2)) * TIME_UNITS[totals.group(3)] / 1e3,
        rps=float(rps.group(1)),
        bytes_per_s=float(transfer.group(1)) * SIZE_UNITS[transfer.group(2)],
        p50_ms=percentile(out, "50"),
        p99_ms=percentile(out, "99"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        problem=None,
    )
    result.problem = wrk_problem(result, sockets.group(0) if sockets else "")
    return result


def wrk_problem(result: WrkResult, socket_line: str) -> str | None:
    """Describe failed requests; a few read errors on Connection: close runs are normal noise."""
    problems = []
    if result.requests == 0:
        problems.append("no request completed")
    if result.non_2xx:
        problems.append(f"{result.non_2xx} of {result.requests} responses not 2xx/3xx")
    if result.socket_errors > max(10, result.requests // 1000):
        problems.append(socket_line)
    return "; ".join(problems) or None


def percentile(out: str, which: str) -> float | None:
    """A latency percentile from wrk's --latency distribution, in milliseconds."""
    found = re.search(rf"^\s+{which}%\s+([\d.]+)(\w+)", out, re.MULTILINE)
    return float(found.group(1)) * TIME_UNITS[found.group(2)] if found else None


def parse_h2load(out: str, err: str, code: int, protocol: str = "HTTP/2") -> H2Result:
    """Read h2load's summary; a run where nothing succeeded with 2xx is a failure (e.g. no h2c)."""
    finished = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    statuses = re.search(r"status codes: (\d+) 2xx", out)
    if code != 0 or not (finished and counts and statuses):
        why = (err.strip() or out.strip() or f"exit code {code}").splitlines()[-1]
        return H2Result(0.0, 0, 0, 0, f"h2load failed: {why}")
    succeeded, failed, ok_2xx = int(counts.group(4)), int(counts.group(5)), int(statuses.group(1))
    problem = h2_problem(succeeded, ok_2xx, failed, protocol)
    return H2Result(float(finished.group(1)), succeeded, ok_2xx, failed, problem)


def h2_problem(succeeded: int, ok_2xx: int, failed: int, protocol: str) -> str | None:
    """Describe failed requests of an h2load run: none answered 2xx, or non-2xx / failed beyond noise."""
    if ok_2xx == 0:
        hint = " (front does not speak h2c?)" if protocol == "HTTP/2" else ""
        return f"no 2xx response over {protocol}{hint}"
    if ok_2xx < succeeded or failed > max(10, succeeded // 1000):
        return f"{succeeded - ok_2xx} non-2xx, {failed} failed of {succeeded + failed} requests"
    return None


@dataclass
class RedisResult:
    """What one redis-benchmark run measured: `requests` answered in `seconds` (wall clock, ours)."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    problem: str | None


def run_redis_benchmark(
    tool: str, core: int, port: int, clients: int, requests: int, keepalive: bool, limit: float
) -> RedisResult:
    """`redis-benchmark -t ping_mbulk`: `requests` PINGs over `clients` connections; with
    `keepalive` false (`-k 0`) each request on a new connection. It hangs on a refused connection
    rather than exiting, hence the time limit."""
    argv = [tool, "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-n", str(requests)]
    argv += ["-k", "1" if keepalive else "0", "-t", "ping_mbulk", "--csv"]
    started = time.monotonic()
    try:
        result = subprocess.run(pinned(core, argv), capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return RedisResult(0, 0.0, 0.0, None, None, f"redis-benchmark did not finish within {limit:.0f} s")
    seconds = time.monotonic() - started
    return parse_redis_benchmark(result.stdout, result.stderr, result.returncode, requests, seconds)


def parse_redis_benchmark(out: str, err: str, code: int, requests: int, seconds: float) -> RedisResult:
    """Read the CSV line: "PING_MBULK","rps","avg","min","p50","p95","p99","max"."""
    found = re.search(r'^"PING_MBULK","([\d.]+)","[\d.]+","[\d.]+","([\d.]+)","[\d.]+","([\d.]+)"', out, re.M)
    if code != 0 or not found:
        lines = [line for line in (err + out).splitlines() if line.strip() and not line.startswith("WARNING")]
        why = lines[-1] if lines else f"exit code {code}"
        return RedisResult(0, seconds, 0.0, None, None, f"redis-benchmark failed: {why}")
    errors = [line for line in err.splitlines() if "rror" in line]
    problem = f"{len(errors)} errors, e.g. {errors[0]}" if errors else None
    rps = float(found.group(1))
    return RedisResult(requests, seconds, rps, float(found.group(2)), float(found.group(3)), problem)


@dataclass
class StreamResult:
    """One tcp_stream.py run: bytes the sink counted, over the whole transfer's seconds."""

    connections: int
    sent: int
    counted: int
    seconds: float
    problem: str | None


def run_stream(core: int, port: int, seconds: int, connections: int) -> StreamResult:
    """Stream to the sink through `port` for `seconds` over `connections` connections."""
    script = Path(__file__).resolve().parent / "tcp_stream.py"
    argv = pinned(core, [sys.executable, str(script), str(port), str(seconds), str(connections)])
    result = run_tool(argv, seconds)
    try:
        report = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        why = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()[-1]
        return StreamResult(connections, 0, 0, 0.0, f"tcp_stream.py failed: {why}")
    errors = report["errors"]
    problem = f"{len(errors)} of {connections} connections failed: {errors[0]}" if errors else None
    return StreamResult(connections, report["sent"], report["counted"], report["seconds"], problem)

"""Benchmark the sidecar against a direct path and nginx-as-proxy, and print the figures side by side.

    python bench/run.py                 # the full run (10 s per step, about 8 minutes)
    python bench/run.py --quick         # smoke run, about a minute
    python bench/run.py --duration 5 --setups sidecar-1
    python bench/run.py --profile       # one-sidecar requests/s step under py-spy (or: --profile cprofile)
    python bench/run.py --profile cprofile --profile-step h2   # the one-sidecar h2load step instead
    python bench/run.py --profile cprofile --profile-setup sidecar-1-policies   # another one-sidecar setup
    python bench/run.py tcp             # opaque TCP: two sidecars vs two nginx `stream` proxies, mTLS hop
    python bench/run.py tcp --quick --setups all
    sudo python bench/run.py transparent   # root only: transparent vs explicit HTTP, in network namespaces

See bench/README.md for what each figure means. This file only wires the pieces in bench/harness/.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import nginx, profiling, report, tcp, tools, transparent
from harness.measure import CONNECTIONS, H2_CLIENTS, H2_STREAMS, RATES, SetupResult, Timing, measure, rate_clients
from harness.procs import ProcessSet, StartFailed, free_ports
from harness.setups import SETUPS, Bench, Setup, select
from harness.sidecars import SidecarLauncher

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
STEPS_PER_SETUP = 5  # rps, latency, 16 KiB body, new connections, HTTP/2
STEP_OVERHEAD = 3  # seconds per setup beyond its steps: certificates, start, smoke check, stop


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    keys = ", ".join(setup.key + ("" if setup.default else " (opt-in)") for setup in SETUPS)
    tcp_keys = ", ".join(setup.key + ("" if setup.default else " (opt-in)") for setup in tcp.SETUPS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "scenario",
        nargs="?",
        choices=["http", "tcp", "transparent"],
        default="http",
        help="http (default): HTTP through sidecars vs nginx; tcp: opaque TCP through two sidecars vs two "
        f"nginx stream proxies (setups: {tcp_keys}); transparent (root only, skipped otherwise): HTTP through "
        "two sidecars in network namespaces, transparent capture vs explicit mode",
    )
    parser.add_argument("--duration", type=int, default=None, help="seconds per load step (default 10)")
    parser.add_argument("--quick", action="store_true", help="short smoke run: 2 s per step, 1 s warm-up")
    parser.add_argument("--setups", help=f"comma-separated setups to run, or 'all'; known (http): {keys}")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="py-spy",
        choices=["py-spy", "py-spy-raw", "cprofile"],
        help="only profile one load step of one sidecar (default profiler: py-spy)",
    )
    parser.add_argument(
        "--profile-step",
        choices=["rps", "h2"],
        default="rps",
        help="which step --profile runs: wrk requests/s (default) or h2load over HTTP/2",
    )
    parser.add_argument(
        "--profile-setup",
        choices=sorted(profiling.ONE_SIDECAR),
        default="sidecar-1",
        help="which one-sidecar setup --profile runs (default sidecar-1)",
    )
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv", help="venv with the sidecar installed")
    parser.add_argument("--keep-temp", action="store_true", help="keep configs and logs of the run")
    return parser.parse_args(argv)


def timing_from(args: argparse.Namespace) -> Timing:
    duration = args.duration if args.duration is not None else (2 if args.quick else 10)
    if duration < 1:
        raise SystemExit("bench: --duration must be at least 1 second")
    return Timing(duration=duration, warmup=1 if args.quick or duration < 5 else 2)


def cores() -> tuple[int, int]:
    """(load generator + origin core, proxy core): 0 and 1, or both 0 on a one-core machine."""
    if (os.cpu_count() or 1) >= 2:
        return 0, 1
    print("bench: only one CPU core: everything shares core 0, figures will be poor", file=sys.stderr)
    return 0, 0


def git_commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def header_lines(
    timing: Timing, versions: dict[str, str], loadgen_core: int, proxy_core: int, load_at_start: float
) -> list[str]:
    """What the run was: when, which commit, how long each step, pinning, tool versions."""
    fixed_rates = " and ".join(f"{rate_clients(rate)} x {rate // rate_clients(rate)} req/s" for rate in RATES)
    return [
        f"sidecar benchmark  {time.strftime('%Y-%m-%d %H:%M')}  commit {git_commit()}  "
        f"{timing.duration} s per step (+{timing.warmup} s warm-up per setup)  "
        f"load average at start {load_at_start:.2f}",
        f"load generator + origin on core {loadgen_core}, proxies on core {proxy_core}; "
        f"wrk -t1 -c{CONNECTIONS} (latency: -c1), h2load -c{H2_CLIENTS} -m{H2_STREAMS}; fixed rate: h2load --h1 "
        f"-c1 -m1, {fixed_rates}",
        "; ".join(versions.values()),
    ]


def estimate_seconds(setups: list[Setup], timing: Timing) -> int:
    """About how long the run takes: warm-up, every step and some overhead per setup."""
    steps = sum(STEPS_PER_SETUP + (len(RATES) if setup.fixed_rate else 0) for setup in setups)
    return len(setups) * (timing.warmup + STEP_OVERHEAD) + steps * timing.duration


def run_setups(bench: Bench, setups: list[Setup], timing: Timing) -> list[SetupResult]:
    results = []
    for number, setup in enumerate(setups, 1):
        print(f"bench: [{number}/{len(setups)}] {setup.title} ...", flush=True)
        started = time.monotonic()
        result = measure(bench, setup, timing)
        outcome = f"failed: {result.failure}" if result.failure else f"{result.figures.get('rps') or 0:,.0f} req/s"
        print(f"bench:     {outcome} ({time.monotonic() - started:.0f} s)", flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    run_started = time.monotonic()
    args = parse_args(argv)
    timing = timing_from(args)
    if args.scenario != "http":
        if args.profile:
            raise SystemExit("bench: --profile profiles the http scenario only")
        if args.scenario == "tcp":
            return main_tcp(args, timing)
        if args.setups:
            raise SystemExit("bench: the transparent scenario has no --setups")
        return main_transparent(args, timing)
    setups = select(args.setups)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every finally block stops its processes
    paths = tools.ensure_tools()
    load_at_start = os.getloadavg()[0]
    loadgen_core, proxy_core = cores()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    try:
        with ProcessSet(run_dir) as procs:
            http_port, h2_port = free_ports(2)
            origin = nginx.start_origin(procs, paths["nginx"], (http_port, h2_port), loadgen_core)
            launcher = SidecarLauncher.default(args.venv, proxy_core)
            bench = Bench(paths, run_dir, args.venv, origin, launcher, loadgen_core, proxy_core)
            if args.profile:
                return profiling.run(bench, args.profile, args.profile_setup, args.profile_step, timing, RESULTS, stamp)
            estimate = estimate_seconds(setups, timing)
            print(f"bench: {len(setups)} setups, about {estimate} s; temp dir {run_dir}", flush=True)
            results = run_setups(bench, setups, timing)
    except StartFailed as exc:
        print(f"bench: {exc.reason}\n{exc.detail}", file=sys.stderr)
        return 1
    finally:
        if args.keep_temp:
            print(f"bench: configs and logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    report.add_derived(results)
    header = header_lines(timing, tools.versions(paths), loadgen_core, proxy_core, load_at_start)
    summary = [*report.cpu_summary(results), f"whole run: {time.monotonic() - run_started:.0f} s"]
    print("\n" + report.render_text(header, results, summary=summary))
    meta = {"header": header, "timing": timing.__dict__, "python": platform.python_version(), "stamp": stamp}
    written = report.write_results(RESULTS, stamp, header, meta, results, summary=summary)
    print(f"\nbench: results written to {written.with_suffix('.*')}")
    return 0


def main_tcp(args: argparse.Namespace, timing: Timing) -> int:
    """`run.py tcp`: the TCP setups (harness/tcp.py) against the sink and redis origins, one table."""
    setups = tcp.select(args.setups)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every finally block stops its processes
    paths = tools.ensure_tcp_tools()
    load_at_start = os.getloadavg()[0]
    loadgen_core, proxy_core = cores()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(tempfile.mkdtemp(prefix="sidecar-bench-tcp-"))
    results = []
    try:
        with ProcessSet(run_dir) as procs:
            sink_port, redis_port = tcp.start_origins(procs, paths, loadgen_core)
            certs = tcp.make_certs(args.venv, paths["openssl"], run_dir / "certs")
            launcher = SidecarLauncher.default(args.venv, proxy_core)
            bench = tcp.TcpBench(paths, run_dir, launcher, loadgen_core, proxy_core, sink_port, redis_port, certs)
            estimate = len(setups) * (5 * timing.warmup + 5 * timing.duration + 4)
            print(f"bench: tcp, {len(setups)} setups, about {estimate} s; temp dir {run_dir}", flush=True)
            for number, setup in enumerate(setups, 1):
                print(f"bench: [{number}/{len(setups)}] {setup.title} ...", flush=True)
                started = time.monotonic()
                result = tcp.measure(bench, setup, timing)
                mb_s, conn_s = result.figures.get("mb_s_1") or 0, result.figures.get("conn_s") or 0
                outcome = f"failed: {result.failure}" if result.failure else f"{mb_s:,.0f} MB/s, {conn_s:,.0f} conns/s"
                print(f"bench:     {outcome} ({time.monotonic() - started:.0f} s)", flush=True)
                results.append(result)
    except StartFailed as exc:
        print(f"bench: {exc.reason}\n{exc.detail}", file=sys.stderr)
        return 1
    finally:
        if args.keep_temp:
            print(f"bench: configs and logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    report.add_derived(results)
    header = [
        f"sidecar TCP benchmark  {time.strftime('%Y-%m-%d %H:%M')}  commit {git_commit()}  "
        f"{timing.duration} s per step (+ warm-up)  load average at start {load_at_start:.2f}",
        f"load generators + origins (tcp_sink.py, redis-server) on core {loadgen_core}, proxies on core "
        f"{proxy_core}; tcp_stream.py 1 and {tcp.STREAMS} conns, "
        f"redis-benchmark -c{tcp.CLIENTS} PING (-k 0: new conns)",
        "; ".join(tools.versions(paths).values()),
        *tcp.summary(results),
    ]
    text = report.render_text(header, results, tcp.FIGURES, tcp.REFERENCES)
    print("\n" + text)
    meta = {"header": header, "timing": timing.__dict__, "python": platform.python_version(), "stamp": stamp}
    written = report.write_results(RESULTS, stamp, header, meta, results, tcp.FIGURES, tcp.REFERENCES, "bench-tcp")
    print(f"\nbench: results written to {written.with_suffix('.*')}")
    return 0


def main_transparent(args: argparse.Namespace, timing: Timing) -> int:
    """`run.py transparent`: harness/transparent.py in two network namespaces; skipped unless root."""
    why_not = transparent.unavailable()
    if why_not:
        print(f"bench: transparent scenario skipped: {why_not}")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every finally block stops its processes
    paths = tools.ensure_tools()
    load_at_start = os.getloadavg()[0]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(tempfile.mkdtemp(prefix="sidecar-bench-netns-"))
    print(f"bench: transparent vs explicit, about {3 * (timing.warmup + 3 * timing.duration) + 20} s", flush=True)
    try:
        results = transparent.run(paths, args.venv, run_dir, timing, cores())
    except StartFailed as exc:
        print(f"bench: {exc.reason}\n{exc.detail}", file=sys.stderr)
        return 1
    finally:
        if args.keep_temp:
            print(f"bench: configs and logs kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    report.add_derived(results)
    header = [
        f"sidecar transparent-capture benchmark  {time.strftime('%Y-%m-%d %H:%M')}  commit {git_commit()}  "
        f"{timing.duration} s per step  load average at start {load_at_start:.2f}",
        "pods in network namespaces (198.18.0.1 <-> 198.18.0.2, veth); wrk and the nginx origin on one core, "
        "both sidecars (uid 1337) on the other; HTTP/2 + mTLS between the sidecars",
        "; ".join(tools.versions(paths).values()),
        *transparent.summary(results),
    ]
    print("\n" + report.render_text(header, results, transparent.FIGURES, transparent.REFERENCES))
    meta = {"header": header, "timing": timing.__dict__, "python": platform.python_version(), "stamp": stamp}
    written = report.write_results(
        RESULTS, stamp, header, meta, results, transparent.FIGURES, transparent.REFERENCES, "bench-transparent"
    )
    print(f"\nbench: results written to {written.with_suffix('.*')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

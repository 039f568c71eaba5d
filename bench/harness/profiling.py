"""`--profile`: one load step of one sidecar under a profiler, to see where the proxy spends time.
The step is wrk's requests/s (`--profile-step rps`) or h2load over HTTP/2 (`--profile-step h2`); the
sidecar is one of the one-sidecar setups (`--profile-setup`: default config, no retries, all policies).

Two profilers:
  py-spy    (default) attaches to the running sidecar by PID from the load-generator core, samples
            every thread without pausing it (`--nonblocking`) for the length of the step, and writes
            a flame graph SVG (`py-spy-raw`: collapsed stacks as text, for scripts). Installed into the
            project's venv with pip when missing.
  cprofile  runs the sidecar as `python -m cProfile -o FILE -m sidecar run ...`; the profile is
            written when the sidecar exits (we stop it with SIGINT), then summarised as text.
Both files land in bench/results/. Figures measured under a profiler are slower than real ones.
"""

from __future__ import annotations

import contextlib
import io
import pstats
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from harness import measure, nginx
from harness.procs import ProcessSet, StartFailed, pinned
from harness.setups import (
    Bench,
    Front,
    one_sidecar,
    one_sidecar_all_policies,
    one_sidecar_logged,
    one_sidecar_no_retries,
    one_sidecar_traced,
)
from harness.sidecars import SidecarLauncher

ONE_SIDECAR: dict[str, Callable[[Bench, ProcessSet], Front]] = {
    "sidecar-1": one_sidecar,
    "sidecar-1-bare": one_sidecar_no_retries,
    "sidecar-1-policies": one_sidecar_all_policies,
    "sidecar-1-traced": one_sidecar_traced,
    "sidecar-1-logged": one_sidecar_logged,
}


def run(bench: Bench, tool: str, setup: str, step: str, timing: measure.Timing, out_dir: Path, stamp: str) -> int:
    """Profile one step ("rps" or "h2") of one sidecar setup; returns the process exit code."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build = ONE_SIDECAR[setup]
    name = f"profile-{setup}-{step}-{stamp}"
    if tool == "cprofile":
        return run_cprofile(bench, build, step, timing, out_dir / f"{name}.pstats")
    suffix = ".txt" if tool == "py-spy-raw" else ".svg"
    return run_pyspy(bench, build, step, timing, out_dir / f"{name}{suffix}")


def start_sidecar(
    bench: Bench, build: Callable[[Bench, ProcessSet], Front], procs: ProcessSet, timing: measure.Timing
) -> Front:
    front = build(bench, procs)
    measure.smoke_check(front)
    if timing.warmup:
        measure.wrk(bench, front, nginx.SMALL_PATH, measure.CONNECTIONS, timing.warmup)
    return front


def load_step(bench: Bench, front: Front, step: str, timing: measure.Timing) -> None:
    result = measure.SetupResult("sidecar-1", "1 sidecar")
    if step == "h2":
        measure.step_h2(bench, front, timing, result)
        print(f"bench: under the profiler: {result.figures['h2_rps'] or 0:,.0f} HTTP/2 requests/s")
    else:
        measure.step_rps(bench, front, timing, result)
        rps, per_cpu = result.figures["rps"], result.figures["req_per_cpu_s"]
        print(f"bench: under the profiler: {rps:,.0f} requests/s, {per_cpu or 0:,.0f} requests per proxy CPU-s")
    for note in result.notes.values():
        print(f"bench: note: {note}")


def pyspy_binary(venv: Path) -> str:
    """py-spy from the venv or PATH; pip-installed into the venv when neither has it."""
    candidate = venv / "bin" / "py-spy"
    if not candidate.exists() and not shutil.which("py-spy"):
        print("bench: installing py-spy into the venv", flush=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(candidate) if candidate.exists() else str(shutil.which("py-spy"))


def run_pyspy(
    bench: Bench, build: Callable[[Bench, ProcessSet], Front], step: str, timing: measure.Timing, out: Path
) -> int:
    pyspy = pyspy_binary(bench.venv)
    with ProcessSet(bench.run_dir) as procs:
        try:
            front = start_sidecar(bench, build, procs, timing)
        except StartFailed as exc:
            return report_failure(exc)
        argv = [pyspy, "record", "--nonblocking", "--pid", str(front.proxies[0].pid)]
        argv += ["--duration", str(timing.duration), "--output", str(out), "--threads", "--rate", "500"]
        if out.suffix == ".txt":
            argv += ["--format", "raw"]  # collapsed stacks, one line each: for scripts
        recorder = procs.start("py-spy", pinned(bench.loadgen_core, argv), stop_signal=signal.SIGINT)
        load_step(bench, front, step, timing)
        with contextlib.suppress(subprocess.TimeoutExpired):
            recorder.popen.wait(timeout=30)
        if recorder.popen.returncode != 0 or not out.exists():
            print(f"bench: py-spy did not write a profile; try --profile cprofile\n{recorder.output_tail()}")
            return 1
    print(f"bench: flame graph written to {out}")
    return 0


def run_cprofile(
    bench: Bench, build: Callable[[Bench, ProcessSet], Front], step: str, timing: measure.Timing, out: Path
) -> int:
    python = str(bench.venv / "bin" / "python")
    command = [python, "-m", "cProfile", "-o", str(out), "-m", "sidecar"]
    launcher = SidecarLauncher(command, bench.proxy_core, stop_signal=signal.SIGINT, stop_timeout=30.0)
    with ProcessSet(bench.run_dir) as procs:
        try:
            front = start_sidecar(replace(bench, launcher=launcher), build, procs, timing)
        except StartFailed as exc:
            return report_failure(exc)
        load_step(bench, front, step, timing)
        procs.stop(front.proxies[0])  # SIGINT: cProfile writes the file as the sidecar exits
    if not out.exists():
        print(f"bench: the sidecar exited without writing {out}")
        return 1
    summary = out.with_suffix(".txt")
    summary.write_text(top_functions(out, 40))
    print(top_functions(out, 25))
    print(f"bench: cProfile data in {out} (summary in {summary}); view with `python -m pstats {out}`")
    return 0


def top_functions(path: Path, count: int) -> str:
    """The functions with the most cumulative time, as pstats prints them."""
    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.sort_stats("cumulative").print_stats(count)
    return buffer.getvalue()


def report_failure(exc: StartFailed) -> int:
    print(f"bench: {exc.reason}\n{exc.detail}")
    return 1

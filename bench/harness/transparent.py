"""`bench/run.py transparent` (root only): the latency transparent capture adds to HTTP over explicit mode.

Two network namespaces ("pods") joined by a veth pair, addresses from 198.18.0.0/15 only:

    pod A 198.18.0.1 (wrk, sidecar A)  ──veth──  198.18.0.2 pod B (nginx origin on :8080, sidecar B)

Three columns, measured one after the other in the same pods:
  direct        wrk in A -> http://198.18.0.2:8080 (no sidecar)
  explicit      wrk in A -> http://127.0.0.1:15001 (A's outbound) -> mTLS -> B's inbound 198.18.0.2:15006 -> app
  transparent   after `sidecar iptables -c DIR` in both pods: wrk in A -> http://198.18.0.2:8080 with no proxy
                setting, redirected to A's outbound; A -> 198.18.0.2:8080 (the Service's endpoint is the app's
                address), redirected in B to its inbound listener; B -> the original destination
Both sidecars run as uid 1337 (`capture.proxy_uid`) in both sidecar columns, pinned to the proxy core; wrk
and nginx to the other core. The Service is the same in both (default protocol: HTTP/2 between the
sidecars by ALPN, mTLS); only its endpoint and the capture mode differ. Rows: p50/p99 at one connection
(and what each adds over direct), requests/s at 50 connections and per proxy CPU-second, new
connections/s (`Connection: close`) and per proxy CPU-second: detection and SO_ORIGINAL_DST are paid per
connection. Namespaces (and their interfaces and nat rules) are deleted at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness import loadgen, nginx
from harness.measure import CONNECTIONS, SetupResult, Timing
from harness.procs import Proc, ProcessSet, StartFailed, cpu_seconds, pinned
from harness.report import Figure
from harness.sidecars import SidecarLauncher, TlsFiles, issue_certs, spiffe_id

PROXY_UID = 1337
POD_A, POD_B = "198.18.0.1", "198.18.0.2"  # RFC 2544 benchmarking range only
APP_PORT, APP_H2_PORT = 8080, 8081
INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT = 15006, 15001, 15000  # the sidecar's defaults
READY_TIMEOUT = 15.0

FIGURES = (
    Figure("p50_ms", "p50 ms, 1 conn", "lower", 3),
    Figure("p99_ms", "p99 ms, 1 conn", "lower", 3),
    Figure("added_p50_ms", "added p50 ms vs direct", "lower", 3),
    Figure("added_p99_ms", "added p99 ms vs direct", "lower", 3),
    Figure("rps", f"requests/s, {CONNECTIONS} conns", "higher", 0),
    Figure("req_per_cpu_s", "requests per proxy CPU-s", "higher", 0, proxy_only=True),
    Figure("conn_rps", "new connections/s", "higher", 0),
    Figure("conn_per_cpu_s", "new connections per proxy CPU-s", "higher", 0, proxy_only=True),
)
REFERENCES = ("direct", "explicit")


def unavailable() -> str | None:
    """Why this machine cannot run the scenario (None when it can): root, iproute2, iptables."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and iptables nat rules)"
    for tool in ("ip", "iptables-restore", "setpriv", "curl"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            return f"no `{tool}` command"
    return None


class Netns:
    """One network namespace (`ip netns`); commands run in it through `ip netns exec`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def prefix(self, user: int | None = None) -> tuple[str, ...]:
        """What goes before a command to run it here (as `user`, without capabilities, if given).
        Each of these execs the next, so the process keeps the PID we started."""
        prefix: tuple[str, ...] = (ip(), "netns", "exec", self.name)
        if user is not None:
            prefix += ("setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all")
        return prefix

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, timeout=30, check=False)
        if check and result.returncode != 0:
            raise StartFailed(f"`{' '.join(argv[:3])}` in {self.name} exited {result.returncode}", result.stderr)
        return result

    def http_status(self, url: str, host: str | None = None) -> str:
        """The status code of one GET from here ("000" or "" when there was no answer)."""
        headers = ("-H", f"Host: {host}") if host else ()
        argv = ("curl", "-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", *headers, url)
        return self.run(*argv, check=False).stdout


def ip() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def ip_run(*args: str) -> None:
    result = subprocess.run([ip(), *args], capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise StartFailed(f"ip {' '.join(args)} failed", result.stderr)


@contextlib.contextmanager
def pods() -> Iterator[tuple[Netns, Netns]]:
    """Two namespaces joined by a veth pair (A 198.18.0.1/30, B 198.18.0.2/30), deleted on exit."""
    tag = f"scb{os.getpid()}{secrets.token_hex(2)}"
    made: list[Netns] = []
    try:
        for side in ("a", "b"):
            ip_run("netns", "add", f"{tag}{side}")
            made.append(Netns(f"{tag}{side}"))
            ip_run("-n", f"{tag}{side}", "link", "set", "lo", "up")
        a, b = made
        ip_run("-n", a.name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", b.name)
        for ns, address, device in ((a, POD_A, "veth0"), (b, POD_B, "veth1")):
            ip_run("-n", ns.name, "address", "add", f"{address}/30", "dev", device)
            ip_run("-n", ns.name, "link", "set", device, "up")
        yield a, b
    finally:
        for ns in made:
            subprocess.run([ip(), "netns", "delete", ns.name], capture_output=True, timeout=30, check=False)


@dataclass
class Pods:
    a: Netns
    b: Netns
    tools: dict[str, str]
    run_dir: Path
    launcher: SidecarLauncher
    tls: dict[str, TlsFiles]
    loadgen_core: int
    proxy_core: int


def sidecar_docs(pods: Pods, transparent: bool) -> dict[str, str]:
    """The two config files. Explicit: A's Service points at B's inbound listener. Transparent: at
    the app's own address, which B's nat rules send to its inbound listener."""
    capture = f"capture: {{mode: transparent, proxy_uid: {PROXY_UID}}}" if transparent else "capture: {mode: explicit}"
    endpoint = f"{POD_B}:{APP_PORT}" if transparent else f"{POD_B}:{INBOUND_PORT}"

    def tls(service: str) -> str:
        files = pods.tls[service]
        return f"tls: {{cert: {files.cert}, key: {files.key}, ca: {files.ca}}}"

    a = [
        "kind: Sidecar",
        "service: bench-client",
        tls("bench-client"),
        capture,
        "---",
        "kind: Service",
        "name: origin",
        "hosts: [origin]",
        f"endpoints: [{{address: {endpoint}}}]",
        f"tls: {{mode: mutual, identity: {spiffe_id('origin')}}}",
    ]
    b = [
        "kind: Sidecar",
        "service: origin",
        tls("origin"),
        capture,
        f"inbound: {{listen: 0.0.0.0:{INBOUND_PORT}, app: 127.0.0.1:{APP_PORT}}}",
    ]
    return {"a": "\n".join(a) + "\n", "b": "\n".join(b) + "\n"}


def start_sidecar(pods: Pods, procs: ProcessSet, ns: Netns, name: str, config: str) -> Proc:
    config_dir = pods.run_dir / f"{name}-config"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "sidecar.yaml").write_text(config)
    open_up(pods.run_dir)
    env = {**os.environ, "SIDECAR_LOG_LEVEL": "warning"}
    argv = [*ns.prefix(user=PROXY_UID), *pods.launcher.command, "run", "-c", str(config_dir)]
    proc = procs.start(name, pinned(pods.proxy_core, argv), env)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if not proc.alive():
            break
        if ns.http_status(f"http://127.0.0.1:{ADMIN_PORT}/ready") == "200":
            return proc
        time.sleep(0.2)
    detail = proc.output_tail()
    procs.stop(proc)
    raise StartFailed(f"{name} did not get ready in {ns.name}", detail)


def open_up(run_dir: Path) -> None:
    """Let the sidecars (uid 1337) read the run dir: configs, certificates and keys (a throwaway CA)."""
    for path in [run_dir, *run_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def measure_front(pods: Pods, key: str, title: str, url: str, proxies: list[Proc], timing: Timing) -> SetupResult:
    """Smoke request, warm-up, then latency, requests/s and new connections/s with wrk in pod A."""
    result = SetupResult(key, title)
    pids = [pid for proc in proxies for pid in proc.tree()]
    status = pods.a.http_status(url + nginx.SMALL_PATH, host=loadgen.HOST)
    if status != "200":
        result.failure = f"smoke request GET {url}{nginx.SMALL_PATH} answered {status or 'nothing'}"
        result.detail = "\n".join(proc.output_tail() for proc in proxies)
        return result

    def wrk(connections: int, seconds: int, latency: bool = False, close: bool = False) -> loadgen.WrkResult:
        command = (*pods.a.prefix(), pods.tools["wrk"])
        return loadgen.run_wrk_as(
            command, pods.loadgen_core, url + nginx.SMALL_PATH, connections, seconds, latency, close
        )

    wrk(CONNECTIONS, timing.warmup)
    run = wrk(1, timing.duration, latency=True)
    result.figures.update(p50_ms=run.p50_ms, p99_ms=run.p99_ms)
    for step, close in (("rps", False), ("conn_rps", True)):
        before = cpu_seconds(pids)
        run = wrk(CONNECTIONS, timing.duration, close=close)
        cpu = cpu_seconds(pids) - before if pids else None
        result.figures[step] = run.rps
        result.figures["req_per_cpu_s" if step == "rps" else "conn_per_cpu_s"] = run.requests / cpu if cpu else None
        if run.problem:
            result.notes[step] = run.problem
        result.raw[step] = {**run.__dict__, "cpu_s": cpu}
    dead = [proc for proc in proxies if not proc.alive()]
    if dead:
        result.failure = f"{dead[0].name} exited with code {dead[0].popen.returncode}"
        result.detail = dead[0].output_tail()
    return result


def run(tools: dict[str, str], venv: Path, run_dir: Path, timing: Timing, cores: tuple[int, int]) -> list[SetupResult]:
    """Build the pods, measure the three columns in turn, tear everything down."""
    loadgen_core, proxy_core = cores
    tls = issue_certs(venv, run_dir / "certs", ["origin", "bench-client"])
    launcher = SidecarLauncher.default(venv, proxy_core)
    sidecar = [*launcher.command]
    results = []
    with pods() as (a, b), ProcessSet(run_dir) as procs:
        state = Pods(a, b, tools, run_dir, launcher, tls, loadgen_core, proxy_core)
        config = nginx.origin_config(run_dir, (APP_PORT, APP_H2_PORT), address="0.0.0.0")
        (run_dir / "origin.conf").write_text(config)
        conf, log = str(run_dir / "origin.conf"), str(run_dir / "origin.log")
        argv = [tools["nginx"], "-p", str(run_dir), "-c", conf, "-e", log]
        origin = procs.start("origin", pinned(loadgen_core, [*b.prefix(), *argv]))
        deadline = time.monotonic() + 10
        while b.http_status(f"http://127.0.0.1:{APP_PORT}{nginx.SMALL_PATH}") != "200":
            if time.monotonic() > deadline or not origin.alive():
                raise StartFailed("the origin nginx did not start in pod B", origin.output_tail())
            time.sleep(0.1)
        print("bench:   direct ...", flush=True)
        results.append(measure_front(state, "direct", "direct", f"http://{POD_B}:{APP_PORT}", [], timing))
        for transparent in (False, True):
            key = "transparent" if transparent else "explicit"
            print(f"bench:   {key} ...", flush=True)
            docs = sidecar_docs(state, transparent)
            try:
                if transparent:
                    for ns, side in ((a, "a"), (b, "b")):
                        (run_dir / f"iptables-{side}").mkdir(exist_ok=True)
                        (run_dir / f"iptables-{side}" / "sidecar.yaml").write_text(docs[side])
                        ns.run(*sidecar, "iptables", "-c", str(run_dir / f"iptables-{side}"))
                proxies = [
                    start_sidecar(state, procs, b, f"{key}-b", docs["b"]),
                    start_sidecar(state, procs, a, f"{key}-a", docs["a"]),
                ]
            except StartFailed as exc:
                results.append(SetupResult(key, key, failure=exc.reason, detail=exc.detail))
                continue
            url = f"http://{POD_B}:{APP_PORT}" if transparent else f"http://127.0.0.1:{OUTBOUND_PORT}"
            results.append(measure_front(state, key, key, url, proxies, timing))
            for proc in proxies:
                procs.stop(proc)
    return results


def summary(results: list[SetupResult]) -> list[str]:
    by_key = {result.key: result for result in results}
    explicit, transparent = by_key.get("explicit"), by_key.get("transparent")
    if explicit is None or transparent is None:
        return []
    parts = []
    for key in ("p50_ms", "p99_ms"):
        mine, base = transparent.figures.get(key), explicit.figures.get(key)
        parts.append(f"{key[:3]} {mine - base:+.3f} ms" if mine is not None and base is not None else f"{key} n/a")
    for key in ("req_per_cpu_s", "conn_per_cpu_s"):
        mine, base = transparent.figures.get(key), explicit.figures.get(key)
        parts.append(f"{key} {mine / base:.2f}x" if mine and base else f"{key} n/a")
    return [f"transparent vs explicit: {'; '.join(parts)}"]

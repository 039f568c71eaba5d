"""Transparent capture end to end, in network namespaces: two "pods" and an outside host.

    pod A 198.18.0.1 ──veth── 198.18.0.2 pod B        pod A 198.18.1.1 ──veth── 198.18.1.2 outside

Each pod runs its app (as root) and a sidecar as `proxy_uid` (1337) after `sidecar iptables`,
exactly as the Kubernetes init container and native sidecar do. The clients are unmodified tools
with no proxy setting (curl, redis-cli, a Python TLS client) dialing pod B's addresses as they
would without a mesh. Checked: the app behind B sees the caller's identity (XFCC); a packet capture
on the veth between the pods shows none of the request's plaintext; the access logs and metrics of
both sidecars show each connection; the app's own TLS passes through untouched (its certificate,
not the mesh's, reaches the client); allow_any passes an unknown destination, registry_only
refuses it (HTTP 404 no_route, TCP reset); a caller not in B's allow list is refused; and
`sidecar iptables --clean` leaves each namespace's nat table as it was.

The namespaces, processes and files are built once for the module (a few seconds) and removed
afterwards, whatever happened. Skipped, with the reason, where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Pki, spiffe_id
from tests.netns import Lab, Namespace, listening

PROXY_UID = 1337
APP_PORT = 8080
REDIS_PORT = 6379
TLS_APP_PORT = 8443
OUTSIDE_HTTP = 9090
OUTSIDE_TCP = 7000
VIRTUAL_IP = "198.18.200.10"  # a Service address no host has (as a ClusterIP): routed out of pod A, captured
POD_APPS = str(Path(__file__).with_name("pod_apps.py"))
SIDECAR = [sys.executable, "-m", "sidecar"]
READY_TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(
    shutil.which("iptables-restore") is None, reason="no iptables-restore (the iptables package)"
)


@dataclass
class Pod:
    ns: Namespace
    address: str
    config: Path
    log: Path
    address6: str | None = None
    sidecar: subprocess.Popen[str] | None = None
    nat_before: str = ""

    def curl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ns.run("curl", "-sS", "--max-time", "10", *args, check=check)

    def admin(self, path: str) -> str:
        return self.curl(f"http://127.0.0.1:15000{path}").stdout

    def access_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"direction"' in line:
                lines.append(json.loads(line))
        return lines

    def write_config(self, docs: list[dict[str, Any]]) -> None:
        """Replace the config (atomically, as a ConfigMap update) and wait for the reload."""
        before = json.loads(self.admin("/config"))["version"]
        staged = self.config / ".staged"
        staged.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        staged.chmod(0o644)
        staged.rename(self.config / "mesh.yaml")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            config = json.loads(self.admin("/config"))
            if config["version"] != before:
                assert config["last_error"] is None, config["last_error"]
                return
            time.sleep(0.1)
        raise AssertionError("the sidecar did not reload its config")


@dataclass
class Pods:
    a: Pod
    b: Pod
    outside: Namespace
    outside_address: str
    pki: Pki
    app_ca: Path
    a_docs: list[dict[str, Any]]
    b_docs: list[dict[str, Any]]


def _sidecar_doc(pki: Pki, service: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "Sidecar",
        "service": service,
        "tls": pki.tls_section(service),
        "capture": {"mode": "transparent", "proxy_uid": PROXY_UID},
        **fields,
    }


def _start_sidecar(pod: Pod) -> None:
    log = open(pod.log, "w")  # noqa: SIM115 - the child keeps it; closed with the module
    env = {"PATH": os.environ["PATH"], "SIDECAR_LOG_LEVEL": "info"}
    pod.sidecar = pod.ns.popen(
        *SIDECAR, "run", "-c", str(pod.config), user=PROXY_UID, stdout=log, stderr=subprocess.STDOUT, env=env
    )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if pod.sidecar.poll() is not None:
            raise AssertionError(f"sidecar exited: {pod.log.read_text()}")
        ready = "http://127.0.0.1:15000/ready"
        code = pod.ns.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", ready, check=False)
        if code.stdout == "200":
            return
        time.sleep(0.1)
    raise AssertionError(f"sidecar not ready: {pod.log.read_text()}")


def _nat(ns: Namespace) -> str:
    """The nat table without the comment and counter lines, for comparing."""
    saved = ns.run("iptables-save", "-t", "nat").stdout
    return "\n".join(line for line in saved.splitlines() if not line.startswith("#")).replace("[0:0]", "")


@pytest.fixture(scope="module")
def pods() -> Iterator[Pods]:
    with Lab() as lab:
        a_ns, b_ns, outside = lab.namespace(), lab.namespace(), lab.namespace()
        mesh_link = lab.link(a_ns, b_ns, ipv6=True)
        outside_link = lab.link(a_ns, outside)
        # Files the sidecars (uid 1337) can read: a directory of its own under /tmp.
        root = Path(tempfile.mkdtemp(prefix="sidecar-netns-"))
        try:
            pki = Pki(root / "pki")
            app_pki = Pki(root / "app-pki")  # the TLS app's own CA, unknown to the mesh
            app_cert = app_pki.workload("tls-app")
            for service in ("pod-a", "pod-b"):
                pki.workload(service)
            a = Pod(a_ns, mesh_link.a_addr, root / "a", root / "a.log", address6=mesh_link.a_addr6)
            b = Pod(b_ns, mesh_link.b_addr, root / "b", root / "b.log", address6=mesh_link.b_addr6)
            b_docs: list[dict[str, Any]] = [
                _sidecar_doc(pki, "pod-b", inbound={"allow": [spiffe_id("pod-a")]}),
            ]
            a_docs: list[dict[str, Any]] = [
                _sidecar_doc(pki, "pod-a"),
                {
                    "kind": "Service",
                    "name": "pod-b",
                    "endpoints": [{"address": f"{b.address}:{APP_PORT}"}, {"address": f"[{b.address6}]:{APP_PORT}"}],
                    "tls": {"identity": spiffe_id("pod-b")},
                },
                {
                    "kind": "Service",
                    "name": "cache",
                    "protocol": "tcp",
                    "endpoints": [{"address": f"{b.address}:{REDIS_PORT}"}],
                    "tls": {"identity": spiffe_id("pod-b")},
                },
                {  # a virtual IP (a ClusterIP) that nothing owns: only the sidecar knows where it goes
                    "kind": "Service",
                    "name": "cache-vip",
                    "protocol": "tcp",
                    "addresses": [VIRTUAL_IP],
                    "ports": [REDIS_PORT],
                    "endpoints": [{"address": f"{b.address}:{REDIS_PORT}"}],
                    "tls": {"identity": spiffe_id("pod-b")},
                },
                {
                    "kind": "Service",
                    "name": "web-vip",
                    "hosts": [],
                    "addresses": [VIRTUAL_IP],
                    "ports": [80],
                    "endpoints": [{"address": f"{b.address}:{APP_PORT}"}],
                    "tls": {"identity": spiffe_id("pod-b")},
                },
                {
                    "kind": "Service",
                    "name": "greeter",
                    "endpoints": [{"address": f"{b.address}:2525"}],
                    "tls": {"identity": spiffe_id("pod-b")},
                },
                {
                    "kind": "Service",
                    "name": "secure-app",
                    "protocol": "tcp",
                    "endpoints": [{"address": f"{b.address}:{TLS_APP_PORT}"}],
                    "tls": {"identity": spiffe_id("pod-b")},
                },
            ]
            for pod, docs in ((a, a_docs), (b, b_docs)):
                pod.config.mkdir()
                (pod.config / "mesh.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
            subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
            root.chmod(0o755)
            # Pod B's apps, and the outside host's (not meshed, no capture).
            listening(b_ns.popen(sys.executable, POD_APPS, "http", str(APP_PORT)))
            tls_app = ("tls", str(TLS_APP_PORT), str(app_cert / "cert.pem"), str(app_cert / "key.pem"))
            listening(b_ns.popen(sys.executable, POD_APPS, *tls_app))
            b_ns.popen(
                "redis-server", "--port", str(REDIS_PORT), "--bind", "0.0.0.0", "--protected-mode", "no",
                "--save", "", "--appendonly", "no",
            )  # fmt: skip
            listening(b_ns.popen(sys.executable, POD_APPS, "greet", "2525"))
            listening(outside.popen(sys.executable, POD_APPS, "http", str(OUTSIDE_HTTP)))
            listening(outside.popen(sys.executable, POD_APPS, "echo", str(OUTSIDE_TCP)))
            a_ns.ip("route", "add", "198.18.200.0/24", "dev", mesh_link.a_dev)  # kube-proxy's part, roughly
            probe = a_ns.run(*SIDECAR, "version", user=PROXY_UID, check=False)
            assert probe.returncode == 0, (
                f"uid {PROXY_UID} cannot run the sidecar from this checkout ({sys.executable}): the sidecar "
                f"runs as capture.proxy_uid here, so the checkout and the venv must be readable by it:\n{probe.stderr}"
            )
            for pod in (a, b):
                pod.nat_before = _nat(pod.ns)
                pod.ns.run(*SIDECAR, "iptables", "-c", str(pod.config))
                _start_sidecar(pod)
            _wait_for_redis(a)
            yield Pods(a, b, outside, outside_link.b_addr, pki, app_pki.ca, a_docs, b_docs)
        finally:
            for pod_log in root.glob("*.log"):
                print(f"--- {pod_log.name}\n{pod_log.read_text(errors='replace')[-4000:]}")
            shutil.rmtree(root, ignore_errors=True)


def _wait_for_redis(pod: Pod) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        ping = pod.ns.run("redis-cli", "-h", "198.18.0.2", "-p", str(REDIS_PORT), "PING", check=False)
        if ping.stdout.strip() == "PONG":
            return
        time.sleep(0.2)
    raise AssertionError("redis through the mesh never answered")


class Capture:
    """tcpdump on an interface of a namespace, written to a file, for reading back the bytes."""

    def __init__(self, ns: Namespace, device: str, path: Path) -> None:
        self.path = path
        # --immediate-mode: packets are handed over as they come (else a stop can lose the last block)
        argv = ("tcpdump", "-i", device, "--immediate-mode", "-U", "-s", "0", "-w", str(path), "-Z", "root", "tcp")
        self.process = ns.popen(*argv)
        deadline = time.monotonic() + 10
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # "tcpdump: listening on ..."
        assert "listening" in line, line
        assert time.monotonic() < deadline

    def stop(self) -> bytes:
        self.process.send_signal(signal.SIGINT)
        self.process.communicate(timeout=10)
        return self.path.read_bytes()


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_http_and_redis_between_pods_are_encrypted_and_identified(pods: Pods, tmp_path: Path) -> None:
    a, b = pods.a, pods.b
    secret_path = f"/info/secret-{secrets.token_hex(8)}"
    secret_value = f"value-{secrets.token_hex(8)}"
    capture = Capture(a.ns, "veth0a", tmp_path / "veth.pcap")
    try:
        answer = a.curl(f"http://{b.address}:{APP_PORT}{secret_path}")
        h2 = a.curl(
            "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version}", f"http://{b.address}:{APP_PORT}/info"
        )
        stored = a.ns.run("redis-cli", "-h", b.address, "-p", str(REDIS_PORT), "SET", "k", secret_value).stdout.strip()
        read = a.ns.run("redis-cli", "-h", b.address, "-p", str(REDIS_PORT), "GET", "k").stdout.strip()
    finally:
        wire = capture.stop()
    info = json.loads(answer.stdout)
    assert info["path"] == secret_path
    assert f"URI={spiffe_id('pod-a')}" in dict(info["headers"])["x-forwarded-client-cert"]
    assert h2.stdout == "2"
    assert (stored, read) == ("OK", secret_value)
    # The capture saw the traffic (packets to pod B's ports) but none of its plaintext.
    assert len(wire) > 1000
    for plaintext in (secret_path.encode(), secret_value.encode(), b"x-forwarded-client-cert"):
        assert plaintext not in wire
    # Both sidecars logged and counted what passed.
    time.sleep(0.3)
    a_http = [line for line in a.access_lines() if line["path"] == secret_path]
    b_http = [line for line in b.access_lines() if line["path"] == secret_path]
    assert a_http and a_http[0]["direction"] == "outbound" and a_http[0]["service"] == "pod-b"
    assert b_http and b_http[0]["direction"] == "inbound" and b_http[0]["peer_identity"] == spiffe_id("pod-a")
    a_tcp = [line for line in a.access_lines() if line["protocol"] == "tcp" and line["service"] == "cache"]
    redis = f"{b.address}:{REDIS_PORT}"
    b_tcp = [line for line in b.access_lines() if line["protocol"] == "tcp" and line["authority"] == redis]
    assert len(a_tcp) >= 2 and len(b_tcp) >= 2
    assert all(line["reason"] is None and line["bytes_in"] > 0 and line["bytes_out"] > 0 for line in a_tcp + b_tcp)
    assert all(line["peer_identity"] == spiffe_id("pod-a") for line in b_tcp)
    a_metrics, b_metrics = a.admin("/metrics"), b.admin("/metrics")
    assert _metric(a_metrics, "sidecar_tcp_connections_total", direction="outbound", service="cache") >= 2
    assert _metric(b_metrics, "sidecar_tcp_connections_total", direction="inbound", service="pod-b") >= 2
    assert _metric(a_metrics, "sidecar_tcp_bytes_total", direction="outbound", service="cache", flow="received") > 0
    assert _metric(a_metrics, "sidecar_requests_total", direction="outbound", service="pod-b", code="200") >= 2


def test_services_are_matched_by_virtual_address_and_port_and_http_by_host_first(pods: Pods) -> None:
    """A connection to a Service's `addresses` (and one of its `ports`) is that Service's, though
    no host owns the address; HTTP is matched by Host before any address."""
    a = pods.a
    set_ = a.ns.run("redis-cli", "-h", VIRTUAL_IP, "-p", str(REDIS_PORT), "SET", "vip", "yes").stdout.strip()
    assert set_ == "OK"
    info = json.loads(a.curl(f"http://{VIRTUAL_IP}/info").stdout)
    assert f"URI={spiffe_id('pod-a')}" in dict(info["headers"])["x-forwarded-client-cert"]
    by_host = json.loads(a.curl("-H", "Host: pod-b", "http://198.18.200.99:8080/info").stdout)
    assert dict(by_host["headers"])["host"] == "pod-b"
    time.sleep(0.3)
    services = {(line["service"], line["authority"]) for line in a.access_lines()}
    assert ("cache-vip", f"{VIRTUAL_IP}:{REDIS_PORT}") in services
    assert ("web-vip", VIRTUAL_IP) in services
    assert ("pod-b", "pod-b") in services


def test_ipv6_is_captured_too(pods: Pods) -> None:
    """The pods have global IPv6 addresses, so `sidecar iptables` installed ip6tables rules and the
    listeners took their IPv6 twins: a call to pod B's IPv6 address is meshed like an IPv4 one."""
    assert "SIDECAR_OUTPUT" in pods.a.ns.run("ip6tables-save", "-t", "nat").stdout
    info = json.loads(pods.a.curl("-g", f"http://[{pods.b.address6}]:{APP_PORT}/info").stdout)
    assert f"URI={spiffe_id('pod-a')}" in dict(info["headers"])["x-forwarded-client-cert"]


def test_a_server_that_speaks_first_is_carried_after_the_detect_timeout(pods: Pods) -> None:
    """Port 2525 is not opaque and its Service is not tcp: the sidecar waits `detect_timeout` (1 s)
    for a first byte from the client, then carries the connection as TCP, greeting and all."""
    client = (
        "import socket, sys, time\n"
        "started = time.monotonic()\n"
        "with socket.create_connection((sys.argv[1], 2525), timeout=10) as s:\n"
        "    greeting = s.recv(100)\n"
        "    waited = time.monotonic() - started\n"
        "    s.sendall(b'after\\n')\n"
        "    print(greeting.decode().strip(), s.recv(100).decode().strip(), round(waited, 1))\n"
    )
    greeting, echoed, waited = pods.a.ns.run(sys.executable, "-c", client, pods.b.address).stdout.rsplit(" ", 2)
    assert (greeting, echoed) == ("hello from greet", "after")
    assert 0.9 <= float(waited) < 5


def test_the_apps_own_tls_passes_through_untouched(pods: Pods) -> None:
    """The app's TLS to pod B is carried as bytes: the client sees the app's certificate (from a CA
    the mesh does not know), not a sidecar's, and the handshake and its data go through both."""
    client = (
        "import socket, ssl, sys\n"
        "context = ssl.create_default_context(cafile=sys.argv[1])\n"
        "context.check_hostname = False\n"
        "with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10) as raw:\n"
        "    with context.wrap_socket(raw) as tls:\n"
        "        tls.sendall(b'ping\\n')\n"
        "        print(tls.recv(100).decode().strip(), tls.getpeercert()['subjectAltName'][0][1])\n"
    )
    seen = pods.a.ns.run(sys.executable, "-c", client, str(pods.app_ca), pods.b.address, str(TLS_APP_PORT)).stdout
    assert seen.split() == ["tls-app", "ping", "spiffe://mesh.local/ns/default/sa/tls-app"]
    lines = [line for line in pods.a.access_lines() if line["service"] == "secure-app"]
    assert lines and lines[-1]["protocol"] == "tcp" and lines[-1]["upstream"] == f"{pods.b.address}:{TLS_APP_PORT}"


def test_unknown_destinations_follow_the_outbound_policy(pods: Pods) -> None:
    a = pods.a
    outside_http = f"http://{pods.outside_address}:{OUTSIDE_HTTP}/info"
    tcp_client = (
        "import socket, sys\n"
        "with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:\n"
        "    s.sendall(b'echo me\\n')\n"
        "    try:\n"
        "        print(repr(s.recv(100)))\n"
        "    except ConnectionResetError:\n"
        "        print('reset')\n"
    )
    # allow_any (the default): both pass through, as they are.
    assert json.loads(a.curl(outside_http).stdout)["path"] == "/info"
    echoed = a.ns.run(sys.executable, "-c", tcp_client, pods.outside_address, str(OUTSIDE_TCP)).stdout.strip()
    assert echoed == repr(b"echo me\n")
    passthrough = [line for line in a.access_lines() if line["service"] == "passthrough"]
    assert {line["protocol"] for line in passthrough} >= {"tcp", "HTTP/1.1"}
    # registry_only: HTTP gets 404 no_route, TCP a reset.
    registry_only = {**pods.a_docs[0]["capture"], "outbound_policy": "registry_only"}
    docs = [dict(pods.a_docs[0], capture=registry_only), *pods.a_docs[1:]]
    a.write_config(docs)
    try:
        refused = a.curl("-i", outside_http)
        assert refused.stdout.startswith("HTTP/1.1 404")
        assert "x-sidecar-reason: no_route" in refused.stdout.lower()
        result = a.ns.run(sys.executable, "-c", tcp_client, pods.outside_address, str(OUTSIDE_TCP), check=False)
        assert result.stdout.strip() in ("reset", repr(b""))
        # Known destinations still go through.
        assert json.loads(a.curl(f"http://{pods.b.address}:{APP_PORT}/info").stdout)["path"] == "/info"
    finally:
        a.write_config(pods.a_docs)
    lines = [line for line in a.access_lines() if line["reason"] == "no_route"]
    assert {line["protocol"] for line in lines} == {"tcp", "HTTP/1.1"}


def test_a_caller_not_in_allow_is_refused(pods: Pods) -> None:
    b = pods.b
    docs = [dict(pods.b_docs[0], inbound={"allow": [spiffe_id("someone-else")]})]
    b.write_config(docs)
    try:
        http = pods.a.curl("-i", f"http://{b.address}:{APP_PORT}/info")
        assert http.stdout.startswith("HTTP/1.1 403")
        redis = pods.a.ns.run("redis-cli", "-h", b.address, "-p", str(REDIS_PORT), "PING", check=False)
        assert "PONG" not in redis.stdout
    finally:
        b.write_config(pods.b_docs)
    refused = [line for line in b.access_lines() if line["reason"] == "unauthorized"]
    assert {line["protocol"] for line in refused} >= {"tcp", "HTTP/2"}  # the hop from A is HTTP/2
    _wait_for_redis(pods.a)


def test_clean_leaves_the_namespaces_as_they_were(pods: Pods) -> None:
    """Last: removes the capture (the module's pods are done after it)."""
    for pod in (pods.a, pods.b):
        pod.ns.run(*SIDECAR, "iptables", "-c", str(pod.config), "--clean")
        assert _nat(pod.ns) == pod.nat_before
    # Without capture, pod A's call reaches pod B's app directly: no identity, nothing logged by A.
    before = len(pods.a.access_lines())
    info = json.loads(pods.a.curl(f"http://{pods.b.address}:{APP_PORT}/info").stdout)
    assert "x-forwarded-client-cert" not in dict(info["headers"])
    assert len(pods.a.access_lines()) == before


def test_a_packet_for_another_address_is_not_relayed_by_the_pod() -> None:
    """A host on the pod's link that sends the pod a connection addressed to some other IP (the pod
    as its "router") must not get the sidecar to dial that IP on its behalf: `sidecar iptables`
    redirects inbound only what is addressed to the pod itself, and the inbound listener refuses a
    redirected connection whose original destination is not one of the pod's addresses (rules
    installed by other means)."""
    with Lab() as lab:
        pod, attacker, victim = lab.namespace(), lab.namespace(), lab.namespace()
        front, back = lab.link(pod, attacker), lab.link(pod, victim)
        victim.ip("route", "add", "198.18.0.0/24", "via", back.a_addr)
        attacker.ip("route", "add", f"{back.b_addr}/32", "via", front.a_addr)  # the victim "via the pod"
        assert pod.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
        listening(victim.popen(sys.executable, POD_APPS, "greet", "7000"))
        root = Path(tempfile.mkdtemp(prefix="sidecar-netns-"))
        try:
            pki = Pki(root / "pki")
            config = root / "config"
            config.mkdir()
            sidecar = _sidecar_doc(pki, "pod", inbound={"mode": "permissive"})
            (config / "mesh.yaml").write_text(yaml.safe_dump_all([sidecar]))
            subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
            root.chmod(0o755)
            pod.run(*SIDECAR, "iptables", "-c", str(config))
            pod_state = Pod(pod, front.a_addr, config, root / "pod.log")
            _start_sidecar(pod_state)
            client = (
                "import socket, sys\n"
                "try:\n"
                "    with socket.create_connection((sys.argv[1], 7000), timeout=3) as s:\n"
                "        print(repr(s.recv(100)))\n"
                "except OSError as error:\n"
                "    print(type(error).__name__)\n"
            )
            # The rules leave it alone, and the pod, which forwards nothing, drops it.
            seen = attacker.run(sys.executable, "-c", client, back.b_addr, check=False).stdout.strip()
            assert "greet" not in seen, seen
            # Rules that redirect it anyway (installed by something else): the sidecar refuses it.
            local_only = ("-m", "addrtype", "!", "--dst-type", "LOCAL", "-j", "RETURN")
            pod.run("iptables", "-t", "nat", "-D", "SIDECAR_INBOUND", *local_only)
            seen = attacker.run(sys.executable, "-c", client, back.b_addr, check=False).stdout.strip()
            assert "greet" not in seen, seen
            deadline = time.monotonic() + 5
            while "inbound_not_local" not in pod_state.log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "inbound_not_local" in pod_state.log.read_text()
        finally:
            shutil.rmtree(root, ignore_errors=True)

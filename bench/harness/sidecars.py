"""Sidecars under test: their config directories and starting them until /ready.

A sidecar is started as `sidecar run -c DIR` (or through a profiler, see profiling.py) pinned to the
proxy core, with `SIDECAR_LOG_LEVEL=warning` (so no access log) unless its spec says otherwise. It
counts as started once `GET /ready` on its admin port answers 200; if it does not within
`READY_TIMEOUT`, `StartFailed` carries its output tail so the row can say why, and the run goes on
with the next setup.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.procs import Proc, ProcessSet, StartFailed, pinned, wait_http_ok

READY_TIMEOUT = 10.0
TRUST_DOMAIN = "bench.local"


@dataclass(frozen=True)
class TlsFiles:
    """A workload's certificate, key and the mesh trust bundle (a Sidecar's `tls:`)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Upstream:
    """A `kind: Service` document: hosts it answers for and one static endpoint."""

    name: str
    port: int
    identity: str | None = None  # expected peer SPIFFE ID; set means `tls: {mode: mutual}`
    protocol: str | None = None  # http1 | http2 | auto; None leaves the sidecar's default
    policies: tuple[str, ...] = ()  # more YAML lines of the Service document (retries, breakers, ...)


@dataclass(frozen=True)
class TcpService:
    """A `kind: Service` document with `protocol: tcp` (explicit mode): the app dials `listen_port`
    on 127.0.0.1; the sidecar carries the connection to `endpoint_port`, through the mTLS tunnel to
    the peer sidecar `identity` names (asking it for `app_port`), or as it is without `identity`."""

    name: str
    listen_port: int
    endpoint_port: int
    app_port: int | None = None  # `ports: [..]`: the app port asked of the peer sidecar
    identity: str | None = None


@dataclass(frozen=True)
class SidecarSpec:
    """What one sidecar of a setup looks like; rendered to YAML by `config_yaml`."""

    name: str  # process name in logs and tables, e.g. "sidecar-a"
    service: str  # this workload's service name
    outbound_port: int
    admin_port: int
    inbound_port: int | None = None
    app_port: int | None = None
    upstreams: tuple[Upstream, ...] = ()
    tls: TlsFiles | None = None
    inbound_mode: str = "strict"  # "permissive" also serves plaintext callers (the plain two-sidecar row)
    sidecar_lines: tuple[str, ...] = ()  # more YAML lines of the Sidecar document (tracing, ...)
    log_level: str = "warning"  # SIDECAR_LOG_LEVEL: "info" writes the access log (to the stdout log file)
    tcp_services: tuple[TcpService, ...] = ()
    tcp_ports: tuple[int, ...] = ()  # `inbound.tcp_ports`: app ports peers may reach as opaque TCP


def listen(port: int) -> str:
    return f"{{listen: 127.0.0.1:{port}}}"


def config_yaml(spec: SidecarSpec) -> str:
    """The config directory's single file: one Sidecar document and one Service per upstream."""
    lines = ["kind: Sidecar", f"service: {spec.service}"]
    if spec.tls:
        lines.append(f"tls: {{cert: {spec.tls.cert}, key: {spec.tls.key}, ca: {spec.tls.ca}}}")
    if spec.inbound_port is not None:
        tcp_ports = f", tcp_ports: [{', '.join(map(str, spec.tcp_ports))}]" if spec.tcp_ports else ""
        lines.append(
            f"inbound: {{listen: 127.0.0.1:{spec.inbound_port}, app: 127.0.0.1:{spec.app_port}, "
            f"mode: {spec.inbound_mode}{tcp_ports}}}"
        )
    lines.append(f"outbound: {listen(spec.outbound_port)}")
    lines.append(f"admin: {listen(spec.admin_port)}")
    lines += spec.sidecar_lines
    for upstream in spec.upstreams:
        lines += [
            "---",
            "kind: Service",
            f"name: {upstream.name}",
            f"hosts: [{upstream.name}]",
            f"endpoints: [{{address: 127.0.0.1:{upstream.port}}}]",
        ]
        if upstream.protocol:
            lines.append(f"protocol: {upstream.protocol}")
        lines += upstream.policies
        if upstream.identity:
            lines.append(f"tls: {{mode: mutual, identity: {upstream.identity}}}")
        else:  # a plain origin, or the plain two-sidecar row
            lines.append("tls: {mode: disabled}")
    for service in spec.tcp_services:
        lines += tcp_service_yaml(service)
    return "\n".join(lines) + "\n"


def tcp_service_yaml(service: TcpService) -> list[str]:
    lines = [
        "---",
        "kind: Service",
        f"name: {service.name}",
        "protocol: tcp",
        f"listen: 127.0.0.1:{service.listen_port}",
        f"endpoints: [{{address: 127.0.0.1:{service.endpoint_port}}}]",
    ]
    if service.app_port is not None:
        lines.append(f"ports: [{service.app_port}]")
    if service.identity:
        lines.append(f"tls: {{mode: mutual, identity: {service.identity}}}")
    else:
        lines.append("tls: {mode: disabled}")
    return lines


@dataclass
class SidecarLauncher:
    """How to start a sidecar: the command before `run -c DIR`, and on which core."""

    command: list[str]
    core: int
    stop_signal: int = 15  # SIGTERM: a drain; it exits at once with no connection open
    stop_timeout: float = 5.0

    @classmethod
    def default(cls, venv: Path, core: int) -> SidecarLauncher:
        script = venv / "bin" / "sidecar"
        if script.exists():
            return cls([str(script)], core)
        return cls([str(venv / "bin" / "python"), "-m", "sidecar"], core)

    def start(self, procs: ProcessSet, spec: SidecarSpec) -> Proc:
        """Write the config dir, start the sidecar, and wait for /ready; raise StartFailed if not."""
        config_dir = procs.log_dir / f"{spec.name}-config"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "sidecar.yaml").write_text(config_yaml(spec))
        env = {**os.environ, "SIDECAR_LOG_LEVEL": spec.log_level}
        argv = pinned(self.core, [*self.command, "run", "-c", str(config_dir)])
        proc = procs.start(spec.name, argv, env, self.stop_signal, self.stop_timeout)
        problem = wait_http_ok(spec.admin_port, "/ready", proc, READY_TIMEOUT)
        if problem:
            procs.stop(proc)
            raise StartFailed(f"{spec.name} failed to start: {problem}", proc.output_tail())
        return proc


def issue_certs(venv: Path, out: Path, services: list[str]) -> dict[str, TlsFiles]:
    """A throwaway mesh CA and one workload cert per service, made with `sidecar certs`."""
    sidecar = SidecarLauncher.default(venv, 0).command
    ca_dir = out / "ca"
    run_cli([*sidecar, "certs", "init", "--trust-domain", TRUST_DOMAIN, "--out", str(ca_dir)])
    files = {}
    for service in services:
        workload_dir = out / service
        identity = spiffe_id(service)
        run_cli([*sidecar, "certs", "issue", "--ca", str(ca_dir), "--id", identity, "--out", str(workload_dir)])
        files[service] = TlsFiles(
            cert=find_pem(workload_dir, "cert"), key=find_pem(workload_dir, "key"), ca=find_pem(ca_dir, "ca")
        )
    return files


def issue_certs_with_dns(
    venv: Path, openssl: str, out: Path, server: str, client: str, dns_name: str
) -> dict[str, TlsFiles]:
    """As issue_certs for `server` and `client`, the server's cert re-signed by the same CA with
    `dns_name` added to its SAN (same key, same SPIFFE ID): nginx checks a peer's name
    (`proxy_ssl_verify on`), and a SPIFFE certificate carries only its URI SAN."""
    certs = issue_certs(venv, out, [server, client])
    tls, ca_dir = certs[server], out / "ca"
    extensions = out / f"{server}-ext.cnf"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyAgreement\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName=critical,URI:{spiffe_id(server)},DNS:{dns_name}\n"
        "authorityKeyIdentifier=keyid\n"
    )
    request = out / f"{server}.csr"
    subject = ["-subj", "/O=sidecar development mesh"]
    run_cli([openssl, "req", "-new", "-key", str(tls.key), *subject, "-out", str(request)])
    ca = ["-CA", str(ca_dir / "ca.pem"), "-CAkey", str(ca_dir / "ca-key.pem"), "-set_serial", str(secrets.randbits(63))]
    out_args = ["-days", "2", "-extfile", str(extensions), "-out", str(tls.cert)]
    run_cli([openssl, "x509", "-req", "-in", str(request), *ca, *out_args])
    return certs


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


def run_cli(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StartFailed(f"{' '.join(argv[-6:])} exited {result.returncode}", result.stderr[-2000:])


def find_pem(folder: Path, word: str) -> Path:
    """The PEM file in `folder` whose name contains `word` (cert.pem, key.pem, ca.pem, ...)."""
    matches = sorted(
        path for path in folder.glob("*.pem") if word in path.name and (word == "key" or "key" not in path.name)
    )
    if not matches:
        found = ", ".join(path.name for path in folder.iterdir()) if folder.exists() else "nothing"
        raise StartFailed(f"no *{word}*.pem in {folder} (found: {found})")
    return matches[0]

"""Fixtures for end-to-end tests: real sockets on 127.0.0.1, sidecars run in-process (or as real
processes where the test needs a process: signals, memory), origins served by hypercorn."""

from __future__ import annotations

import os
import random
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hypercorn.config
import hypercorn.trio
import pytest
import trio
import yaml

from sidecar.certs import init_ca, issue_workload
from sidecar.config.loader import load_directory
from sidecar.server import Runtime

from .apps import echo_app

REPO = Path(__file__).resolve().parents[2]
SIDECAR_BIN = [sys.executable, "-m", "sidecar"]


def free_port() -> int:
    """A port to listen on, chosen below the kernel's ephemeral range: a port picked by bind(0) is
    ephemeral, and an outgoing connection may take it again before the sidecar binds it."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    while True:
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


TRUST_DOMAIN = "mesh.local"


def spiffe_id(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}"


class Pki:
    """A development mesh CA (made with `sidecar certs`' code) and workload certs issued on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_dir = root / "ca"
        init_ca(TRUST_DOMAIN, self.ca_dir)
        self.ca = self.ca_dir / "ca.pem"

    def workload(self, service: str) -> Path:
        """Directory with cert.pem, key.pem and ca.pem for `spiffe://mesh.local/ns/default/sa/<service>`."""
        out = self.root / service
        if not (out / "cert.pem").exists():
            issue_workload(self.ca_dir, spiffe_id(service), out)
        return out

    def tls_section(self, service: str) -> dict[str, str]:
        out = self.workload(service)
        return {"cert": str(out / "cert.pem"), "key": str(out / "key.pem"), "ca": str(out / "ca.pem")}

    def client_context(self, service: str = "test-client") -> ssl.SSLContext:
        """For test clients calling an inbound listener: present `service`'s identity, trust the mesh CA."""
        out = self.workload(service)
        context = ssl.create_default_context(cafile=str(self.ca))
        context.check_hostname = False  # mesh certs carry SPIFFE IDs, not DNS names
        context.load_cert_chain(out / "cert.pem", out / "key.pem")
        return context


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def write_config(directory: Path, docs: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mesh.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return directory


class Mesh:
    """Builds sidecars and origins inside one test's nursery."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path, pki: Pki) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.pki = pki
        self.count = 0

    async def origin(self, app: Any = echo_app, **options: Any) -> int:
        port = free_port()
        config = hypercorn.config.Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.keep_alive_timeout = options.get("keep_alive_timeout", 30)
        config.h2_max_concurrent_streams = options.get("h2_max_concurrent_streams", 100)
        config.accesslog = None
        config.errorlog = None
        await self.nursery.start(partial(hypercorn.trio.serve, app, config, mode="asgi"))
        return port

    async def sidecar(
        self,
        *,
        service: str = "client",
        services: list[dict[str, Any]] | None = None,
        routes: list[dict[str, Any]] | None = None,
        inbound_app: int | None = None,
        **sidecar_fields: Any,
    ) -> SidecarHandle:
        self.count += 1
        handle = SidecarHandle(
            outbound=free_port(), admin=free_port(), inbound=free_port() if inbound_app else None, service=service
        )
        doc: dict[str, Any] = {
            "kind": "Sidecar",
            "service": service,
            "tls": self.pki.tls_section(service),
            "outbound": {"listen": f"127.0.0.1:{handle.outbound}"},
            "admin": {"listen": f"127.0.0.1:{handle.admin}"},
        }
        if inbound_app:
            inbound = {"listen": f"127.0.0.1:{handle.inbound}", "app": f"127.0.0.1:{inbound_app}"}
            inbound.update(sidecar_fields.pop("inbound", {}))
            doc["inbound"] = inbound
        doc.update(sidecar_fields)
        docs = [doc]
        docs += [{"kind": "Service", **s} for s in services or []]
        docs += [{"kind": "Route", **r} for r in routes or []]
        directory = write_config(self.tmp_path / f"sidecar{self.count}", docs)
        runtime = Runtime(load_directory(directory))
        handle.runtime = await self.nursery.start(partial(runtime.run, handle_signals=False))
        return handle


class SidecarHandle:
    def __init__(self, outbound: int, admin: int, inbound: int | None, service: str) -> None:
        self.outbound = outbound
        self.admin = admin
        self.inbound = inbound
        self.service = service
        self.runtime: Runtime

    @property
    def inbound_url(self) -> str:
        return f"https://127.0.0.1:{self.inbound}"

    @property
    def outbound_url(self) -> str:
        return f"http://127.0.0.1:{self.outbound}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"


def service(name: str, *ports: int, **fields: Any) -> dict[str, Any]:
    """A Service whose endpoints are plain HTTP apps (no sidecar in front): `tls.mode: disabled`."""
    fields.setdefault("tls", {"mode": "disabled"})
    return {"name": name, "endpoints": [{"address": f"127.0.0.1:{p}"} for p in ports], **fields}


def mesh_service(name: str, *sidecars: SidecarHandle, **fields: Any) -> dict[str, Any]:
    """A Service whose endpoints are other sidecars' inbound listeners: mutual TLS (the default),
    expecting the first sidecar's SPIFFE ID."""
    fields.setdefault("tls", {"identity": spiffe_id(sidecars[0].service)})
    return {"name": name, "endpoints": [{"address": f"127.0.0.1:{s.inbound}"} for s in sidecars], **fields}


@pytest.fixture
async def mesh(nursery: trio.Nursery, tmp_path: Path, pki: Pki) -> AsyncIterator[Mesh]:
    yield Mesh(nursery, tmp_path, pki)
    nursery.cancel_scope.cancel()


@dataclass(frozen=True)
class Pairing:
    """One combination of the failure matrix (see `matrix.py`): the downstream protocol (the app's
    connection to sidecar A), the hop between two sidecars, and the protocol of the app behind B."""

    downstream: str  # http1 | h2c
    hop: str  # http1 | auto (HTTP/2 by ALPN, the default)
    app: str  # http1 | h2c

    def __str__(self) -> str:
        return f"{self.downstream}-hop_{'h2' if self.hop == 'auto' else 'h1'}-app_{self.app}"


PAIRINGS = [Pairing(d, h, a) for d in ("http1", "h2c") for h in ("http1", "auto") for a in ("http1", "h2c")]


@pytest.fixture(params=PAIRINGS, ids=str)
def pairing(request: pytest.FixtureRequest) -> Pairing:
    """Every pairing of downstream protocol, hop protocol and app protocol."""
    param: Pairing = request.param
    return param


@pytest.fixture(params=["http1", "h2c"])
def downstream(request: pytest.FixtureRequest) -> str:
    """The protocol of the app's connection to the outbound listener."""
    return str(request.param)


@pytest.fixture(params=["http1", "auto"])
def hop(request: pytest.FixtureRequest) -> str:
    """The sidecar-to-sidecar protocol (the Service's `protocol`): HTTP/1.1, or HTTP/2 chosen by ALPN."""
    return str(request.param)


class Process:
    """A real `sidecar run` process, for tests about signals, exit codes and memory."""

    def __init__(self, config_dir: Path, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, SIDECAR_LOG_LEVEL="info")
        self.proc = subprocess.Popen(
            [*SIDECAR_BIN, "run", "-c", str(config_dir)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


async def wait_ready(admin_port: int, timeout: float = 15.0) -> None:
    import httpx

    with trio.fail_after(timeout):
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{admin_port}/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)

"""Network namespaces for tests: throwaway "pods" with their own interfaces, routes and nat tables.

    with Lab() as lab:                        # or the `netns_lab` fixture
        app, peer = lab.namespace(), lab.namespace()
        link = lab.link(app, peer)            # a veth pair: app 198.18.0.1/24 <-> peer 198.18.0.2/24
        app.run("iptables-save", "-t", "nat")
        server = peer.popen("python3", "-m", "http.server", "--bind", link.b_addr, "8080")

Each namespace has a unique name (``ip netns add``), starts with ``lo`` up, and runs commands
through ``ip netns exec NAME``. Addresses come only from 198.18.0.0/15 (RFC 2544, set aside for
benchmarking, so never a real network's) and, for IPv6, from 2001:2::/48 (RFC 5180, the same for
IPv6; its addresses are of global scope, as a pod's would be, unlike fd00::/8 or fe80::/10 ones, so
they make a namespace count as having global IPv6). Leaving the ``Lab`` kills the processes it
started and deletes its namespaces, with their interfaces, whatever happened inside.

Namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2; without them ``Lab()`` skips
the test with the reason (``require_netns``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import secrets
import select
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest

IPV4_RANGE = ipaddress.ip_network("198.18.0.0/15")
IPV6_RANGE = ipaddress.ip_network("2001:2::/48")
TIMEOUT = 30.0

_available: str | None = None
"""Why namespaces cannot be made here ("" when they can), found out once per session."""
_names = itertools.count()


def _prefix() -> str:
    return f"sct{os.getpid()}"


def require_netns() -> None:
    """Skip the calling test, with the reason, unless network namespaces can be made here."""
    global _available
    if _available is None:
        _available = _probe()
    if _available:
        pytest.skip(_available)


def _probe() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the tests as root)"
    if shutil.which("ip") is None:
        return "no `ip` command (the iproute2 package) to make network namespaces with"
    name = f"{_prefix()}-probe-{secrets.token_hex(3)}"
    result = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip() or result.returncode}"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=TIMEOUT)
    return ""


def _check_in(address: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    interface = ipaddress.ip_interface(address)
    inside = interface.version == network.version and interface.network.prefixlen >= network.prefixlen
    if not inside or interface.network.network_address not in network:
        raise ValueError(f"{address} is outside {network}: test addresses come only from {IPV4_RANGE} and {IPV6_RANGE}")


class Namespace:
    """One network namespace; commands run in it through ``ip netns exec``."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    def argv(self, *argv: str, user: int | None = None) -> list[str]:
        """The command line that runs ``argv`` in this namespace (as UID and GID ``user``, with no
        supplementary groups and no capabilities, when given: by ``setpriv``)."""
        if user is not None:
            setpriv = shutil.which("setpriv") or "setpriv"
            argv = (setpriv, f"--reuid={user}", f"--regid={user}", "--clear-groups", "--inh-caps=-all", *argv)
        return [_ip_command(), "netns", "exec", self.name, *argv]

    def run(
        self,
        *argv: str,
        user: int | None = None,
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` here and wait for it; ``check`` raises with its stderr when it fails."""
        result = subprocess.run(
            self.argv(*argv, user=user), input=input, capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} in {self.name} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def popen(self, *argv: str, user: int | None = None, **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` here; the ``Lab`` kills it on exit if it still runs. stdout and stderr are
        pipes unless given."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        process = subprocess.Popen(self.argv(*argv, user=user), text=True, **kwargs)
        self.lab.processes.append(process)
        return process

    def ip(self, *args: str) -> None:
        """``ip -n NAME args...``."""
        _ip("-n", self.name, *args)

    def add_address(self, device: str, address: str) -> None:
        """Put ``address`` (``198.18.x.y/len`` or ``2001:2:...:/len``, nothing else) on ``device``;
        IPv6 without duplicate address detection, so it is usable at once."""
        interface = ipaddress.ip_interface(address)
        _check_in(address, IPV4_RANGE if interface.version == 4 else IPV6_RANGE)
        extra = ("nodad",) if interface.version == 6 else ()
        self.ip("address", "add", address, "dev", device, *extra)


@dataclass(frozen=True)
class Link:
    """A veth pair between namespaces ``a`` and ``b``, with an address on each end."""

    a: Namespace
    b: Namespace
    a_dev: str
    b_dev: str
    a_addr: str
    """The address on ``a``'s end, without the prefix length (e.g. ``198.18.0.1``)."""
    b_addr: str
    a_addr6: str | None = None
    b_addr6: str | None = None


def _ip_command() -> str:
    """``ip`` by its full path, so that a command run with another PATH still gets into the namespace."""
    return shutil.which("ip") or "ip"


def _ip(*args: str) -> None:
    result = subprocess.run([_ip_command(), *args], capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class Lab:
    """Namespaces, the links between them and the processes started in them, all gone on exit."""

    def __init__(self) -> None:
        require_netns()
        self.namespaces: list[Namespace] = []
        self.processes: list[subprocess.Popen[str]] = []
        self._links = itertools.count()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def namespace(self) -> Namespace:
        """A new namespace with ``lo`` up and nothing else."""
        name = f"{_prefix()}-{next(_names)}-{secrets.token_hex(2)}"
        _ip("netns", "add", name)
        namespace = Namespace(self, name)
        self.namespaces.append(namespace)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    def link(self, a: Namespace, b: Namespace, *, ipv6: bool = False) -> Link:
        """A veth pair from ``a`` to ``b``: the n-th link of this lab takes 198.18.n.1/24 (on ``a``)
        and 198.18.n.2/24 (on ``b``), and with ``ipv6`` also 2001:2:0:n::1/64 and ::2/64."""
        n = next(self._links)
        if n > 255:
            raise ValueError("at most 256 links in one lab")
        a_dev, b_dev = f"veth{n}a", f"veth{n}b"
        a.ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b.name)
        a_addr, b_addr = f"198.18.{n}.1", f"198.18.{n}.2"
        a.add_address(a_dev, f"{a_addr}/24")
        b.add_address(b_dev, f"{b_addr}/24")
        a_addr6 = b_addr6 = None
        if ipv6:
            a_addr6, b_addr6 = f"2001:2:0:{n:x}::1", f"2001:2:0:{n:x}::2"
            a.add_address(a_dev, f"{a_addr6}/64")
            b.add_address(b_dev, f"{b_addr6}/64")
        a.ip("link", "set", a_dev, "up")
        b.ip("link", "set", b_dev, "up")
        return Link(a, b, a_dev, b_dev, a_addr, b_addr, a_addr6, b_addr6)

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=5)
        self.processes.clear()
        for namespace in self.namespaces:
            subprocess.run(["ip", "netns", "delete", namespace.name], capture_output=True, timeout=TIMEOUT)
        self.namespaces.clear()


@pytest.fixture
def netns_lab() -> Iterator[Lab]:
    """A ``Lab`` for one test (skips the test when namespaces cannot be made here). Import it into
    a test module, or wrap ``Lab()`` in a fixture of the module's own."""
    with Lab() as lab:
        yield lab


def listening(process: subprocess.Popen[str], marker: str = "ready", timeout: float = TIMEOUT) -> str:
    """Wait for ``process`` to print a line starting with ``marker`` (its sign that it listens) and
    return that line; fails with its stderr if it exits first."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line.startswith(marker):
        process.kill()
        _, stderr = process.communicate(timeout=timeout)
        raise AssertionError(f"{process.args!r} did not get ready: {line!r} {stderr}")
    return line.strip()

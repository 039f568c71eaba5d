"""`sidecar iptables`: runs the system's iptables tools in the current network namespace.

This module owns everything that touches the system for transparent capture: finding the tools and
the backend in use, reading the current nat table (``iptables-save -t nat``), applying the text that
``rules`` builds (``iptables-restore --noflush``), the checks for CAP_NET_ADMIN and for a global IPv6
address, and the one-line errors. The rules themselves, and what to add or delete given the current
table, are ``rules``' business.

The backend: iptables has two, ``legacy`` (x_tables) and ``nft`` (nf_tables), and rules written with
one are invisible to the other, so the tools must be those of the backend the namespace already
uses. As Istio's iptables setup does, ``iptables-legacy-save`` is asked first, then
``iptables-nft-save`` (the whole dump, every table); the first that lists any table is the one in
use, and its ``-save`` and ``-restore`` are run. When neither lists anything (a fresh pod
namespace) or those variants are not installed, the plain ``iptables-save``/``iptables-restore`` are
used, whichever backend the system's alternatives point them at. IPv6 is decided the same way, with
the ``ip6tables`` tools.

IPv6: the IPv6 nat table gets the rules too when the namespace has an IPv6 address of global scope
(``/proc/net/if_inet6``, scope ``00``); without one, the IPv6 table is not touched by an install,
while ``--clean`` still removes what an earlier install left there when it can read that table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import SidecarConfig
from .rules import (
    HOOKS,
    INBOUND_CHAIN,
    OUTPUT_CHAIN,
    OWN_CHAINS,
    CapturePlan,
    Family,
    NatTable,
    clean_text,
    has_global_ipv6,
    holds_tables,
    install_text,
    parse_nat,
)

CAP_NET_ADMIN = 12
NOT_PERMITTED = (
    "not permitted to change this network namespace's nat rules: this needs CAP_NET_ADMIN; run it as "
    "root, e.g. as a Kubernetes init container whose securityContext adds the NET_ADMIN capability"
)
PACKAGE = "iptables"
"""The Debian/Ubuntu (and Alpine, Fedora) package that ships iptables-save and iptables-restore."""
SAVE_TIMEOUT = 30.0
RESTORE_WAIT = 30
"""Seconds iptables-restore waits for the xtables lock (legacy backend) before giving up."""


class CaptureError(Exception):
    """A failure to report on one line (``sidecar iptables: <message>``) and exit 1."""


@dataclass(frozen=True, slots=True)
class Backend:
    """The save and restore tools of one backend for one address family."""

    family: Family
    name: str
    """``iptables-legacy``, ``iptables-nft`` or ``iptables`` (``ip6tables...`` for IPv6)."""
    save: str
    restore: str

    @property
    def restore_name(self) -> str:
        return f"{self.name}-restore"


def _tools(family: Family, variant: str) -> tuple[str, str, str]:
    name = ("iptables" if family == 4 else "ip6tables") + (f"-{variant}" if variant else "")
    return name, f"{name}-save", f"{name}-restore"


def _run(argv: list[str], stdin: str | None = None, timeout: float = SAVE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CaptureError(f"{os.path.basename(argv[0])} did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise CaptureError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _failure(tool: str, result: subprocess.CompletedProcess[str]) -> CaptureError:
    """The error for a tool that exited non-zero: not permitted, or its own last words."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    detail = "; ".join(lines[-2:]) if lines else f"exit status {result.returncode}"
    if any(word in result.stderr for word in ("Permission denied", "Operation not permitted", "must be root")):
        return CaptureError(f"{NOT_PERMITTED} ({tool}: {detail})")
    return CaptureError(f"{tool} failed: {detail}")


def find_backend(family: Family) -> Backend:
    """The tools of the backend in use in this namespace (see the module docstring); a
    ``CaptureError`` naming the missing tool and its package when there are none."""
    found = {}
    for variant in ("legacy", "nft", ""):
        name, save, restore = _tools(family, variant)
        save_path, restore_path = shutil.which(save), shutil.which(restore)
        if save_path and restore_path:
            found[variant] = Backend(family, name, save_path, restore_path)
    for variant in ("legacy", "nft"):
        backend = found.get(variant)
        if backend is None:
            continue
        result = _run([backend.save])
        if result.returncode == 0 and holds_tables(result.stdout):
            return backend
    for variant in ("", "nft", "legacy"):
        if variant in found:
            return found[variant]
    _, save, restore = _tools(family, "")
    missing = restore if shutil.which(restore) is None else save
    raise CaptureError(f"{missing} not found on PATH: install the {PACKAGE} package (e.g. apt-get install {PACKAGE})")


def read_nat(backend: Backend) -> NatTable:
    """The nat table now, read with ``-save -t nat``."""
    result = _run([backend.save, "-t", "nat"])
    if result.returncode != 0:
        raise _failure(os.path.basename(backend.save), result)
    return parse_nat(result.stdout)


def apply(backend: Backend, text: str) -> None:
    """Feed ``text`` to ``-restore --noflush``: one transaction; the other tables and chains stay."""
    result = _run([backend.restore, "--noflush", f"--wait={RESTORE_WAIT}"], stdin=text, timeout=RESTORE_WAIT + 30)
    if result.returncode != 0:
        raise _failure(backend.restore_name, result)


def has_net_admin(status: Path = Path("/proc/self/status")) -> bool | None:
    """Whether this process holds CAP_NET_ADMIN (effective); ``None`` when that cannot be read."""
    try:
        text = status.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return None


def global_ipv6(if_inet6: Path = Path("/proc/net/if_inet6")) -> bool:
    """Whether this namespace has an IPv6 address of global scope (no file: IPv6 is off)."""
    try:
        return has_global_ipv6(if_inet6.read_text())
    except OSError:
        return False


def _family_name(family: Family) -> str:
    return "IPv4" if family == 4 else "IPv6"


Print = Callable[[str], None]


def run(sidecar: SidecarConfig | None, *, dry_run: bool, clean: bool, out: Print, err: Print) -> int:
    """The whole command: install (or with ``clean`` remove) the rules, or with ``dry_run`` print
    the text that would be applied. ``sidecar`` is needed only to install. Returns the exit code."""
    try:
        if not dry_run and has_net_admin() is False:
            raise CaptureError(NOT_PERMITTED)
        if clean:
            return _clean(dry_run=dry_run, out=out, err=err)
        assert sidecar is not None
        return _install(sidecar, dry_run=dry_run, out=out, err=err)
    except CaptureError as exc:
        err(f"sidecar iptables: {exc}")
        return 1


def _current(backend: Backend, *, dry_run: bool, err: Print) -> NatTable | None:
    """The nat table now; on a dry run ``None`` (with a note) when it cannot be read."""
    try:
        return read_nat(backend)
    except CaptureError as exc:
        if not dry_run:
            raise
        err(
            f"sidecar iptables: cannot read the current {_family_name(backend.family)} nat table ({exc}); "
            "showing the full rules, hooks included"
        )
        return None


def _show(sections: list[tuple[Backend, str]], out: Print) -> None:
    for backend, text in sections:
        out(f"# {backend.restore_name} --noflush\n{text.rstrip()}")


def _plain(family: Family) -> Backend:
    name, save, restore = _tools(family, "")
    return Backend(family, name, save, restore)


def _install(sidecar: SidecarConfig, *, dry_run: bool, out: Print, err: Print) -> int:
    plan = CapturePlan.from_config(sidecar)
    if sidecar.capture.mode != "transparent":
        err(
            f"sidecar iptables: note: capture.mode is {sidecar.capture.mode}, not transparent; "
            "the rules redirect the app's traffic all the same"
        )
    families: list[Family] = [4, 6] if global_ipv6() else [4]
    sections = []
    for family in families:
        try:
            backend = find_backend(family)
        except CaptureError as exc:
            if not dry_run:
                raise
            err(f"sidecar iptables: {exc}; showing the full rules, hooks included")
            sections.append((_plain(family), install_text(plan, family, None)))
            continue
        sections.append((backend, install_text(plan, family, _current(backend, dry_run=dry_run, err=err))))
    if dry_run:
        _show(sections, out)
        return 0
    for backend, text in sections:
        apply(backend, text)
    redirects = [f"{OUTPUT_CHAIN} to port {plan.outbound_port}"]
    if plan.inbound_port is not None:
        redirects.insert(0, f"{INBOUND_CHAIN} to port {plan.inbound_port}")
    tools = ", ".join(f"{_family_name(backend.family)} with {backend.restore_name}" for backend, _ in sections)
    out(f"sidecar iptables: installed {' and '.join(redirects)} ({tools})")
    return 0


def _clean(*, dry_run: bool, out: Print, err: Print) -> int:
    v6_needed = global_ipv6()
    sections = []
    families: tuple[Family, ...] = (4, 6)
    for family in families:
        backend = None
        try:
            backend = find_backend(family)
            current = read_nat(backend)
        except CaptureError as exc:
            if family == 6 and not v6_needed:
                continue  # no IPv6 here, and no table an earlier install could have written to
            if not dry_run:
                raise
            err(
                f"sidecar iptables: cannot read the current {_family_name(family)} nat table ({exc}); "
                "showing the removal of a full install"
            )
            backend = backend or _plain(family)
            current = NatTable(OWN_CHAINS, tuple(HOOKS.values()))
        text = clean_text(current)
        if text is not None:
            sections.append((backend, text))
    if dry_run:
        if not sections:
            err("sidecar iptables: nothing to remove")
        _show(sections, out)
        return 0
    for backend, text in sections:
        apply(backend, text)
    if sections:
        out(
            f"sidecar iptables: removed the sidecar's chains and hooks "
            f"({', '.join(_family_name(b.family) for b, _ in sections)})"
        )
    else:
        out("sidecar iptables: nothing to remove")
    return 0

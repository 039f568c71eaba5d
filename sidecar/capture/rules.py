"""The nat rules of transparent capture, as ``iptables-restore`` text: config in, text out.

Nothing here runs a tool or reads a file (``iptables`` beside this module does): the functions take
the Sidecar's config and, where it matters, the current nat table as ``iptables-save`` printed it,
and return the text to feed to ``iptables-restore --noflush`` (or ``ip6tables-restore``).

The rules for the default config with an inbound section, IPv4::

    *nat
    :SIDECAR_INBOUND - [0:0]
    :SIDECAR_OUTPUT - [0:0]
    -A SIDECAR_INBOUND -m addrtype ! --dst-type LOCAL -j RETURN
    -A SIDECAR_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
    -A SIDECAR_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
    -A SIDECAR_INBOUND -p tcp -j REDIRECT --to-ports 15006
    -A SIDECAR_OUTPUT -m owner --uid-owner 1337 -j RETURN
    -A SIDECAR_OUTPUT -d 127.0.0.0/8 -j RETURN
    -A SIDECAR_OUTPUT -p tcp -j REDIRECT --to-ports 15001
    -A PREROUTING -p tcp -j SIDECAR_INBOUND
    -A OUTPUT -p tcp -j SIDECAR_OUTPUT
    COMMIT

``SIDECAR_INBOUND`` (hooked from ``PREROUTING``: TCP arriving from outside the pod) returns what is
not addressed to one of the pod's own addresses (the pod is not a router), the inbound listener's
own port (peers in explicit mode dial it directly), the admin port (probes and scrapes reach it as
is) and each of ``capture.exclude_inbound_ports``, and redirects every other port to the inbound
listener. Without an inbound section there is no inbound listener to redirect to, so there is no
``SIDECAR_INBOUND`` chain and no ``PREROUTING`` hook at all (one left by an earlier install with an
inbound section is removed).

``SIDECAR_OUTPUT`` (hooked from ``OUTPUT``: TCP the pod's processes open) returns, in order: the
connections of ``capture.proxy_uid`` (the sidecar's own, which must leave as they are), loopback
destinations (``127.0.0.0/8``, ``::1/128`` in the IPv6 table: the app calling the sidecar or a
local helper), each of ``capture.exclude_outbound_cidrs`` of the table's family and each of
``capture.exclude_outbound_ports``; every other connection is redirected to the outbound listener.
Only loopback *destinations* return, not all of ``-o lo``: a connection from the app to the pod's
own IP address also leaves through ``lo``, and is captured like a call to any other address.

Each rule is written the way ``iptables-save`` prints it back (``-p tcp -m tcp --dport``), so that
what ``--dry-run`` shows can be compared line for line with the table after an install.

Idempotency: under ``--noflush`` a chain declaration (``:SIDECAR_OUTPUT - [0:0]``) creates the
chain or empties it, so the sidecar's own chains are rewritten whole on every run; the hooks live
in the built-in chains, which are left alone, so a hook is appended only when the current table
lacks it (and extra copies, or other jumps into the sidecar's chains, are deleted).
"""

from __future__ import annotations

import ipaddress
import itertools
import shlex
from dataclasses import dataclass
from typing import Literal

from ..config.schema import SidecarConfig

Family = Literal[4, 6]

INBOUND_CHAIN = "SIDECAR_INBOUND"
OUTPUT_CHAIN = "SIDECAR_OUTPUT"
OWN_CHAINS = (INBOUND_CHAIN, OUTPUT_CHAIN)
HOOKS = {
    INBOUND_CHAIN: f"-A PREROUTING -p tcp -j {INBOUND_CHAIN}",
    OUTPUT_CHAIN: f"-A OUTPUT -p tcp -j {OUTPUT_CHAIN}",
}
"""The rule in a built-in chain that sends TCP into each of the sidecar's chains."""
LOOPBACK = {4: "127.0.0.0/8", 6: "::1/128"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CapturePlan:
    """What the rules capture, read from the Sidecar document."""

    inbound_port: int | None
    """The inbound listener's port; ``None`` without an inbound section (nothing captured inbound)."""
    inbound_return_ports: tuple[int, ...]
    """Inbound ports never redirected: the inbound listener's, the admin's, the excluded ones."""
    outbound_port: int
    proxy_uid: int
    exclude_outbound_ports: tuple[int, ...]
    exclude_outbound_cidrs: tuple[str, ...]
    """Canonical CIDRs of either family; each table lists those of its own."""

    @classmethod
    def from_config(cls, sidecar: SidecarConfig) -> CapturePlan:
        capture = sidecar.capture
        inbound_port = sidecar.inbound.listen.port if sidecar.inbound is not None else None
        returned = (inbound_port, sidecar.admin.listen.port, *capture.exclude_inbound_ports)
        return cls(
            inbound_port=inbound_port,
            inbound_return_ports=tuple(dict.fromkeys(port for port in returned if port is not None)),
            outbound_port=sidecar.outbound.listen.port,
            proxy_uid=capture.proxy_uid,
            exclude_outbound_ports=capture.exclude_outbound_ports,
            exclude_outbound_cidrs=capture.exclude_outbound_cidrs,
        )

    def chains(self) -> tuple[str, ...]:
        """The sidecar's chains these rules use."""
        return OWN_CHAINS if self.inbound_port is not None else (OUTPUT_CHAIN,)

    def chain_rules(self, family: Family) -> list[str]:
        """The ``-A`` lines of the sidecar's own chains, for the nat table of ``family``."""
        lines = []
        if self.inbound_port is not None:
            # Only connections to this namespace's own addresses: a packet for another address is
            # not the pod's to serve (redirected, the sidecar would dial it on the sender's behalf).
            lines.append(f"-A {INBOUND_CHAIN} -m addrtype ! --dst-type LOCAL -j RETURN")
            lines += [
                f"-A {INBOUND_CHAIN} -p tcp -m tcp --dport {port} -j RETURN" for port in self.inbound_return_ports
            ]
            lines.append(f"-A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {self.inbound_port}")
        lines.append(f"-A {OUTPUT_CHAIN} -m owner --uid-owner {self.proxy_uid} -j RETURN")
        lines.append(f"-A {OUTPUT_CHAIN} -d {LOOPBACK[family]} -j RETURN")
        lines += [
            f"-A {OUTPUT_CHAIN} -d {cidr} -j RETURN"
            for cidr in self.exclude_outbound_cidrs
            if ipaddress.ip_network(cidr).version == family
        ]
        lines += [f"-A {OUTPUT_CHAIN} -p tcp -m tcp --dport {port} -j RETURN" for port in self.exclude_outbound_ports]
        lines.append(f"-A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {self.outbound_port}")
        return lines


@dataclass(frozen=True, slots=True)
class NatTable:
    """The nat table as ``iptables-save -t nat`` printed it."""

    chains: tuple[str, ...] = ()
    """Every chain declared, built-in and user-defined, in order."""
    rules: tuple[str, ...] = ()
    """Every ``-A CHAIN ...`` line, in order, with runs of blanks made one space."""

    def own_chains(self) -> tuple[str, ...]:
        return tuple(chain for chain in OWN_CHAINS if chain in self.chains)

    def jumps_in(self) -> list[tuple[str, str]]:
        """``(rule, target)`` for each rule outside the sidecar's chains that jumps (``-j``) or goes
        (``-g``) into one of them: the hooks, and any other way in that would keep a chain busy."""
        found = []
        for rule in self.rules:
            chain = rule.split()[1]
            if chain in OWN_CHAINS:
                continue
            target = _target(rule)
            if target in OWN_CHAINS:
                found.append((rule, target))
        return found


def parse_nat(text: str) -> NatTable:
    """The ``*nat`` section of ``iptables-save`` output (the whole dump or ``-t nat``); an empty
    ``NatTable`` when there is none (the table was never loaded in this namespace)."""
    chains: list[str] = []
    rules: list[str] = []
    in_nat = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_nat = line == "*nat"
        elif not in_nat or not line or line.startswith("#"):
            continue
        elif line == "COMMIT":
            in_nat = False
        elif line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            rules.append(" ".join(line.split()))
    return NatTable(tuple(chains), tuple(rules))


def _target(rule: str) -> str | None:
    try:
        words = shlex.split(rule)
    except ValueError:  # an unbalanced quote in a comment match: the plain words will do
        words = rule.split()
    for option, value in itertools.pairwise(words):
        if option in ("-j", "--jump", "-g", "--goto"):
            return value
    return None


def install_text(plan: CapturePlan, family: Family, current: NatTable | None) -> str:
    """The ``iptables-restore --noflush`` input that leaves the nat table of ``family`` with the
    sidecar's chains as ``plan`` says and each hooked exactly once.

    ``current`` is the table now (``None`` when it could not be read: then every hook is added,
    which is right for a table that has none)."""
    wanted = plan.chains()
    stale = [chain for chain in current.own_chains() if chain not in wanted] if current is not None else []
    lines = ["*nat"]
    lines += [f":{chain} - [0:0]" for chain in (*wanted, *stale)]
    lines += plan.chain_rules(family)
    kept: set[str] = set()
    for rule, target in current.jumps_in() if current is not None else []:
        if target in wanted and target not in kept and rule == HOOKS[target]:
            kept.add(target)
        else:
            lines.append("-D" + rule[2:])
    lines += [HOOKS[chain] for chain in wanted if chain not in kept]
    lines += [f"-X {chain}" for chain in stale]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def clean_text(current: NatTable) -> str | None:
    """The ``iptables-restore --noflush`` input that removes the sidecar's chains and every jump
    into them; ``None`` when the table has none of either (nothing to do)."""
    own = current.own_chains()
    jumps = current.jumps_in()
    if not own and not jumps:
        return None
    lines = ["*nat"]
    lines += [f":{chain} - [0:0]" for chain in own]  # emptied first: a chain with rules cannot go
    lines += ["-D" + rule[2:] for rule, _ in jumps]
    lines += [f"-X {chain}" for chain in own]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def holds_tables(save_output: str) -> bool:
    """Whether a whole ``iptables-save`` dump lists any table: the backend that printed it is in
    use in this namespace (a backend nothing has touched prints nothing)."""
    return any(line.startswith("*") for line in save_output.splitlines())


def has_global_ipv6(if_inet6: str) -> bool:
    """Whether ``/proc/net/if_inet6`` lists an address of global scope (scope field ``00``)."""
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[3] == "00":
            return True
    return False

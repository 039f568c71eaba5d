"""Where a redirected connection was going: the original destination that the nat rules of
`sidecar iptables` rewrote (Linux conntrack's `SO_ORIGINAL_DST`, and `IP6T_SO_ORIGINAL_DST` for IPv6).

A connection that was not redirected (the app dialed the listener itself, or nothing captures this
namespace) has no original destination: the answer is None, also where conntrack keeps no entry.
"""

from __future__ import annotations

import socket

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The (IP, port) the peer dialed before a REDIRECT sent the connection to `sock`'s listener;
    None when the connection reached the listener's own address (not redirected)."""
    try:
        local = sock.getsockname()
        if sock.family == socket.AF_INET6 and not str(local[0]).startswith("::ffff:"):
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6)
            found = socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
        else:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
            found = socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
    except OSError:  # ENOENT: no conntrack entry (nothing redirected it); ENOPROTOOPT: no netfilter
        return None
    here = str(local[0]).removeprefix("::ffff:"), int(local[1])
    return None if found == here else found

"""Where a redirected connection was going: the original destination that the nat rules of
`sidecar iptables` rewrote (Linux conntrack's `SO_ORIGINAL_DST`, and `IP6T_SO_ORIGINAL_DST` for IPv6).

A connection that was not redirected (the app dialed the listener itself, or nothing captures this
namespace) has no original destination: the answer is None, also where conntrack keeps no entry.

`is_local` tells whether an address is one of this namespace's own: the inbound side serves only
connections that were going to the pod itself (one redirected while on its way elsewhere would have
the sidecar dial that address for whoever sent it).
"""

from __future__ import annotations

import socket
from collections import OrderedDict

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28
_LOCAL_CACHE = 256  # answers of `is_local` kept (a pod has few addresses)
_local: OrderedDict[str, bool] = OrderedDict()


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


def is_local(ip: str) -> bool:
    """Whether `ip` is an address of this network namespace: one a socket can bind to. The answer
    is remembered (least recently asked first out)."""
    known = _local.get(ip)
    if known is not None:
        _local.move_to_end(ip)
        return known
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
        local = True
    except OSError:  # EADDRNOTAVAIL: not ours
        local = False
    _local[ip] = local
    if len(_local) > _LOCAL_CACHE:
        _local.popitem(last=False)
    return local

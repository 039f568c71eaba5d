"""Clusters of static endpoints for the policy tests, and requests that carry a ring_hash key."""

from __future__ import annotations

from typing import Any

from sidecar.config.schema import Address
from sidecar.http.message import EMPTY_BODY, ConnectionInfo, Headers, Request
from sidecar.upstream.registry import Cluster, ClusterSettings


def addresses(count: int) -> list[str]:
    return [f"10.0.0.{i + 1}" for i in range(count)]


def make_settings(count: int = 3, weights: list[int] | None = None, **fields: Any) -> ClusterSettings:
    weights = weights or [1] * count
    fields.setdefault("load_balancer", "round_robin")
    return ClusterSettings(
        connect_timeout=1.0,
        request_timeout=15.0,
        idle_timeout=60.0,
        dns_refresh=5.0,
        targets=tuple((Address(host, 80), weight) for host, weight in zip(addresses(count), weights, strict=True)),
        **fields,
    )


def make_cluster(count: int = 3, weights: list[int] | None = None, **fields: Any) -> Cluster:
    return Cluster("orders", make_settings(count, weights, **fields))


def request(headers: list[tuple[bytes, bytes]] | None = None, peer: str = "192.0.2.1") -> Request:
    return Request(b"GET", b"/", b"orders", Headers.of(headers or []), EMPTY_BODY, ConnectionInfo(peer, 40000))

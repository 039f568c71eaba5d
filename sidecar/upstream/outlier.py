"""Outlier detection (passive health): endpoints whose answers keep failing are ejected for a while.

Owns the rules; the state they act on lives on each `Endpoint` (so it survives config reloads), and
the cluster is told when an endpoint's availability changed so its balancer is rebuilt. What the
detector needs of its cluster is `OutlierCluster`, defined here: its name, its endpoints, the
ejection count, and `availability_changed()`.

- **Counting** (`record`, after every try): a try that ends without a response (connect failure,
  reset, timeout, protocol error) counts as a 5xx and as a gateway error; 502, 503 and 504 count as
  both; another 5xx counts as a 5xx and ends a run of gateway errors; any other status ends both runs
  (Envoy's counting). A reply made by the peer sidecar (its own 503s) counts like any other.
  Answers from an endpoint that is already ejected (requests that were in flight) are not counted.
- **Ejection** happens as soon as either run reaches its threshold, for `base_ejection * times
  ejected`, at most `MAX_EJECTION` (300 s). The runs start again from zero.
- **`max_ejection_percent` is a hard cap**, counting the endpoint about to be ejected: an ejection
  happens only if `(ejected + 1) * 100 <= max_ejection_percent * endpoints`. This is Envoy's current
  reading without `always_eject_one_host`; the older "at least one host may always be ejected" is
  not taken because this sidecar has no panic mode (docs: behaviour/resilience.md): with it, a
  one-endpoint service would turn into 503s. So a service with one endpoint is ejected only with
  `max_ejection_percent: 100`, and two endpoints at the default 50 % lose at most one. An endpoint
  kept in by the cap stays counted: its next failure ejects it as soon as there is room.
- **Return** is on time: each cluster's detector has a task that sleeps until the earliest
  `ejected_until` among its ejected endpoints (an ejection that ends sooner moves that wake-up
  earlier) and returns every endpoint whose time is up, so an ejection lasts exactly its time.
- **Decay**: a review every `interval` lowers the multiplier: an endpoint back in service for
  `base_ejection` has its count of ejections lowered by one, at each review, so a flaky endpoint's
  ejections grow while it keeps failing and shrink back once it has recovered. The interval has no
  say in when an endpoint returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import trio

from ..logger import get_logger

if TYPE_CHECKING:
    from ..config.schema import OutlierDetection
    from .endpoint import Endpoint

log = get_logger("sidecar.upstream")

MAX_EJECTION = 300.0  # seconds: the longest ejection, however many times an endpoint was ejected
GATEWAY_ERRORS = frozenset({502, 503, 504})


class OutlierCluster(Protocol):
    """What outlier detection needs of its cluster (a `registry.Cluster`)."""

    ejections: int  # ejections so far, for sidecar_upstream_ejections_total

    @property
    def name(self) -> str: ...

    @property
    def endpoints(self) -> Sequence[Endpoint]: ...

    def availability_changed(self) -> None:
        """An endpoint was ejected or returned: the balancer must be rebuilt."""
        ...


class OutlierDetector:
    """Consecutive 5xx / gateway-error ejection for the endpoints of one cluster."""

    __slots__ = ("_timer", "cluster", "policy")

    def __init__(self, cluster: OutlierCluster, policy: OutlierDetection) -> None:
        self.cluster = cluster
        self.policy = policy
        self._timer: trio.CancelScope | None = None  # the return task's sleep, due at the next return

    def record(self, endpoint: Endpoint, status: int | None) -> None:
        """Count the outcome of one try: its response status, or None when no response came."""
        if status is not None and status < 500:
            endpoint.consecutive_5xx = 0
            endpoint.consecutive_gateway_errors = 0
            return
        if endpoint.ejected or endpoint.removed:
            return
        endpoint.consecutive_5xx += 1
        if status is None or status in GATEWAY_ERRORS:
            endpoint.consecutive_gateway_errors += 1
        else:
            endpoint.consecutive_gateway_errors = 0
        policy = self.policy
        if (
            endpoint.consecutive_5xx >= policy.consecutive_5xx
            or endpoint.consecutive_gateway_errors >= policy.consecutive_gateway_errors
        ):
            self.eject(endpoint, trio.current_time())

    def eject(self, endpoint: Endpoint, now: float) -> bool:
        """Eject `endpoint` unless the cap forbids it; True when it was ejected."""
        endpoints = self.cluster.endpoints
        ejected = sum(1 for e in endpoints if e.ejected)
        if (ejected + 1) * 100 > self.policy.max_ejection_percent * len(endpoints):
            return False
        endpoint.times_ejected += 1
        duration = min(self.policy.base_ejection * endpoint.times_ejected, MAX_EJECTION)
        endpoint.ejected = True
        endpoint.ejected_until = now + duration
        endpoint.consecutive_5xx = 0
        endpoint.consecutive_gateway_errors = 0
        self.cluster.ejections += 1
        timer = self._timer
        if timer is not None and endpoint.ejected_until < timer.deadline:
            timer.deadline = endpoint.ejected_until  # the return task wakes for this one first
        log.warning(
            "endpoint_ejected",
            service=self.cluster.name,
            endpoint=endpoint.address,
            seconds=duration,
            times=endpoint.times_ejected,
        )
        self.cluster.availability_changed()
        return True

    def next_return(self) -> float:
        """When the next ejected endpoint is due back (trio time; inf when none is ejected)."""
        return min((e.ejected_until for e in self.cluster.endpoints if e.ejected), default=math.inf)

    def return_due(self, now: float) -> None:
        """Return the endpoints whose ejection time is up."""
        returned = False
        for endpoint in self.cluster.endpoints:
            if endpoint.ejected and now >= endpoint.ejected_until:
                endpoint.ejected = False
                endpoint.returned_at = now
                returned = True
                log.info("endpoint_returned", service=self.cluster.name, endpoint=endpoint.address)
        if returned:
            self.cluster.availability_changed()

    def review(self, now: float) -> None:
        """Decay the multiplier of endpoints back in service for `base_ejection` (every `interval`)."""
        base = self.policy.base_ejection
        for endpoint in self.cluster.endpoints:
            if not endpoint.ejected and endpoint.times_ejected and now - endpoint.returned_at >= base:
                endpoint.times_ejected -= 1
                endpoint.returned_at = now

    async def run(self) -> None:
        """Return ejected endpoints on time and review the multipliers every `interval`, for as long
        as the cluster keeps this policy."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._return_on_time)
            await self._review_every_interval()

    async def _return_on_time(self) -> None:
        """Sleep until the next endpoint is due back (`eject` moves the wake-up earlier), return it."""
        try:
            while True:
                with trio.CancelScope(deadline=self.next_return()) as self._timer:
                    await trio.sleep_forever()
                self.return_due(trio.current_time())
        finally:
            self._timer = None

    async def _review_every_interval(self) -> None:
        interval = self.policy.interval
        while True:
            await trio.sleep(interval)
            self.review(trio.current_time())

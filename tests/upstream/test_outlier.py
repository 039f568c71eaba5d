"""sidecar.upstream.outlier: consecutive 5xx / gateway-error ejection, its timing, the max percent cap,
and the return of ejected endpoints exactly when their time is up (trio's MockClock: time only moves
when the test sleeps)."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

from sidecar.config.schema import OutlierDetection
from sidecar.http.errors import NoHealthyUpstream
from sidecar.upstream.endpoint import Endpoint
from sidecar.upstream.outlier import MAX_EJECTION
from sidecar.upstream.registry import Cluster

from .clusters import make_cluster, make_settings

POLICY = OutlierDetection(
    consecutive_5xx=5, consecutive_gateway_errors=3, interval=1.0, base_ejection=10.0, max_ejection_percent=50
)


def fail(cluster: Cluster, endpoint: Endpoint, times: int, status: int | None = 500) -> None:
    for _ in range(times):
        cluster.record(endpoint, status)


def picked(cluster: Cluster, count: int = 60) -> Counter[str]:
    return Counter(cluster.pick().address for _ in range(count))


@pytest.fixture
def cluster() -> Cluster:
    return make_cluster(4, outlier_detection=POLICY)


async def start(cluster: Cluster, nursery: trio.Nursery) -> None:
    """Run the cluster's policy tasks (the review every interval) in the test's nursery."""
    cluster.set_background(nursery)
    await trio.sleep(0)


# --------------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------------


async def test_consecutive_5xx_eject_at_the_threshold(cluster: Cluster) -> None:
    a = cluster.endpoints[0]
    fail(cluster, a, 4)
    assert not a.ejected and a.consecutive_5xx == 4
    fail(cluster, a, 1)
    assert a.ejected and a.times_ejected == 1 and cluster.ejections == 1
    assert (a.consecutive_5xx, a.consecutive_gateway_errors) == (0, 0)  # runs start again
    assert not a.available
    assert "10.0.0.1:80" not in picked(cluster)
    assert cluster.available_count == 3


async def test_a_success_ends_the_run(cluster: Cluster) -> None:
    a = cluster.endpoints[0]
    for status in (500, 500, 500, 500, 200, 500, 500, 500, 500, 404, 500, 500, 500, 500, 101):
        cluster.record(a, status)
    assert not a.ejected
    assert (a.consecutive_5xx, a.consecutive_gateway_errors) == (0, 0)


async def test_gateway_errors_and_tries_without_response(cluster: Cluster) -> None:
    a, b, c = cluster.endpoints[:3]
    for status in (502, 503, 504):  # three gateway errors: the lower threshold
        cluster.record(a, status)
    assert a.ejected
    fail(cluster, b, 3, None)  # connect failures, resets, timeouts count as gateway errors too
    assert b.ejected
    cluster.record(c, 502)
    cluster.record(c, None)
    cluster.record(c, 500)  # a 5xx that is not a gateway error ends the gateway run, not the 5xx run
    cluster.record(c, 503)
    assert (c.consecutive_5xx, c.consecutive_gateway_errors) == (4, 1)
    assert not c.ejected


async def test_replies_of_the_peer_sidecar_count_like_any_other(cluster: Cluster) -> None:
    a = cluster.endpoints[0]
    fail(cluster, a, 3, 503)  # e.g. the peer's own 503 no_healthy_upstream or overflow
    assert a.ejected


async def test_answers_of_an_ejected_endpoint_are_not_counted(cluster: Cluster) -> None:
    a = cluster.endpoints[0]
    fail(cluster, a, 5)
    fail(cluster, a, 20)  # requests that were in flight when it was ejected
    assert (a.times_ejected, a.consecutive_5xx, cluster.ejections) == (1, 0, 1)


async def test_without_outlier_detection_record_does_nothing() -> None:
    cluster = make_cluster(2)  # the local app: no outlier detection
    fail(cluster, cluster.endpoints[0], 100, None)
    assert not cluster.endpoints[0].ejected
    assert cluster.endpoints[0].consecutive_5xx == 0


# --------------------------------------------------------------------------------------------------
# Timing: base x times ejected, the cap, the return exactly when the time is up
# --------------------------------------------------------------------------------------------------

# A review every 10 s, ejections of 3 s: the interval must not delay a return.
ON_TIME = OutlierDetection(consecutive_5xx=1, interval=10.0, base_ejection=3.0, max_ejection_percent=50)
JUST = 1e-6  # seconds: a hair before / after a deadline


async def returns_on_time(endpoint: Endpoint) -> None:
    """Sleep past `endpoint`'s ejection: still ejected a hair before its time, back a hair after."""
    await trio.sleep_until(endpoint.ejected_until - JUST)
    assert endpoint.ejected
    await trio.sleep(2 * JUST)
    assert not endpoint.ejected and endpoint.returned_at == endpoint.ejected_until


async def test_an_ejection_ends_exactly_when_its_time_is_up_not_at_a_review(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cluster = make_cluster(4, outlier_detection=ON_TIME)
    await start(cluster, nursery)
    a = cluster.endpoints[0]
    await trio.sleep(0.5)
    fail(cluster, a, 1)
    assert a.ejected_until == pytest.approx(3.5)
    await trio.sleep_until(a.ejected_until - JUST)
    assert a.ejected and "10.0.0.1:80" not in picked(cluster)
    await trio.sleep(2 * JUST)  # t = 3.5: back at its time, long before the review at 10
    assert not a.ejected and a.available
    assert a.returned_at == a.ejected_until
    assert "10.0.0.1:80" in picked(cluster)

    await trio.sleep_until(4.2)
    fail(cluster, a, 1)  # the second ejection: twice as long
    assert a.times_ejected == 2
    assert a.ejected_until - trio.current_time() == pytest.approx(6.0)
    await returns_on_time(a)  # at t = 10.2: the review at 10 did not return it
    assert a.returned_at == pytest.approx(10.2)


async def test_ejection_time_is_capped_at_300s_and_ends_on_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    policy = OutlierDetection(consecutive_5xx=1, base_ejection=120.0, max_ejection_percent=100)
    cluster = make_cluster(2, outlier_detection=policy)
    await start(cluster, nursery)
    a = cluster.endpoints[0]
    a.times_ejected = 2  # the third ejection would last 360 s
    await trio.sleep(0.5)  # off the reviews' beat (every 10 s)
    fail(cluster, a, 1)
    assert a.ejected_until - trio.current_time() == MAX_EJECTION == 300.0
    await returns_on_time(a)  # t = 300.5, not the review at 310


async def test_a_shorter_ejection_after_a_longer_one_ends_on_its_own_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cluster = make_cluster(4, outlier_detection=ON_TIME)
    await start(cluster, nursery)
    a, b = cluster.endpoints[:2]
    a.times_ejected = 3  # its next ejection lasts 12 s
    await trio.sleep(0.5)
    fail(cluster, a, 1)
    await trio.sleep(0.5)
    fail(cluster, b, 1)  # ejected while the return task sleeps until a's later time
    assert (a.ejected_until, b.ejected_until) == (pytest.approx(12.5), pytest.approx(4.0))
    await trio.sleep_until(b.ejected_until + JUST)
    assert not b.ejected and b.returned_at == b.ejected_until
    assert a.ejected
    await returns_on_time(a)


async def test_endpoints_due_at_the_same_time_return_together(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cluster = make_cluster(4, outlier_detection=ON_TIME)
    await start(cluster, nursery)
    a, b = cluster.endpoints[:2]
    fail(cluster, a, 1)
    fail(cluster, b, 1)
    assert cluster.available_count == 2
    await trio.sleep(3 + JUST)
    assert not a.ejected and not b.ejected and cluster.available_count == 4


async def test_the_multiplier_decays_once_the_endpoint_has_recovered(
    cluster: Cluster, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start(cluster, nursery)
    a = cluster.endpoints[0]
    fail(cluster, a, 5)
    await trio.sleep(11)
    fail(cluster, a, 5)
    assert a.times_ejected == 2
    await trio.sleep(21)  # back in service
    assert not a.ejected and a.times_ejected == 2
    await trio.sleep(10)  # base_ejection in service: one less
    assert a.times_ejected == 1
    await trio.sleep(10)
    assert a.times_ejected == 0
    fail(cluster, a, 5)
    assert a.ejected_until - trio.current_time() == pytest.approx(10.0)


# --------------------------------------------------------------------------------------------------
# max_ejection_percent: a hard cap, counting the endpoint about to be ejected
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "percent", "ejectable"),
    [
        (4, 50, 2),
        (3, 50, 1),  # 2 of 3 would be 67 %
        (2, 50, 1),
        (1, 50, 0),  # a single endpoint is never ejected below 100 % (no panic mode to fall back on)
        (1, 99, 0),
        (1, 100, 1),
        (10, 10, 1),
        (9, 10, 0),  # Envoy's hard cap: one of nine is 11 %
        (5, 0, 0),  # never eject
        (5, 100, 5),
    ],
)
async def test_max_ejection_percent(endpoints: int, percent: int, ejectable: int) -> None:
    policy = OutlierDetection(consecutive_5xx=2, max_ejection_percent=percent)
    cluster = make_cluster(endpoints, outlier_detection=policy)
    for endpoint in cluster.endpoints:
        fail(cluster, endpoint, 2)
    assert sum(e.ejected for e in cluster.endpoints) == ejectable
    assert cluster.ejections == ejectable


async def test_an_endpoint_kept_in_by_the_cap_is_ejected_when_there_is_room(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cluster = make_cluster(2, outlier_detection=POLICY)
    await start(cluster, nursery)
    a, b = cluster.endpoints
    fail(cluster, a, 5)
    fail(cluster, b, 7)
    assert a.ejected and not b.ejected
    assert b.consecutive_5xx == 7  # still counting
    assert picked(cluster) == {"10.0.0.2:80": 60}  # the cap keeps it serving
    await trio.sleep(11)
    assert not a.ejected
    fail(cluster, b, 1)
    assert b.ejected


async def test_every_endpoint_ejected_gives_no_healthy_upstream_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = OutlierDetection(consecutive_5xx=1, max_ejection_percent=100)
    cluster = make_cluster(2, outlier_detection=policy)
    for endpoint in cluster.endpoints:
        fail(cluster, endpoint, 1)
    started = trio.current_time()
    with pytest.raises(NoHealthyUpstream, match="no healthy upstream endpoint"):
        cluster.pick()
    assert trio.current_time() == started


# --------------------------------------------------------------------------------------------------
# State across reloads
# --------------------------------------------------------------------------------------------------


async def test_ejection_state_survives_a_reload_for_endpoints_that_stay(
    cluster: Cluster, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    await start(cluster, nursery)
    a, b = cluster.endpoints[:2]
    fail(cluster, a, 5)
    fail(cluster, b, 2)
    reloaded = make_settings(5, outlier_detection=POLICY, load_balancer="least_request")
    cluster.configure(reloaded)
    assert cluster.endpoints[0] is a and a.ejected and a.times_ejected == 1
    assert cluster.endpoints[1] is b and b.consecutive_5xx == 2
    assert not cluster.endpoints[4].ejected
    assert "10.0.0.1:80" not in picked(cluster, 200)
    await trio.sleep(11)  # the review task kept running across the reload
    assert not a.ejected


async def test_ejections_end_on_time_across_a_policy_reload(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cluster = make_cluster(4, outlier_detection=ON_TIME)
    await start(cluster, nursery)
    a, b, c = cluster.endpoints[:3]
    await trio.sleep(0.5)
    fail(cluster, a, 1)  # due back at 3.5
    await trio.sleep(0.5)
    reloaded = OutlierDetection(consecutive_5xx=1, interval=20.0, base_ejection=5.0, max_ejection_percent=75)
    cluster.configure(make_settings(4, outlier_detection=reloaded))
    fail(cluster, b, 1)  # before the new policy's task has started: 5 s, due back at 6
    assert b.ejected_until == pytest.approx(6.0)
    await trio.testing.wait_all_tasks_blocked()
    assert len(nursery.child_tasks) == 1  # the old policy's tasks are gone
    await returns_on_time(a)  # the ejection made under the old policy keeps its time
    await trio.sleep_until(b.ejected_until + JUST)
    assert not b.ejected and b.returned_at == b.ejected_until
    await trio.sleep_until(7.0)
    fail(cluster, c, 1)  # under the new policy, with its task running
    await trio.sleep_until(12.0 - JUST)
    assert c.ejected
    await trio.sleep(2 * JUST)  # not at the review at 20
    assert not c.ejected and c.returned_at == pytest.approx(12.0)


async def test_a_changed_policy_applies_to_the_next_failures(cluster: Cluster, nursery: trio.Nursery) -> None:
    await start(cluster, nursery)
    a = cluster.endpoints[0]
    fail(cluster, a, 2)
    cluster.configure(make_settings(4, outlier_detection=OutlierDetection(consecutive_5xx=3)))
    fail(cluster, a, 1)
    assert a.ejected


async def test_a_removed_cluster_stops_its_reviews(cluster: Cluster, nursery: trio.Nursery) -> None:
    await start(cluster, nursery)
    assert len(nursery.child_tasks) == 1
    cluster.retire()
    await trio.sleep(0.01)
    assert len(nursery.child_tasks) == 0
    with pytest.raises(NoHealthyUpstream, match="no healthy upstream endpoint"):
        cluster.pick()

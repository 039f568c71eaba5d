"""sidecar.upstream.call under MockClock: how the request timeout, the per-try timeout, retries,
backoff and outlier records compose. Each endpoint's exchange is scripted (answer, fail or hang),
so what is tested is the call layer alone; tests/e2e/test_resilience.py does the same over sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from sidecar.config.schema import Backoff, OutlierDetection, Retries
from sidecar.http.errors import UpstreamConnectFailure, UpstreamReset, UpstreamTimeout
from sidecar.http.message import Headers, Request, Response
from sidecar.upstream import call
from sidecar.upstream.endpoint import Endpoint
from sidecar.upstream.pool import ConnectionPool
from sidecar.upstream.registry import Cluster
from sidecar.upstream.retry import RetryPolicy, TryTimedOut

from .clusters import make_cluster, request

HANG = "hang"
Script = list[int | str | Exception]  # per try of one endpoint: a status to answer, HANG, or an error


class Exchanges:
    """Stands in for `call._exchange`: each endpoint plays its script, one entry per try (the last
    entry repeats), and every try is logged as (endpoint host, attempt header, start time)."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        self.scripts = scripts
        self.tries: list[tuple[str, str, float]] = []

    async def __call__(self, cluster: Cluster, endpoint: Endpoint, req: Request) -> Response:
        host = endpoint.address.split(":")[0]
        attempt = (req.headers.get(b"x-sidecar-attempt") or b"1").decode()
        self.tries.append((host, attempt, trio.current_time()))
        script = self.scripts[host]
        step = script.pop(0) if len(script) > 1 else script[0]
        if step == HANG:
            await trio.sleep_forever()
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, int)
        return Response(step, Headers())


@pytest.fixture
def exchanges(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Script]], Exchanges]:
    def install(scripts: dict[str, Script]) -> Exchanges:
        fake = Exchanges(scripts)
        monkeypatch.setattr(call, "_exchange", fake)
        return fake

    return install


def cluster(count: int = 2, attempts: int = 2, per_try: float | None = None, **retries: Any) -> Cluster:
    retries.setdefault("backoff", Backoff(base=0.1, max=0.1))
    retries.setdefault("on", ["connect-failure", "refused-stream", "reset", "gateway-error"])
    policy = RetryPolicy.from_config(Retries(attempts=attempts, **retries)) if attempts else None
    outlier = OutlierDetection(consecutive_5xx=2, consecutive_gateway_errors=2)
    return make_cluster(count, retry=policy, per_try_timeout=per_try, outlier_detection=outlier)


async def test_a_per_try_timeout_moves_on_to_the_other_endpoint(
    exchanges: Callable[[dict[str, Script]], Exchanges], autojump_clock: trio.testing.MockClock
) -> None:
    fake = exchanges({"10.0.0.1": [HANG], "10.0.0.2": [200]})
    response = await call.call_cluster(cluster(per_try=0.5), request(), timeout=10)
    assert response.status == 200
    (first, _, started), (second, attempt, retried) = fake.tries
    assert (first, second, attempt) == ("10.0.0.1", "10.0.0.2", "2")
    assert 0.5 <= retried - started <= 0.6  # the per-try timeout, then a backoff of at most 100 ms


@pytest.mark.parametrize("conditions", [["gateway-error"], ["5xx"]])  # a 504 of our own is a 5xx too
async def test_the_request_timeout_ends_a_try_and_is_not_retried(
    exchanges: Callable[[dict[str, Script]], Exchanges], autojump_clock: trio.testing.MockClock, conditions: list[str]
) -> None:
    fake = exchanges({"10.0.0.1": [HANG], "10.0.0.2": [HANG]})
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout):
        await call.call_cluster(cluster(per_try=5, on=conditions), request(), timeout=2)
    assert trio.current_time() - started == pytest.approx(2)
    assert len(fake.tries) == 1  # a per-try timeout beyond the request's never fires


async def test_the_request_timeout_bounds_all_tries_and_backoffs_together(
    exchanges: Callable[[dict[str, Script]], Exchanges], autojump_clock: trio.testing.MockClock
) -> None:
    fake = exchanges({"10.0.0.1": [HANG], "10.0.0.2": [HANG]})
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout):
        await call.call_cluster(cluster(attempts=10, per_try=0.3, budget={"min_per_second": 100}), request(), 1)
    assert trio.current_time() - started == pytest.approx(1)
    assert 2 <= len(fake.tries) <= 4  # 300 ms each plus backoff, cut at 1 s


async def test_a_backoff_that_outlasts_the_request_timeout_ends_at_the_deadline(
    exchanges: Callable[[dict[str, Script]], Exchanges],
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = exchanges({"10.0.0.1": [503], "10.0.0.2": [503]})
    monkeypatch.setattr(RetryPolicy, "backoff", lambda self, retry: 30.0)
    started = trio.current_time()
    with pytest.raises(UpstreamTimeout):
        await call.call_cluster(cluster(), request(), timeout=1)
    assert trio.current_time() - started == pytest.approx(1)
    assert len(fake.tries) == 1


async def test_a_per_try_timeout_on_the_last_try_is_the_answer(
    exchanges: Callable[[dict[str, Script]], Exchanges], autojump_clock: trio.testing.MockClock
) -> None:
    fake = exchanges({"10.0.0.1": [HANG], "10.0.0.2": [HANG]})
    with pytest.raises(TryTimedOut):
        await call.call_cluster(cluster(attempts=1, per_try=0.2), request(), timeout=10)
    assert [attempt for _, attempt, _ in fake.tries] == ["1", "2"]


@pytest.mark.parametrize(("per_try", "error", "took"), [(0.2, TryTimedOut, 0.2), (None, UpstreamTimeout, 3)])
async def test_without_a_retry_policy_the_one_try_has_the_earlier_timeout(
    exchanges: Callable[[dict[str, Script]], Exchanges],
    autojump_clock: trio.testing.MockClock,
    per_try: float | None,
    error: type[Exception],
    took: float,
) -> None:
    fake = exchanges({"10.0.0.1": [HANG], "10.0.0.2": [HANG]})
    with pytest.raises(error):
        await call.call_cluster(cluster(attempts=0, per_try=per_try), request(), timeout=3)
    assert len(fake.tries) == 1
    assert trio.current_time() - fake.tries[0][2] == pytest.approx(took)


async def test_timeouts_and_failures_count_for_outlier_detection_but_a_caller_leaving_does_not(
    exchanges: Callable[[dict[str, Script]], Exchanges], autojump_clock: trio.testing.MockClock
) -> None:
    exchanges({"10.0.0.1": [UpstreamConnectFailure(), HANG, HANG], "10.0.0.2": [HANG]})
    single = cluster(count=2, attempts=0, per_try=0.5, load_balancer="round_robin")
    first = single.endpoints[0]
    with pytest.raises(UpstreamConnectFailure):
        await call.call_cluster(single, request(), timeout=10)
    assert first.consecutive_gateway_errors == 1
    with trio.move_on_after(0.1):  # the caller goes away before any timeout: not the endpoint's fault
        await call.call_cluster(single, request(), timeout=10)
    await trio.testing.wait_all_tasks_blocked()
    assert [e.consecutive_gateway_errors for e in single.endpoints] == [1, 0]
    with pytest.raises(TryTimedOut):
        await call.call_cluster(single, request(), timeout=10)
    assert first.ejected and first.times_ejected == 1


async def test_a_reset_post_is_not_retried_but_a_refused_one_is(
    exchanges: Callable[[dict[str, Script]], Exchanges], autojump_clock: trio.testing.MockClock
) -> None:
    fake = exchanges({"10.0.0.1": [UpstreamReset()], "10.0.0.2": [200]})
    post = request()
    post.method = b"POST"
    with pytest.raises(UpstreamReset):
        await call.call_cluster(cluster(), post, timeout=10)
    assert len(fake.tries) == 1
    fake = exchanges({"10.0.0.1": [UpstreamReset(refused=True)], "10.0.0.2": [200]})
    post.headers = Headers()
    assert (await call.call_cluster(cluster(), post, timeout=10)).status == 200
    assert [host for host, _, _ in fake.tries] == ["10.0.0.1", "10.0.0.2"]


async def test_an_endpoint_that_failed_to_connect_is_passed_over_for_a_moment(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    refusing = cluster(attempts=0)
    dead, alive = refusing.endpoints

    async def refuse(pool: ConnectionPool) -> Any:
        raise UpstreamConnectFailure(detail="refused")

    monkeypatch.setattr(ConnectionPool, "connect", refuse)
    with pytest.raises(UpstreamConnectFailure):
        await call._connect(refusing, dead)
    assert {refusing.pick(request()) for _ in range(10)} == {alive}  # round robin would alternate
    await trio.sleep(call.CONNECT_FAILURE_PAUSE)
    assert {refusing.pick(request()) for _ in range(10)} == {dead, alive}
    dead.refused_until = trio.current_time() + 5
    alive.ejected = True  # the only one left is picked even so: passing over is no ejection
    refusing.availability_changed()
    assert refusing.pick(request()) is dead


@pytest.mark.parametrize("balancer", ["round_robin", "least_request", "random"])
async def test_a_retry_avoids_both_the_failed_endpoint_and_a_paused_one(
    balancer: str, autojump_clock: trio.testing.MockClock
) -> None:
    three = make_cluster(3, load_balancer=balancer)
    paused, failed, other = three.endpoints
    paused.refused_until = trio.current_time() + 1
    assert {three.pick(request(), avoid=failed) for _ in range(300)} == {other}
    other.refused_until = trio.current_time() + 1  # all but the failed one paused: a paused one, not `avoid`
    assert failed not in {three.pick(request(), avoid=failed) for _ in range(300)}

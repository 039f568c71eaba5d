"""Timeouts, retries and circuit breakers end to end: a sidecar in front of real origins that fail on
purpose (refuse connections, fail the first N requests, hang, reset mid-body), asserting what the
caller saw (status, reason), what each origin saw (tries, x-sidecar-attempt, bodies), and that the
healthy replica kept serving."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import trio

from .apps import RawOrigin, Receive, Scope, Send, echo_app, read_body
from .conftest import Mesh, free_port, mesh_service, service


class FlakyOrigin:
    """Answers `status` to the first `failures` requests, then "ok"; /hang (every path, with
    `hang=True`) never answers. Records each request's method, x-sidecar-attempt and body."""

    def __init__(self, failures: int = 0, status: int = 503, hang: bool = False) -> None:
        self.failures = failures
        self.status = status
        self.hang = hang
        self.seen: list[tuple[str, str | None, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await echo_app(scope, receive, send)
            return
        body = await read_body(receive)
        headers = dict(scope["headers"])
        attempt = headers.get(b"x-sidecar-attempt")
        self.seen.append((scope["method"], attempt.decode() if attempt else None, body))
        if scope["path"] == "/hang" or self.hang:
            await trio.sleep_forever()
        if len(self.seen) <= self.failures:
            await send({"type": "http.response.start", "status": self.status, "headers": [(b"x-origin", b"flaky")]})
            await send({"type": "http.response.body", "body": b"failing"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def client_for(sc: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}, timeout=20)


async def expect_cut_short(sc: Any, length: int) -> None:
    """GET /x through `sc`: a 200 whose body (announced as `length` bytes) stops short, cut after the
    300 ms stream idle timeout, well before the test's own deadline."""
    async with await client_for(sc) as client:
        started = trio.current_time()
        with trio.fail_after(5):
            try:
                async with client.stream("GET", "/x") as r:
                    assert r.status_code == 200
                    received: bytes | None = b"".join([chunk async for chunk in r.aiter_raw()])
            except httpx.HTTPError:
                received = None
        took = trio.current_time() - started
    assert received is None or len(received) < length  # cut short, not completed
    assert 0.25 < took < 2


async def test_get_is_retried_on_503_until_it_succeeds(mesh: Mesh) -> None:
    origin = FlakyOrigin(failures=2)
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(origin))])
    async with await client_for(sc) as client:
        r = await client.get("/x")
    assert r.status_code == 200 and r.text == "ok"
    assert [attempt for _, attempt, _ in origin.seen] == ["1", "2", "3"]


async def test_when_retries_run_out_the_caller_gets_the_upstreams_last_answer(mesh: Mesh) -> None:
    origin = FlakyOrigin(failures=10)
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(origin), retries={"attempts": 2})])
    async with await client_for(sc) as client:
        r = await client.get("/x")
    assert r.status_code == 503 and r.text == "failing" and r.headers["x-origin"] == "flaky"
    assert "x-sidecar-reason" not in r.headers  # the origin's answer, not one the sidecar made
    assert len(origin.seen) == 3


async def test_post_is_not_retried_on_503_unless_the_policy_allows_and_then_its_body_is_replayed(mesh: Mesh) -> None:
    plain = FlakyOrigin(failures=1)
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(plain))])
    payload = bytes(range(256)) * 64  # 16 KiB, under the 64 KiB replay buffer
    async with await client_for(sc) as client:
        r = await client.post("/x", content=payload)
    assert r.status_code == 503 and len(plain.seen) == 1  # POST: the app may have acted on it

    allowed = FlakyOrigin(failures=1)
    origin = await mesh.origin(allowed)
    sc = await mesh.sidecar(services=[service("orders", origin, retries={"non_idempotent": True, "on": ["5xx"]})])
    async with await client_for(sc) as client:
        r = await client.post("/x", content=payload)
    assert r.status_code == 200
    assert [(m, a, b == payload) for m, a, b in allowed.seen] == [("POST", "1", True), ("POST", "2", True)]


async def test_a_body_over_the_replay_buffer_is_not_retried(mesh: Mesh) -> None:
    origin = FlakyOrigin(failures=1)
    retries = {"non_idempotent": True, "on": ["5xx"], "buffer": "1KiB"}
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(origin), retries=retries)])
    async with await client_for(sc) as client:
        r = await client.post("/x", content=b"z" * 10_000)
    assert r.status_code == 503 and len(origin.seen) == 1


async def test_connect_failure_is_retried_on_the_other_replica_for_any_method(mesh: Mesh) -> None:
    """`connect-failure` retries any method, because the app never saw the request; no byte of it was
    sent, so a body larger than `retries.buffer` is retried too."""
    healthy = FlakyOrigin()
    dead = free_port()  # nothing listens there
    retries = {"budget": {"min_per_second": 10}, "buffer": "1KiB"}  # every other request retries: room for all
    sc = await mesh.sidecar(
        services=[service("orders", dead, await mesh.origin(healthy), load_balancer="round_robin", retries=retries)]
    )
    order = bytes(range(256)) * 800  # 200 KiB, far over the replay buffer
    async with await client_for(sc) as client:
        for _ in range(6):
            r = await client.post("/x", content=order)
            assert r.status_code == 200
    assert len(healthy.seen) == 6 and all(body == order for _, _, body in healthy.seen)
    # the first request met the dead one and was retried on the healthy one; from then on picks pass the
    # dead one over (its connect failed within the last second) and go straight through
    assert [a for _, a, _ in healthy.seen] == ["2"] + ["1"] * 5


async def test_per_try_timeout_moves_on_to_the_healthy_replica(mesh: Mesh) -> None:
    hanging = FlakyOrigin(hang=True)
    healthy = FlakyOrigin()
    ports = [await mesh.origin(hanging), await mesh.origin(healthy)]
    timeouts = {"per_try": "200ms", "request": "5s"}
    retries = {"budget": {"min_per_second": 10}}  # four retries may fall within one second
    sc = await mesh.sidecar(
        services=[service("orders", *ports, load_balancer="round_robin", timeouts=timeouts, retries=retries)],
    )
    async with await client_for(sc) as client:
        for _ in range(4):
            with trio.fail_after(3):
                r = await client.get("/x")
            assert r.status_code == 200
    assert len(healthy.seen) == 4
    assert [a for _, a, _ in hanging.seen] == ["1"] * 4  # each met it first and moved on in 200 ms


async def test_the_request_timeout_bounds_all_tries_together(mesh: Mesh) -> None:
    origin = FlakyOrigin()
    timeouts = {"per_try": "300ms", "request": "1s"}
    sc = await mesh.sidecar(
        services=[service("orders", await mesh.origin(origin), timeouts=timeouts, retries={"attempts": 5})]
    )
    async with await client_for(sc) as client:
        started = trio.current_time()
        r = await client.get("/hang")
        took = trio.current_time() - started
    assert r.status_code == 504 and r.headers["x-sidecar-reason"] == "upstream_timeout"
    assert 0.9 < took < 1.6  # not 6 x 300 ms
    assert 2 <= len(origin.seen) <= 4


async def test_a_per_try_timeout_on_the_last_try_is_504(mesh: Mesh) -> None:
    origin = FlakyOrigin()
    timeouts = {"per_try": "150ms"}
    sc = await mesh.sidecar(
        services=[service("orders", await mesh.origin(origin), timeouts=timeouts, retries={"attempts": 1})]
    )
    async with await client_for(sc) as client:
        r = await client.get("/hang")
    assert r.status_code == 504 and r.headers["x-sidecar-reason"] == "upstream_timeout"
    assert [a for _, a, _ in origin.seen] == ["1", "2"]


async def test_no_retry_once_the_response_has_started(mesh: Mesh, nursery: trio.Nursery) -> None:
    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        return False  # and close: the body is cut short

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    sc = await mesh.sidecar(services=[service("orders", port)])
    async with await client_for(sc) as client:
        try:
            r = await client.get("/x")
            failed = False
            body = r.content
        except httpx.HTTPError:
            failed = True
            body = b""
    assert failed or len(body) < 100  # the caller sees the cut, not a second answer glued on
    assert len(origin.heads) == 1


async def test_max_requests_answers_overflow_at_once(mesh: Mesh) -> None:
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(), circuit_breaker={"max_requests": 2})])
    results: list[httpx.Response] = []
    async with await client_for(sc) as client:

        async def one(path: str) -> None:
            results.append(await client.get(path))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "/slow/600")
            nursery.start_soon(one, "/slow/600")
            await trio.sleep(0.2)
            started = trio.current_time()
            r = await client.get("/info")
            assert trio.current_time() - started < 0.3  # at once, not queued behind the two
            assert r.status_code == 503 and r.headers["x-sidecar-reason"] == "overflow"
            assert r.headers["x-sidecar-overloaded"] == "true"
        assert [x.status_code for x in results] == [200, 200]
        assert (await client.get("/info")).status_code == 200  # free again


async def test_max_connections_overflows_only_when_no_open_connection_can_take_the_request(
    mesh: Mesh, hop: str
) -> None:
    """A full `max_connections` answers 503 `overflow` when no open connection can take the request: over
    HTTP/1.1 the one connection is busy; an HTTP/2 connection takes it as one more stream."""
    origin = FlakyOrigin()
    b = await mesh.sidecar(service="orders", inbound_app=await mesh.origin(origin))
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol=hop, circuit_breaker={"max_connections": 1})])
    async with await client_for(a) as holder, await client_for(a) as client, trio.open_nursery() as nursery:
        nursery.start_soon(holder.get, "/hang")
        with trio.fail_after(5):
            while not origin.seen:
                await trio.sleep(0.01)
        r = await client.get("/x")
        if hop == "auto":
            assert (r.status_code, r.text) == (200, "ok")
        else:
            assert (r.status_code, r.headers["x-sidecar-reason"]) == (503, "overflow")
        nursery.cancel_scope.cancel()


async def test_max_retries_zero_means_no_retry(mesh: Mesh) -> None:
    origin = FlakyOrigin(failures=1)
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(origin), circuit_breaker={"max_retries": 0})])
    async with await client_for(sc) as client:
        r = await client.get("/x")
    assert r.status_code == 503 and len(origin.seen) == 1


async def test_the_retry_budget_stops_a_retry_storm(mesh: Mesh) -> None:
    origin = FlakyOrigin(failures=1000)  # a sick service: everything fails
    retries = {"attempts": 3, "budget": {"percent": 20, "min_per_second": 3}}
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(origin), retries=retries)])
    async with await client_for(sc) as client:
        with trio.fail_after(5):
            statuses = [(await client.get("/x")).status_code for _ in range(10)]
    assert statuses == [503] * 10
    # 10 requests one at a time: 20 % of one request in flight is no retry, so only the floor of 3
    # retries a second applies (the run takes well under two seconds): at most 3 or 6, not 30.
    assert 10 + 3 <= len(origin.seen) <= 10 + 6


async def test_an_origin_process_killed_mid_test_costs_the_callers_nothing(mesh: Mesh, tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    # hypercorn's CLI serves from a worker process it spawns: the whole process group is the origin,
    # and the whole group is killed (killing the parent alone would leave the worker serving).
    doomed = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "-k", "trio", "--bind", f"127.0.0.1:{port}", "tests.e2e.apps:echo_app"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def kill_origin() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(doomed.pid, signal.SIGKILL)

    try:
        survivor = await mesh.origin()
        sc = await mesh.sidecar(services=[service("orders", port, survivor, load_balancer="round_robin")])
        statuses: list[int] = []
        async with await client_for(sc) as client:
            with trio.fail_after(15):
                while True:  # until the doomed origin answers
                    try:
                        async with httpx.AsyncClient() as probe:
                            if (await probe.get(f"http://127.0.0.1:{port}/info")).status_code == 200:
                                break
                    except httpx.HTTPError:
                        await trio.sleep(0.1)

            async def load() -> None:
                for _ in range(60):
                    statuses.append((await client.get("/slow/20")).status_code)

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(load)
                await trio.sleep(0.3)
                kill_origin()  # mid-test, with requests in flight on it
    finally:
        kill_origin()
        doomed.wait()
    assert statuses == [200] * 240  # GETs in flight on the dead one were retried on the survivor


async def test_a_response_body_that_stalls_is_cut_after_the_idle_timeout(mesh: Mesh, nursery: trio.Nursery) -> None:
    closed = trio.Event()

    async def respond(stream: trio.SocketStream, head: bytes, origin: RawOrigin) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nthe first part")
        await stream.receive_some(1)  # then nothing: waits for the sidecar to give up and close
        closed.set()
        return False

    origin = RawOrigin(respond)
    port = await nursery.start(origin.serve)
    sc = await mesh.sidecar(services=[service("orders", port, timeouts={"idle": "300ms"})])
    await expect_cut_short(sc, length=1000)
    with trio.fail_after(2):
        await closed.wait()  # and the upstream connection was closed, not kept


async def test_a_stalled_http2_response_body_is_cut_and_its_stream_reset(mesh: Mesh) -> None:
    reset = trio.Event()

    async def stalling(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await echo_app(scope, receive, send)  # lifespan
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
        await send({"type": "http.response.body", "body": b"the first part", "more_body": True})
        while (await receive())["type"] != "http.disconnect":  # then nothing, until the stream is reset
            pass
        reset.set()

    origin = await mesh.origin(stalling)  # hypercorn, h2c with prior knowledge
    sc = await mesh.sidecar(services=[service("orders", origin, protocol="http2", timeouts={"idle": "300ms"})])
    await expect_cut_short(sc, length=1000)
    with trio.fail_after(2):
        await reset.wait()  # the origin's stream was reset, not left open


async def test_retries_across_two_sidecars(mesh: Mesh, hop: str) -> None:
    """`x-sidecar-attempt` is set by the outbound side on every try and passed through unchanged by the
    inbound side; a retried POST's body is replayed; over either hop."""
    origin = FlakyOrigin(failures=2)
    b = await mesh.sidecar(service="orders", inbound_app=await mesh.origin(origin))
    retries = {"non_idempotent": True, "on": ["5xx"]}
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol=hop, retries=retries)])
    payload = bytes(range(256)) * 400
    async with await client_for(a) as client:
        r = await client.get("/x")
        assert r.status_code == 200
        assert [att for _, att, _ in origin.seen] == ["1", "2", "3"]  # B passed A's attempt header on
    pool = a.runtime.registry.clusters["orders"].endpoints[0].pool
    if hop == "auto":
        assert len(pool.h2_conns) == 1  # the tries shared the one HTTP/2 connection

    origin.seen.clear()
    origin.failures = 1
    async with await client_for(a) as client:
        r = await client.post("/x", content=payload[:60_000])  # under the 64 KiB replay buffer
    assert r.status_code == 200
    assert [(att, len(body)) for _, att, body in origin.seen] == [("1", 60_000), ("2", 60_000)]

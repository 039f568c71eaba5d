"""gRPC through two sidecars: grpcio client -> sidecar A (h2c outbound) -> mutual TLS (HTTP/2 chosen by
ALPN, or HTTP/1.1 with chunked trailers) -> sidecar B -> grpcio server (`app_protocol: h2c`).

All four call kinds, an error status with trailing metadata, a 4 MiB message, and the replies the
sidecar makes itself arriving as gRPC errors (UNIMPLEMENTED, UNAVAILABLE, DEADLINE_EXCEEDED,
PERMISSION_DENIED), sidecar B's across either hop."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
import trio

from .conftest import Mesh, free_port, mesh_service, service, spiffe_id
from .grpc_apps import SERVICE, Client, start_server


@pytest.fixture
def grpc_origin() -> Iterator[int]:
    server, port = start_server()
    yield port
    server.stop(grace=None)


@pytest.fixture(params=["auto", "http1"])
async def client(request: pytest.FixtureRequest, mesh: Mesh, grpc_origin: int) -> AsyncIterator[Client]:
    """A grpcio client whose calls cross both sidecars; the hop between them is HTTP/2 or HTTP/1.1."""
    b = await mesh.sidecar(service="orders", inbound_app=grpc_origin, inbound={"app_protocol": "h2c"})
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol=request.param)])
    grpc_client = Client(a.outbound, "orders")
    yield grpc_client
    grpc_client.close()


async def call(function: Any, *args: Any, **kwargs: Any) -> Any:
    """A blocking grpcio call, off the trio thread."""
    return await trio.to_thread.run_sync(lambda: function(*args, **kwargs))


async def test_unary_call_with_trailing_metadata(client: Client) -> None:
    response, rpc = await call(client.unary("Unary").with_call, b"hello", timeout=10)
    assert response == b"hello"
    assert rpc.code() == grpc.StatusCode.OK
    assert ("x-echo-trailer", "yes") in rpc.trailing_metadata()


async def test_server_streaming_call(client: Client) -> None:
    messages = await call(lambda: list(client.server_stream()(b"200:1024", timeout=10)))
    assert len(messages) == 200
    assert all(m == bytes([i % 256]) * 1024 for i, m in enumerate(messages))


async def test_client_streaming_call(client: Client) -> None:
    response = await call(client.client_stream(), iter([b"x" * 1000] * 300), timeout=10)
    assert response == b"300:300000"


async def test_bidirectional_streaming_call_answers_as_it_goes(client: Client) -> None:
    sent: list[bytes] = []

    def converse() -> list[bytes]:
        # Each request is produced only after the previous answer came back: the call is really
        # interactive through both sidecars, not buffered to the end of the request stream.
        replies: list[bytes] = []
        answered = threading.Semaphore(0)

        def requests() -> Iterator[bytes]:
            for i in range(50):
                if i and not answered.acquire(timeout=10):
                    return  # no answer to the previous message: end the stream, the assertion fails
                message = f"message {i}".encode()
                sent.append(message)
                yield message

        for reply in client.bidi()(requests(), timeout=20):
            replies.append(reply)
            answered.release()
        return replies

    replies = await trio.to_thread.run_sync(converse)
    assert replies == sent and len(replies) == 50


async def test_error_status_and_trailing_metadata_arrive_intact(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await call(client.unary("Fail"), b"order-7", timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such order"
    assert ("x-detail", "42") in error.trailing_metadata()


async def test_four_mib_message_both_ways(client: Client) -> None:
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    response = await call(client.unary("Unary"), payload, timeout=30)
    assert response == payload


async def test_many_concurrent_calls_share_the_hop(client: Client) -> None:
    results: list[bytes] = []

    async def one(i: int) -> None:
        results.append(await call(client.unary("Unary"), f"{i}".encode(), timeout=10))

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(one, i)
    assert sorted(results) == sorted(f"{i}".encode() for i in range(40))


# -- replies the sidecar makes itself, as gRPC errors ------------------------------------------------


async def rpc_error(port: int, authority: str) -> Any:
    """The error a unary call through the outbound listener at `port` fails with."""
    grpc_client = Client(port, authority)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            await call(grpc_client.unary("Unary"), b"x", timeout=10)
    finally:
        grpc_client.close()
    return caught.value


async def test_no_route_is_unimplemented(mesh: Mesh) -> None:
    a = await mesh.sidecar()
    error = await rpc_error(a.outbound, "nowhere")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "no service or route" in error.details()
    assert ("x-sidecar-reason", "no_route") in error.trailing_metadata()  # a trailers-only response


@pytest.mark.parametrize(
    ("inbound", "code", "reason"),
    [
        ({"allow": [spiffe_id("billing")]}, grpc.StatusCode.PERMISSION_DENIED, "unauthorized"),
        ({}, grpc.StatusCode.UNAVAILABLE, "upstream_connect_failure"),  # the app behind B is down
    ],
    ids=["caller_not_allowed", "app_down"],
)
async def test_replies_the_peer_sidecar_makes_are_grpc_errors(
    mesh: Mesh, hop: str, inbound: dict[str, Any], code: grpc.StatusCode, reason: str
) -> None:
    """Replies the sidecar makes itself carry `x-sidecar-reason`; a gRPC caller gets them as gRPC
    errors, those sidecar B makes included, across either hop."""
    b = await mesh.sidecar(service="orders", inbound_app=free_port(), inbound={"app_protocol": "h2c", **inbound})
    a = await mesh.sidecar(services=[mesh_service("orders", b, protocol=hop, retries={"attempts": 0})])
    error = await rpc_error(a.outbound, "orders")
    assert error.code() == code
    assert ("x-sidecar-reason", reason) in error.trailing_metadata()  # a trailers-only response


@pytest.mark.parametrize(
    ("address", "reason"),
    [("dead", "upstream_connect_failure"), ("name.invalid:9", "no_healthy_upstream")],
)
async def test_unreachable_upstreams_are_unavailable(mesh: Mesh, address: str, reason: str) -> None:
    endpoint = f"127.0.0.1:{free_port()}" if address == "dead" else address
    a = await mesh.sidecar(
        services=[{"name": "orders", "endpoints": [{"address": endpoint}], "tls": {"mode": "disabled"}}]
    )
    error = await rpc_error(a.outbound, "orders")
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert ("x-sidecar-reason", reason) in error.trailing_metadata()  # a trailers-only response


async def test_grpc_timeout_caps_the_request_timeout(mesh: Mesh, grpc_origin: int) -> None:
    # The service allows 15 s; the caller's grpc-timeout of 300 ms wins, and the sidecar answers a
    # gRPC DEADLINE_EXCEEDED itself (a raw HTTP/2 client, so no client-side deadline interferes).
    a = await mesh.sidecar(services=[service("orders", grpc_origin, protocol="http2")])
    body = b"\x00" + (4).to_bytes(4, "big") + b"2000"  # one gRPC message: Slow sleeps 2000 ms
    headers = {"host": "orders", "content-type": "application/grpc", "te": "trailers", "grpc-timeout": "300m"}
    async with httpx.AsyncClient(http1=False, http2=True, base_url=a.outbound_url, timeout=10) as http:
        started = trio.current_time()
        r = await http.post(f"/{SERVICE}/Slow", content=body, headers=headers)
        took = trio.current_time() - started
    assert r.status_code == 200 and r.headers["content-type"] == "application/grpc"
    assert r.headers["grpc-status"] == "4"  # DEADLINE_EXCEEDED
    assert r.headers["x-sidecar-reason"] == "upstream_timeout"
    assert r.content == b""
    assert took < 1.9  # the sidecar did not wait for the origin's 2 s answer

"""A gRPC origin for end-to-end tests: grpcio's own server (h2c), with raw-bytes methods so no
generated code is needed, and a client helper that runs grpcio's blocking calls off the trio thread.

Service `mesh.Echo`:
  Unary         echoes the request
  ServerStream  request is b"<count>:<size>": answers <count> messages of <size> bytes
  ClientStream  answers the number of messages and bytes received, b"<count>:<bytes>"
  Bidi          echoes each message as it arrives
  Fail          aborts with NOT_FOUND, message "no such order", trailing metadata x-detail: 42
  Slow          sleeps the number of milliseconds in the request, then echoes it
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

SERVICE = "mesh.Echo"
MAX_MESSAGE = 16 * 1024 * 1024  # room for the 4 MiB message test
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-echo-trailer", "yes"),))
    return request


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    count, size = (int(x) for x in request.split(b":"))
    for i in range(count):
        yield bytes([i % 256]) * size


def _client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    count = total = 0
    for message in requests:
        count += 1
        total += len(message)
    return f"{count}:{total}".encode()


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    yield from requests


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:
    context.set_trailing_metadata((("x-detail", "42"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such order")
    raise AssertionError("abort raises")


def _slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(int(request) / 1000)
    return request


def start_server() -> tuple[grpc.Server, int]:
    """A running grpcio server on 127.0.0.1 (plaintext HTTP/2) and its port."""
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class Client:
    """Blocking grpcio stubs over a plaintext channel to `port`, with `:authority` set to `authority`
    (the sidecar routes by it)."""

    def __init__(self, port: int, authority: str) -> None:
        self.channel = grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[*OPTIONS, ("grpc.default_authority", authority)]
        )

    def close(self) -> None:
        self.channel.close()

    def unary(self, name: str) -> Callable[..., Any]:
        return self.channel.unary_unary(f"/{SERVICE}/{name}")

    def server_stream(self) -> Callable[..., Any]:
        return self.channel.unary_stream(f"/{SERVICE}/ServerStream")

    def client_stream(self) -> Callable[..., Any]:
        return self.channel.stream_unary(f"/{SERVICE}/ClientStream")

    def bidi(self) -> Callable[..., Any]:
        return self.channel.stream_stream(f"/{SERVICE}/Bidi")

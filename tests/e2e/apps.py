"""Origins for end-to-end tests: an ASGI app served by hypercorn (someone else's HTTP server), and a
raw TCP origin for behaviours no well-behaved server shows (header casing, resets, idle closes)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def read_body(receive: Receive) -> bytes:
    """The whole request body of an ASGI HTTP request (test apps only: small bodies)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI server's lifespan messages until shutdown (apps that need no set-up)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Routes:
    /info         JSON of method, path, query, headers (lower-case), body length, HTTP version;
                  /info?big=N adds a response header x-big of N bytes
    /echo         streams the request body back
    /bytes/N      N bytes, streamed in 64 KiB pieces
    /slow/MS      answers after MS milliseconds
    /status/N     empty response with status N
    /trailers     chunked body with a trailer field
    """
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    path: str = scope["path"]
    if path == "/echo":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]}
        )
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            if chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if not message.get("more_body"):
                break
        await send({"type": "http.response.body", "body": b""})
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if path.startswith("/bytes/"):
        total = int(path.split("/")[2])
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(total).encode())]}
        )
        piece = b"x" * 65536
        left = total
        while left > 0:
            n = min(left, len(piece))
            left -= n
            await send({"type": "http.response.body", "body": piece[:n], "more_body": left > 0})
        if total == 0:
            await send({"type": "http.response.body", "body": b""})
        return
    if path.startswith("/slow/"):
        await trio.sleep(int(path.split("/")[2]) / 1000)
    if path.startswith("/status/"):
        status = int(path.split("/")[2])
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/trailers":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"trailer", b"x-checksum")],
                "trailers": True,
            }
        )
        await send({"type": "http.response.body", "body": b"part one,", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc123")], "more_trailers": False})
        return
    info = {
        "method": scope["method"],
        "path": path,
        "query": scope["query_string"].decode(),
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "body_length": size,
        "http_version": scope["http_version"],
        "client": scope["client"][0] if scope.get("client") else None,
        "server_port": scope["server"][1] if scope.get("server") else None,
    }
    data = json.dumps(info).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if info["query"].startswith("big="):
        headers.append((b"x-big", b"b" * int(info["query"][4:])))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def header_values(info: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in info["headers"] if k == name]


class RawOrigin:
    """A TCP origin whose behaviour the test scripts: `respond(stream, head_bytes)` per request.

    Records every request head exactly as received (raw bytes), and counts connections. Bytes that
    arrived after the head are in `pending`; a responder that reads the body takes them from there.
    """

    def __init__(self, respond: Callable[[trio.SocketStream, bytes, RawOrigin], Awaitable[bool]]) -> None:
        self.respond = respond
        self.heads: list[bytes] = []
        self.pending = b""
        self.connections = 0
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, _, self.pending = buf.partition(b"\r\n\r\n")
                self.heads.append(head)
                if not await self.respond(stream, head, self):
                    return
                buf, self.pending = self.pending, b""
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

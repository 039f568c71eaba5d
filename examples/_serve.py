"""Shared runner for the example services: parse --port/--name, serve an ASGI app with hypercorn."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def options(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--sidecar", default=None, help="host:port of this service's sidecar outbound listener")
    return parser.parse_args()


async def read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def reply_json(send: Send, status: int, data: object) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


App = Callable[[Scope, Receive, Send], Awaitable[None]]


def with_lifespan(app: App) -> App:
    """Answer the ASGI lifespan protocol (nothing to start or stop) and hand HTTP to `app`."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped


def serve(app: App, port: int) -> None:
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 5
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(hypercorn.trio.serve, with_lifespan(app), config)

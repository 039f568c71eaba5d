"""WebSocket origins for end-to-end tests: an ASGI echo app served by hypercorn, and the
`websockets` library's own threaded server; plus a helper that runs the `websockets` client from a
worker thread (its synchronous API is the one that needs no asyncio loop inside trio)."""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection, serve

from .apps import Receive, Scope, Send, echo_app

NO_STATUS = 1005  # RFC 6455 §7.4.1: the close frame carried no code
REJECTION = b"no websocket for you\n"


class WebSocketEcho:
    """Plain HTTP requests go to `echo_app`; WebSocket sessions by path:

    /echo      echoes every message, text or binary; the text `close:N` makes the app close with code N
    /headers   first sends the handshake's request headers as a JSON list of pairs, then echoes
    /refuse    refuses the handshake (hypercorn answers 403)
    /reject    refuses it with its own answer: 400 and a text body (the ASGI websocket.http.response extension)

    `ended` receives, per session, the close code the app saw from the client (or `server:N` when the
    app closed with N), in the order sessions end: tests wait on it instead of sleeping. Hypercorn
    (0.18) reports every client-initiated close to the app as 1006, whatever code the client sent;
    `WebSocketsServer` below shows a client's close code arriving.
    """

    def __init__(self) -> None:
        self.sessions = 0
        self._ended_in, self.ended = trio.open_memory_channel[int | str](64)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await echo_app(scope, receive, send)
            return
        await receive()  # websocket.connect
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["path"] == "/reject":
            headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(REJECTION)).encode())]
            await send({"type": "websocket.http.response.start", "status": 400, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": REJECTION})
            return
        self.sessions += 1
        await send({"type": "websocket.accept"})
        if scope["path"] == "/headers":
            pairs = [[k.decode(), v.decode()] for k, v in scope["headers"]]
            await send({"type": "websocket.send", "text": json.dumps(pairs)})
        await self._echo(receive, send)

    async def _echo(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await self._ended_in.send(message.get("code", NO_STATUS))
                return
            text = message.get("text")
            if text is not None and text.startswith("close:"):
                code = int(text.removeprefix("close:"))
                await send({"type": "websocket.close", "code": code})
                await self._ended_in.send(f"server:{code}")
                return
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


def open_websocket(port: int, path: str = "/echo", host: str = "orders", **options: Any) -> ClientConnection:
    """Connect the `websockets` client to a sidecar's outbound listener on `port`, with `Host: host`
    (the sidecar routes on it), blocking: call it through `trio.to_thread.run_sync`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    options.setdefault("open_timeout", 10)
    options.setdefault("close_timeout", 10)
    options.setdefault("max_size", None)
    return connect(f"ws://{host}{path}", sock=sock, **options)


async def in_thread(fn: Any, *args: Any) -> Any:
    """Run a blocking client step in a worker thread, so the sidecars in this trio loop keep running."""
    return await trio.to_thread.run_sync(fn, *args)


class WebSocketsServer:
    """The `websockets` library's threaded server, echoing; `closes` receives the close code and
    reason each session got from its client."""

    def __init__(self) -> None:
        self.closes: queue.Queue[tuple[int | None, str | None]] = queue.Queue()

    def _session(self, ws: ServerConnection) -> None:
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass
        self.closes.put((ws.close_code, ws.close_reason))

    @contextmanager
    def running(self) -> Iterator[int]:
        """Serve on a free port (yielded) in a thread until the block ends."""
        with serve(self._session, "127.0.0.1", 0) as server:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                yield int(server.socket.getsockname()[1])
            finally:
                server.shutdown()
                thread.join(10)

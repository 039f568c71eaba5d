"""The `orders` example service: answers order lookups, naming the replica that served them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import Receive, Scope, Send, options, read_body, reply_json, serve

ARGS = options(__doc__ or "")
REPLICA = ARGS.name or f"orders-{ARGS.port}"


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await read_body(receive)
    path: str = scope["path"]
    headers = {k.decode(): v.decode() for k, v in scope["headers"]}
    if path == "/healthz":
        await reply_json(send, 200, {"status": "ok"})
    elif path.startswith("/orders/"):
        await reply_json(
            send,
            200,
            {
                "order": path.rsplit("/", 1)[1],
                "status": "shipped",
                "replica": REPLICA,
                "x-forwarded-for": headers.get("x-forwarded-for"),
                "x-request-id": headers.get("x-request-id"),
                "x-forwarded-client-cert": headers.get("x-forwarded-client-cert"),
            },
        )
    else:
        await reply_json(send, 404, {"error": "not found"})


if __name__ == "__main__":
    serve(app, ARGS.port)

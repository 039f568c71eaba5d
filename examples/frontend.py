"""The `frontend` example service: `/checkout` calls `orders` through this service's own sidecar."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import Receive, Scope, Send, options, read_body, reply_json, serve

ARGS = options(__doc__ or "")
FORWARDED = ("x-request-id", "traceparent", "tracestate")  # passed on from the request to the call
# The app knows nothing of the mesh: it sends plain HTTP to its sidecar, naming the service in Host.
CLIENT = httpx.AsyncClient(base_url=f"http://{ARGS.sidecar}", headers={"host": "orders"}, timeout=10)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await read_body(receive)
    if scope["path"] == "/healthz":
        await reply_json(send, 200, {"status": "ok"})
        return
    if scope["path"] != "/checkout":
        await reply_json(send, 404, {"error": "not found"})
        return
    # What a traced app does: pass the request id and the trace context (the `traceparent` its
    # sidecar handed it, naming the inbound SERVER span) on to the calls it makes.
    received = dict(scope["headers"])
    forward = {name: received[name.encode()].decode() for name in FORWARDED if name.encode() in received}
    try:
        upstream = await CLIENT.get("/orders/42", headers=forward)
    except httpx.HTTPError as exc:
        await reply_json(send, 502, {"error": f"orders unreachable: {type(exc).__name__}"})
        return
    reason = upstream.headers.get("x-sidecar-reason")
    body = upstream.json() if upstream.headers.get("content-type") == "application/json" else None
    await reply_json(
        send,
        upstream.status_code,
        {"checkout": "ok" if upstream.is_success else "failed", "orders": body, "sidecar_reason": reason},
    )


if __name__ == "__main__":
    serve(app, ARGS.port)

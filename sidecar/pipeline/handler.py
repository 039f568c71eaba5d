"""The handler contract every layer and listener shares.

A handler is `async def handle(request) -> Response`, the type the protocol servers are given
(`Handler`, defined by the transport in `transport/handler.py` and shared here). A layer wraps a
handler and returns a new one; a listener's stack is a chain of layers read top to bottom (see
`listeners/`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..transport.handler import Handler

__all__ = ["Handler", "Layer", "compose"]

Layer = Callable[[Handler], Handler]


def compose(*layers: Layer, terminal: Handler) -> Handler:
    """`compose(a, b, terminal=t)` is `a(b(t))`: the first layer sees the request first."""
    handler = terminal
    for layer in reversed(layers):
        handler = layer(handler)
    return handler

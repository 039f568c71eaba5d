"""Protocol detection on a captured connection: peek at its first bytes until `http.sniff` can
tell HTTP/2, HTTP/1.1 or TCP, or the caller has been silent for the detection timeout (then it is
TCP: a server-speaks-first protocol, such as MySQL or SMTP, waits for the server). Peeking consumes
nothing: whatever takes the connection next reads every byte the client sent.
"""

from __future__ import annotations

import trio

from ..http.sniff import Speaks, sniff
from .tcp import TcpStream

PEEK_WAIT = 0.005  # seconds between looks at a first line that arrived in part (rare)


async def detect(stream: TcpStream, timeout: float, max_line: int) -> Speaks | None:
    """What the connection speaks; None when the caller closed (or broke) it before a byte."""
    seen = 0
    with trio.move_on_after(timeout):
        while True:
            try:
                first = await stream.peek(max_line)
            except trio.BrokenResourceError:
                return None
            if not first:
                return None
            verdict = sniff(first, max_line)
            if verdict is not None:
                return verdict
            if len(first) == seen:  # nothing new since the last look: wait a little
                await trio.sleep(PEEK_WAIT)
            seen = len(first)
    return Speaks.TCP

"""The idle-connection step: what one idle keep-alive connection costs the proxy in memory.

It opens `IDLE_CONNECTIONS` connections to the front, sends one small request on each and reads its
answer, then leaves them all open and idle for `SETTLE` seconds (the sidecar parks a connection
idle for a second) and reads the proxy's resident memory (VmRSS, not the peak) before and after:
the difference divided by the connections is KiB per idle keep-alive connection. Only for the
setups marked `idle` (one proxy process whose connection limit allows that many).
"""

from __future__ import annotations

import resource
import socket
import time
from pathlib import Path

from harness import nginx

IDLE_CONNECTIONS = 8000
SETTLE = 3.0  # seconds the connections stay idle before the second reading
BATCH = 500  # connections opened before their answers are read


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS over the given processes, in KiB."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def kib_per_idle_connection(port: int, pids: list[int], count: int = IDLE_CONNECTIONS) -> float:
    """Open `count` keep-alive connections with one request each, let them idle, and return the
    proxy's resident memory growth per connection (KiB). All are closed before returning."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    request = f"GET {nginx.SMALL_PATH} HTTP/1.1\r\nHost: origin\r\n\r\n".encode()
    before = rss_kib(pids)
    sockets: list[socket.socket] = []
    try:
        for start in range(0, count, BATCH):
            batch = [
                socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(min(BATCH, count - start))
            ]
            sockets += batch
            for sock in batch:
                sock.sendall(request)
            for sock in batch:
                _read_answer(sock)
        time.sleep(SETTLE)
        return (rss_kib(pids) - before) / count
    finally:
        for sock in sockets:
            sock.close()


def _read_answer(sock: socket.socket) -> None:
    data = b""
    while not data.endswith(nginx.SMALL_BODY):
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError(f"connection closed after {data[:80]!r}")
        data += chunk

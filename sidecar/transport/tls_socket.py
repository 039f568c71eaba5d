"""TLS streams over non-blocking `ssl.SSLSocket`s: OpenSSL reads and writes the socket itself.

trio's `SSLStream` drives an `SSLObject` through memory BIOs in Python, which costs several Python
calls and two copies per record; on the mesh hop that halved throughput. `TlsStream` wraps the kernel
socket in OpenSSL directly (`context.wrap_socket`, non-blocking) and waits on trio's readiness
primitives only when OpenSSL says it wants to read or write: one system call per operation, as for
plain TCP. It implements the `trio.abc.Stream` contract and exposes what the sidecar needs from a TLS
connection: the peer certificate, ALPN, session and resumption.
"""

from __future__ import annotations

import ssl
from typing import Any

import trio

from .tcp import RECEIVE_SIZE, TcpStream, fair_yield

_BROKEN = (ssl.SSLError, ConnectionError, TimeoutError)
MAX_RECORD = 16384  # the most plaintext one TLS record carries


class TlsStream(trio.abc.Stream):
    __slots__ = ("_closed", "_streak", "sock")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self._closed = False
        self._streak = 0

    @classmethod
    def wrap(
        cls,
        tcp: TcpStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> TlsStream:
        """Take over `tcp`'s socket (the TcpStream must not be used afterwards)."""
        raw = tcp.sock
        tcp.disown()  # wrap_socket detaches `raw`: its descriptor now belongs to the TLS socket
        sock = context.wrap_socket(
            raw,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            session=session,
        )
        sock.setblocking(False)
        return cls(sock)

    # -- what the sidecar reads off a TLS connection -------------------------------------------

    def getpeercert(self) -> dict[str, Any] | None:
        return self.sock.getpeercert()

    def selected_alpn_protocol(self) -> str | None:
        return self.sock.selected_alpn_protocol()

    def version(self) -> str | None:
        return self.sock.version()

    @property
    def session(self) -> ssl.SSLSession | None:
        return self.sock.session

    @property
    def session_reused(self) -> bool:
        return bool(self.sock.session_reused)

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- the stream contract ---------------------------------------------------------------------

    async def do_handshake(self) -> None:
        sock = self.sock
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
            except _BROKEN as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            except OSError as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc

    _fair = fair_yield

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        sock = self.sock
        size = max_bytes or RECEIVE_SIZE
        waited = False
        while True:
            try:
                data = sock.recv(size)
            except ssl.SSLWantReadError:
                waited = True
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except ssl.SSLWantWriteError:
                waited = True
                await self._wait(trio.lowlevel.wait_writable)
                continue
            except ssl.SSLZeroReturnError:
                data = b""  # close_notify
            except _BROKEN as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed") from None
                raise trio.BrokenResourceError(str(exc)) from exc
            if len(data) == MAX_RECORD and size > MAX_RECORD:
                data = self._more(data, size)
            if waited:
                self._streak = 0
            else:
                await self._fair()
            return data

    async def receive_when_readable(self, max_bytes: int | None = None) -> bytes:
        """`receive_some` for data that cannot be there yet (a response to a request just sent):
        unless OpenSSL holds decrypted bytes already, wait for the socket first, sparing the read
        that would only say "not yet"."""
        if not self._closed and not self.sock.pending():
            self._streak = 0
            await self._wait(trio.lowlevel.wait_readable)
        return await self.receive_some(max_bytes)

    def _more(self, data: bytes, size: int) -> bytes:
        """After a full record, the records already waiting, up to `size`, without waiting: a bulk
        transfer then costs one pass through the caller per read rather than one per 16 KiB record
        (OpenSSL hands over one record per read). A shorter first record is a whole message, and
        no second read is tried for it."""
        sock = self.sock
        parts = [data]
        got = len(data)
        while got < size:
            try:
                more = sock.recv(size - got)
            except (ssl.SSLError, OSError):
                break  # nothing more yet, or a failure the next call reports
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts) if len(parts) > 1 else data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        sock = self.sock
        view = memoryview(data)
        waited = False
        while view:
            try:
                sent = sock.send(view)
            except ssl.SSLWantWriteError:
                waited = True
                await self._wait(trio.lowlevel.wait_writable)
                continue
            except ssl.SSLWantReadError:
                waited = True
                await self._wait(trio.lowlevel.wait_readable)
                continue
            except _BROKEN as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            except OSError as exc:
                if self._closed:
                    raise trio.ClosedResourceError("stream is closed") from None
                raise trio.BrokenResourceError(str(exc)) from exc
            view = view[sent:]
        if waited:
            self._streak = 0
        else:
            await self._fair()

    def try_send(self, data: bytes) -> int:
        """Send what OpenSSL takes now, without waiting: the bytes sent (0 when it would block; the
        same bytes are offered again later, as OpenSSL requires after a short write)."""
        if self._closed:
            return 0
        try:
            return self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0

    async def _wait(self, wait: Any) -> None:
        try:
            await wait(self.sock)
        except trio.ClosedResourceError:
            raise trio.ClosedResourceError("stream closed while waiting") from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    def close_now(self) -> None:
        """Close at once, without close_notify (the peer sees the connection end)."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def aclose(self) -> None:
        self.close_now()
        await trio.lowlevel.checkpoint()

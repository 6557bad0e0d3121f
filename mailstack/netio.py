"""A small TCP server for our own line protocols (IMAP, POP3): TLS modes, per-IP
connection caps, line reads with limits, STARTTLS that discards pipelined plaintext,
and graceful shutdown that tells every open session.

STARTTLS (RFC 3207 §4.2, RFC 2595 §3.1, RFC 9051 §6.2.1): anything the client sent
after the STARTTLS/STLS line and before the handshake must be thrown away, never run
as a command under TLS. asyncio's ``StreamWriter.start_tls`` keeps the reader's
buffered plaintext, so ``Conn.start_tls`` clears it first (docs/behaviour.md §12 "STARTTLS
command injection").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import metrics
from .config import ListenerSettings
from .logs import conn_event, new_session_id
from .memory import HandshakeLimiter
from .tls import tls_summary

if TYPE_CHECKING:
    from .workers import SharedCounts

log = logging.getLogger("mailstack.net")


class LineTooLong(Exception):
    pass


class Conn:
    """One client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 listener: TcpListener) -> None:
        self.reader = reader
        self.writer = writer
        self.listener = listener
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.client_ip: str = str(peer[0])
        self.client_port: int = int(peer[1]) if len(peer) > 1 else 0
        self.tls = writer.get_extra_info("ssl_object") is not None
        self.on_shutdown: Callable[[], Awaitable[None]] | None = None
        self.closed = False
        # for the connection's log lines (mailstack.logs.conn_event): sessions set
        # ``login`` once authenticated
        self.session_id = new_session_id()
        self.login = ""

    @property
    def tls_version(self) -> str:
        """'TLSv1.3' while TLS is up, else '' (also once the transport is torn down)."""
        try:
            obj = self.writer.get_extra_info("ssl_object")
            return str(obj.version() or "") if obj is not None else ""
        except Exception:
            return ""

    @property
    def tls_info(self) -> str:
        return tls_summary(self.writer.get_extra_info("ssl_object"))

    async def readline(self, limit: int, timeout: float | None = None) -> bytes:
        """One line including its terminator; b"" at EOF. Longer than ``limit``:
        the rest of the line is read and dropped, then LineTooLong is raised, so
        memory stays bounded."""
        async def read() -> bytes:
            try:
                return await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                return exc.partial
            except asyncio.LimitOverrunError:
                # drain the oversized line in bounded chunks
                while True:
                    try:
                        await self.reader.readuntil(b"\n")
                        break
                    except asyncio.LimitOverrunError as e:
                        await self.reader.readexactly(e.consumed)
                    except asyncio.IncompleteReadError:
                        break
                raise LineTooLong() from None
        line = await asyncio.wait_for(read(), timeout)
        if len(line) > limit:
            raise LineTooLong()
        return line

    async def readexactly(self, n: int, timeout: float | None = None) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), timeout)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def start_tls(self, ctx: ssl.SSLContext) -> None:
        await self.drain()
        # Throw away pipelined plaintext (private attribute: the only way to reach the
        # buffer; covered by the STARTTLS injection tests).
        buf: Any = getattr(self.reader, "_buffer", None)
        if buf is not None:
            buf.clear()
        limiter = self.listener.handshakes
        if not limiter.try_acquire():  # the server-wide cap on pending handshakes
            log.info("%s: too many pending TLS handshakes; closing %s", self.listener.name,
                     self.client_ip)
            raise ConnectionAbortedError("too many pending TLS handshakes")
        try:
            await self.writer.start_tls(
                ctx, ssl_handshake_timeout=self.listener.handshake_timeout)
        finally:
            limiter.release()
        self.tls = True

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)


Handler = Callable[[Conn], Awaitable[None]]


class TcpListener:
    """Accepts connections and runs ``handler`` for each; implicit TLS if asked."""

    def __init__(self, name: str, settings: ListenerSettings, handler: Handler, *,
                 ssl_ctx: ssl.SSLContext | None, max_per_ip: int = 50,
                 handshake_timeout: float = 30.0,
                 handshakes: HandshakeLimiter | None = None,
                 sock: socket.socket | None = None,
                 shared: SharedCounts | None = None) -> None:
        """``sock``: a listening socket bound by the ``serve --workers`` supervisor;
        ``shared``: the per-IP counts of every worker (the cap holds over their sum)."""
        self.name = name
        self.handshake_timeout = handshake_timeout
        self.settings = settings
        self.handler = handler
        self.ssl_ctx = ssl_ctx
        self.max_per_ip = max_per_ip
        self.server: asyncio.Server | None = None
        self.conns: set[Conn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.per_ip: Counter[str] = Counter()
        self.handshakes = handshakes or HandshakeLimiter(256)
        self.sock = sock
        self.shared = shared
        self.port = 0

    async def start(self) -> None:
        # Implicit TLS is started by ``_accept`` itself, after the per-IP count and the
        # pending-handshake cap (asyncio's ssl= would hold every handshake first).
        if self.sock is not None:
            self.server = await asyncio.start_server(self._accept, sock=self.sock,
                                                     limit=256 * 1024)
        else:
            self.server = await asyncio.start_server(
                self._accept, self.settings.address, self.settings.port, limit=256 * 1024)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # No await before the count and the TLS start: the cap holds at accept time, and
        # the client's first TLS record is still unread when the handshake begins.
        conn = Conn(reader, writer, self)
        client = conn.client_ip
        if self.per_ip[client] >= self.max_per_ip or (
                self.shared is not None
                and not self.shared.acquire(self.name, client, self.max_per_ip)):
            conn_event(self.name, conn.session_id, client, "refused", tls=conn.tls_version,
                       result="too many connections")
            await conn.close()
            self.handshakes.trimmer.note_closed()
            return
        implicit = self.settings.tls == "implicit" and self.ssl_ctx is not None
        if implicit and not self.handshakes.try_acquire():
            log.info("%s: too many pending TLS handshakes; closing %s", self.name,
                     conn.client_ip)
            if self.shared is not None:
                self.shared.release(self.name, client)
            await conn.close()
            self.handshakes.trimmer.note_closed()
            return
        self.per_ip[client] += 1
        self.conns.add(conn)
        metrics.connection_opened(self.name)
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        conn_event(self.name, conn.session_id, client, "connect", tls=conn.tls_version)
        result = "closed"
        try:
            if implicit:
                assert self.ssl_ctx is not None
                try:
                    await writer.start_tls(self.ssl_ctx,
                                           ssl_handshake_timeout=self.handshake_timeout)
                finally:
                    self.handshakes.release()
                conn.tls = True
            await self.handler(conn)
        except asyncio.CancelledError:
            result = "shutdown"  # our own (close() cancels sessions past the grace period)
        except TimeoutError:
            result = "timeout"
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            result = "lost"
        except Exception:
            result = "error"
            log.exception("%s: session %s with %s failed", self.name, conn.session_id, client)
        finally:
            tls = conn.tls_version or ("TLS" if conn.tls else "")
            await conn.close()
            metrics.connection_closed(self.name)
            self.conns.discard(conn)
            self.per_ip[client] -= 1
            if self.per_ip[client] <= 0:
                del self.per_ip[client]
            if self.shared is not None:
                self.shared.release(self.name, client)
            if task is not None:
                self.tasks.discard(task)
            self.handshakes.trimmer.note_closed()
            conn_event(self.name, conn.session_id, client, "close", tls=tls,
                       login=conn.login, result=result)

    async def close(self, grace: float = 0.0) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns):
            if conn.on_shutdown is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.on_shutdown(), 2)
        if self.tasks and grace > 0:
            await asyncio.wait(set(self.tasks), timeout=grace)
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.conns):
            await conn.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

"""The IMAP listener and the per-connection read loop (RFC 9051 §2.2, §7.5).

Implementation notes (invariants):
- Lines are read with a bound (``imap.max_line_length``); a longer line is drained in
  bounded chunks and answered ``* BAD`` (netio ``LineTooLong``): memory stays flat.
- Literal announcements are checked by the parser's ``CommandReader`` before a single
  octet of literal data is read; "+ Ready" is sent only for an accepted synchronizing
  literal (RFC 9051 §7.5). Before login the literal limit is tiny
  (``imap.max_literal_before_login``); after it, APPEND literals may reach the plan's
  maximum message size. A refused non-synchronizing literal (LITERAL+) would be
  followed by its data anyway, so the connection is closed after the BAD (RFC 7888 §4).
- No command for ``imap.idle_timeout_seconds`` (RFC 9051 §5.4: at least 30 minutes):
  ``* BYE`` and close. The same deadline bounds each literal read.
- Server shutdown tells every open session ``* BYE``.
"""

from __future__ import annotations

import logging

from mailstack.config import ListenerSettings
from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.compress import BombError
from mailstack.imap.parser import NeedLiteral, ParseError, TooBig
from mailstack.imap.session import LOGOUT, Session, SessionEnd
from mailstack.netio import Conn, LineTooLong, TcpListener
from mailstack.services import Services

log = logging.getLogger("mailstack.imap")


class ImapServer:
    """One IMAP listener (993 implicit TLS or 143 STARTTLS)."""

    def __init__(self, services: Services, name: str, settings: ListenerSettings) -> None:
        self.services = services
        self.name = name
        self.settings = settings
        ctx = services.server_ssl if settings.tls != "none" else None
        self.listener = TcpListener(name, settings, self.handle, ssl_ctx=ctx,
                                    max_per_ip=services.settings.imap.max_connections_per_ip,
                                    handshake_timeout=services.settings.server
                                    .tls_handshake_timeout_seconds,
                                    handshakes=services.handshakes,
                                    sock=services.listen_socket(name),
                                    shared=services.shared_counts)

    @property
    def port(self) -> int:
        return self.listener.port

    async def start(self) -> None:
        await self.listener.start()

    async def close(self, grace: float = 0.0) -> None:
        await self.listener.close(grace)

    async def handle(self, conn: Conn) -> None:
        conn_loop = Connection(self.services, conn, self.settings)
        await conn_loop.run()


class Connection:
    def __init__(self, services: Services, conn: Conn, settings: ListenerSettings) -> None:
        self.services = services
        self.conn = conn
        self.imap = services.settings.imap
        self.session = Session(services, conn, settings, self.read_line)

    async def read_line(self) -> bytes:
        try:
            line = await self.conn.readline(self.imap.max_line_length + 2,
                                            self.imap.idle_timeout_seconds)
        except TimeoutError:
            raise SessionEnd("Autologout; idle for too long") from None
        except BombError:
            raise SessionEnd("Line too long in the compressed stream") from None
        if not line:
            raise ConnectionResetError("client closed the connection")
        return line

    async def _shutdown(self) -> None:
        self.conn.write(respond.untagged("BYE Server shutting down"))
        await self.conn.drain()

    async def run(self) -> None:
        s = self.session
        self.conn.on_shutdown = self._shutdown
        s.send(respond.untagged(f"OK [CAPABILITY {s.capabilities()}] "
                                f"{self.services.hostname} IMAP server ready"))
        await self.conn.drain()
        try:
            while s.state != LOGOUT and not self.conn.closed:
                cmd = await self.read_command()
                if cmd is not None:
                    await s.execute(cmd)
        except SessionEnd as end:
            if end.text:
                s.send(respond.untagged(f"BYE {end.text}"))
                await self.conn.drain()
        finally:
            s.close()

    async def read_command(self) -> t.Command | None:
        """One whole command, or None after answering a syntax error or a refusal."""
        s = self.session
        reader = s.reader
        try:
            result = reader.feed_line(await self.read_line())
            while isinstance(result, NeedLiteral):
                if result.synchronizing:
                    s.send(b"+ Ready for literal data\r\n")
                    await self.conn.drain()
                try:
                    data = await self.conn.readexactly(result.size,
                                                       self.imap.idle_timeout_seconds)
                except TimeoutError:
                    raise SessionEnd("Autologout; literal not sent") from None
                reader.feed_literal(data)
                result = reader.feed_line(await self.read_line())
            return result
        except LineTooLong:
            reader.reset()
            s.send(respond.untagged("BAD Line too long"))
        except ParseError as exc:
            s.send(respond.tagged(exc.tag or "*", "NO" if exc.no else "BAD", exc.message,
                                  exc.code))
        except TooBig as exc:
            reader.reset()
            if exc.kind == "line":
                s.send(respond.tagged(exc.tag or "*", "BAD", exc.message))
            elif not exc.synchronizing:
                # The client sends the data regardless (RFC 7888 §4): stop listening.
                s.send(respond.tagged(exc.tag or "*", "BAD", exc.message, "TOOBIG"))
                raise SessionEnd("Literal too big") from None
            else:
                s.send(respond.tagged(exc.tag or "*", "NO", exc.message, "TOOBIG"))
        await self.conn.drain()
        return None

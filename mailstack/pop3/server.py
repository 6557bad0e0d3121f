"""The POP3 front-end: one ``TcpListener`` (995 implicit TLS or 110 with STLS) running a
``Session`` per connection.

Shutdown: every open session is told with one ``-ERR [SYS/TEMP]`` line and closed
without entering UPDATE (nothing is deleted); ``close`` then waits briefly for the
sessions to release their maildrop locks before the store goes away.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..config import ListenerSettings
from ..netio import Conn, TcpListener
from ..services import Services
from .maildrop import ShapeCache
from .session import Session


class Pop3Server:
    def __init__(self, services: Services, name: str, role: str,
                 listener_settings: ListenerSettings) -> None:
        self.services = services
        self.name = name
        self.role = role
        self.listener_settings = listener_settings
        self.port = 0
        self.shapes = ShapeCache()
        self.sessions: set[Session] = set()
        self.listener = TcpListener(
            name, listener_settings, self._handle, ssl_ctx=services.server_ssl,
            max_per_ip=services.settings.pop3.max_connections_per_ip,
            handshake_timeout=services.settings.server.tls_handshake_timeout_seconds)

    async def start(self) -> None:
        await self.listener.start()
        self.port = self.listener.port

    async def _handle(self, conn: Conn) -> None:
        session = Session(self, conn)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    async def close(self, grace: float = 0.0) -> None:
        pending = list(self.sessions)
        await self.listener.close(grace)
        # cancelled sessions release their locks in their own ``finally``: let them
        waits = [asyncio.ensure_future(s.done.wait()) for s in pending]
        if waits:
            with contextlib.suppress(Exception):
                await asyncio.wait(waits, timeout=3)
            for w in waits:
                w.cancel()

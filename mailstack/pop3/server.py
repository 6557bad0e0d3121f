"""The POP3 front-end: one ``TcpListener`` (995 implicit TLS or 110 with STLS) running a
``Session`` per connection.

Shutdown: every open session is told with one ``-ERR [SYS/TEMP]`` line and closed
without entering UPDATE (nothing is deleted); ``close`` then waits briefly for the
sessions to release their maildrop locks before the store goes away.

Maildrop locks belong to live sessions (docs/behaviour.md §12): a holder id is
``node/instance/session``. A release that fails (database down) is retried with
backoff until the database answers; at start the node drops every lock its previous
instances held (they died with the process), while other nodes' locks stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from ..config import ListenerSettings
from ..netio import Conn, TcpListener
from ..services import Services
from ..store import Unavailable
from .maildrop import ShapeCache
from .session import Session

log = logging.getLogger("mailstack.pop3")
RELEASE_RETRY = (0.5, 30.0)  # first and largest delay between release attempts, seconds


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
        self.node = services.settings.server.node_name or socket.gethostname()
        # ``serve --workers``: a worker (re)starting drops only its own slot's old locks
        # (the supervisor dropped the whole node's at start)
        self.run_prefix = (f"{self.node}/" if services.worker is None
                           else f"{self.node}/w{services.worker.index}/")
        self.holder_prefix = f"{self.run_prefix}{services.store.node_id}/"
        self.unreleased: set[tuple[int, str]] = set()  # (address id, holder)
        self._releaser: asyncio.Task[None] | None = None
        self.listener = TcpListener(
            name, listener_settings, self._handle, ssl_ctx=services.server_ssl,
            max_per_ip=services.settings.pop3.max_connections_per_ip,
            handshake_timeout=services.settings.server.tls_handshake_timeout_seconds,
            handshakes=services.handshakes, sock=services.listen_socket(name),
            shared=services.shared_counts)

    async def start(self) -> None:
        try:
            dropped = await self.services.store.drop_node_pop3_locks(
                self.run_prefix, keep_prefix=self.holder_prefix)
            if dropped:
                log.info("pop3: dropped %d maildrop locks of this node's previous run",
                         dropped)
        except Unavailable as exc:
            log.warning("pop3: cannot drop old maildrop locks: %s", exc)
        await self.listener.start()
        self.port = self.listener.port

    def release_later(self, address_id: int, holder: str) -> None:
        """Keep releasing the lock until the database answers."""
        self.unreleased.add((address_id, holder))
        if self._releaser is None or self._releaser.done():
            self._releaser = asyncio.create_task(self._release_pending())

    async def _release_pending(self) -> None:
        delay, most = RELEASE_RETRY
        while self.unreleased:
            await asyncio.sleep(delay)
            for address_id, holder in list(self.unreleased):
                try:
                    await self.services.store.release_pop3_lock(address_id, holder)
                except Unavailable:
                    delay = min(delay * 2, most)
                    break
                self.unreleased.discard((address_id, holder))
                log.info("pop3: released a maildrop lock left by an outage")

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
        if self._releaser is not None:
            self._releaser.cancel()
            with contextlib.suppress(BaseException):
                await self._releaser
            self._releaser = None
        for address_id, holder in list(self.unreleased):  # one last try
            with contextlib.suppress(Unavailable):
                await self.services.store.release_pop3_lock(address_id, holder)

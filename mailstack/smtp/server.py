"""The SMTP listeners (25 MX, 465 implicit TLS, 587 STARTTLS) on our own event loop.

aiosmtpd's protocol class is served with ``loop.create_server`` (never its threaded
``Controller``). One ``SmtpFrontEnd`` per listener; it owns the per-IP connection
counter and the set of open sessions so ``close`` can tell each one
``421 4.3.2`` (RFC 5321 §3.8) and let a message being stored finish first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..config import ListenerSettings
from ..outbound.dkim import DkimSigner
from ..policy.limits import ConnectionCounter
from ..services import Services
from . import replies
from .protocol import MailstackSMTP, new_queue_id

log = logging.getLogger("mailstack.smtp")

MAX_AUTH_FAILURES = 3  # per session; then 421 4.7.0 and the connection is closed


class SmtpFrontEnd:
    def __init__(self, services: Services, name: str, role: str,
                 listener: ListenerSettings, *,
                 make_id: Callable[[], str] = new_queue_id) -> None:
        if role not in ("mx", "submission"):
            raise ValueError(f"unknown SMTP role {role!r}")
        self.services = services
        self.name = name
        self.role = role
        self.listener = listener
        self.make_id = make_id
        self.port = 0
        s = services.settings
        # SIZE (RFC 1870) advertises the largest plan's limit; the sender's (or the
        # recipient domain's) plan is applied per transaction.
        self.max_size = max(p.max_message_size for p in s.plans.values())
        # RFC 6409 §4.3 / docs/behaviour.md §1: on a submission STARTTLS port nothing but
        # EHLO/NOOP/STARTTLS/QUIT before TLS.
        self.starttls_required = role == "submission" and listener.tls == "starttls"
        self.max_auth_failures = MAX_AUTH_FAILURES
        self.connections = ConnectionCounter(s.smtp.max_connections_per_ip,
                                             ipv6_prefix=s.auth.ipv6_prefix)
        self.sessions: set[MailstackSMTP] = set()
        self.in_flight: set[asyncio.Future[None]] = set()
        self.signer = DkimSigner(services.store)  # docs/behaviour.md §6
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ssl_ctx = self.services.server_ssl if self.listener.tls == "implicit" else None
        self._server = await loop.create_server(
            lambda: MailstackSMTP(self), self.listener.address, self.listener.port,
            ssl=ssl_ctx, ssl_handshake_timeout=(
                self.services.settings.server.tls_handshake_timeout_seconds
                if ssl_ctx else None))
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace: float = 0.0) -> None:
        if self._server is not None:
            self._server.close()
        if self.in_flight and grace > 0:  # let messages being stored reach their 250
            await asyncio.wait(set(self.in_flight), timeout=grace)
        for sess in list(self.sessions):
            transport = sess.transport
            if transport is None:
                continue
            with contextlib.suppress(Exception):
                transport.write(f"{replies.SHUTDOWN}\r\n".encode())  # type: ignore[attr-defined]
                transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

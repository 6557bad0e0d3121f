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
import ssl
from collections.abc import Callable

from ..config import ListenerSettings
from ..outbound.dkim import DkimSigner
from ..policy.limits import ConnectionCounter
from ..services import Services
from . import replies
from .protocol import MailstackSMTP, new_queue_id
from .senderauth import SenderAuth

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
        self.connections: ConnectionCounter = services.connection_counter(
            name, s.smtp.max_connections_per_ip, ipv6_prefix=s.auth.ipv6_prefix)
        self.sessions: set[MailstackSMTP] = set()
        self.in_flight: set[asyncio.Future[None]] = set()
        self.signer = DkimSigner(services.store)  # docs/behaviour.md §6
        # docs/behaviour.md §5 "sender authentication": SPF/DKIM/DMARC/ARC on the MX only
        self.sender_auth: SenderAuth | None = (
            SenderAuth(services) if role == "mx" and s.sender_auth.enabled else None)
        self.gates: set[asyncio.Task[None]] = set()  # implicit TLS handshakes under way
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ssl_ctx = self.services.server_ssl if self.listener.tls == "implicit" else None
        factory: Callable[[], asyncio.BaseProtocol]
        if ssl_ctx is not None:
            ctx = ssl_ctx
            factory = lambda: TlsGate(self, ctx)  # noqa: E731
        else:
            factory = lambda: MailstackSMTP(self)  # noqa: E731
        self._server = await loop.create_server(factory, **self.services.bind_args(
            self.name, self.listener.address, self.listener.port))
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self, grace: float = 0.0) -> None:
        if self._server is not None:
            self._server.close()
        for gate in list(self.gates):
            gate.cancel()
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


class TlsGate(asyncio.Protocol):
    """Implicit TLS (465): the client is counted per IP at accept time and the pending
    handshakes are capped, both BEFORE the handshake (asyncio's ``ssl=`` would run every
    handshake first, holding ~300 KiB each); then the TLS transport is handed to a
    ``MailstackSMTP`` that releases the count when the connection ends. Refused
    connections are closed without a reply (nothing can be said before TLS)."""

    def __init__(self, fe: SmtpFrontEnd, ctx: ssl.SSLContext) -> None:
        self.fe = fe
        self.ctx = ctx
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else "?"
        handshakes = self.fe.services.handshakes
        if not self.fe.connections.acquire(ip).allowed:
            log.info("%s: too many connections from %s", self.fe.name, ip)
            transport.close()
            handshakes.trimmer.note_closed()
            return
        if not handshakes.try_acquire():
            log.info("%s: too many pending TLS handshakes; closing %s", self.fe.name, ip)
            self.fe.connections.release(ip)
            transport.close()
            handshakes.trimmer.note_closed()
            return
        self.task = asyncio.get_running_loop().create_task(self._upgrade(transport, ip))
        self.fe.gates.add(self.task)
        self.task.add_done_callback(self.fe.gates.discard)

    async def _upgrade(self, transport: asyncio.BaseTransport, ip: str) -> None:
        loop = asyncio.get_running_loop()
        handshakes = self.fe.services.handshakes
        try:
            tls = await loop.start_tls(
                transport, self, self.ctx, server_side=True,  # type: ignore[arg-type]
                ssl_handshake_timeout=self.fe.services.settings.server
                .tls_handshake_timeout_seconds)
        except BaseException:
            self.fe.connections.release(ip)
            transport.close()
            handshakes.trimmer.note_closed()
            return
        finally:
            handshakes.release()
        if tls is None:  # pragma: no cover - closed meanwhile
            self.fe.connections.release(ip)
            return
        proto = MailstackSMTP(self.fe, counted_ip=ip)
        tls.set_protocol(proto)
        proto.connection_made(tls)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - TLS takes over
        pass

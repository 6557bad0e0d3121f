"""Fixtures for the transport-security tests: the DNSSEC rig, a test PKI, a real
TLS-speaking remote MX (aiosmtpd on loopback) and ``execute()``, which carries out a
``TlsRequirement`` exactly as ``mailstack/outbound/transport.py`` tells the SMTP client
to, over a real connection, so the tests see what the client will see."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as SmtpServer
from aiosmtpd.smtp import Envelope, Session

from mailstack.outbound.dane import peer_chain_der
from mailstack.outbound.transport import TlsRequirement
from tests.dnsrig import dns_rig  # noqa: F401  (the session fixture)
from tests.transport.certs import Pki, make_pki

MESSAGE = b"From: a@example.org\r\nTo: b@dane.test\r\nSubject: t\r\n\r\nhello\r\n"


@pytest.fixture(scope="session")
def pki() -> Pki:
    return make_pki()


@dataclass
class RemoteMx:
    """What the remote server saw: every DATA it received, and whether over TLS."""

    port: int = 0
    received: list[tuple[bytes, bool]] = field(default_factory=list)
    starttls_count: int = 0


class _Handler:
    def __init__(self, mx: RemoteMx) -> None:
        self.mx = mx

    async def handle_DATA(self, server: SmtpServer, session: Session,
                          envelope: Envelope) -> str:
        self.mx.received.append((bytes(envelope.content or b""), session.ssl is not None))
        return "250 2.0.0 OK"

    def handle_STARTTLS(self, server: SmtpServer, session: Session,
                        envelope: Envelope) -> bool:
        self.mx.starttls_count += 1
        return True


@pytest.fixture
async def remote_mx() -> AsyncIterator[Callable[..., Any]]:
    """``await remote_mx(cert_file, key_file)`` starts a remote MX on 127.0.0.1 that
    offers STARTTLS with that certificate chain; ``await remote_mx(None)`` one that
    withholds STARTTLS."""
    servers: list[asyncio.Server] = []

    async def start(cert: Path | None, key: Path | None = None) -> RemoteMx:
        mx = RemoteMx()
        ctx = None
        if cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(cert, key)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SmtpServer(_Handler(mx), tls_context=ctx, hostname="remote.test"),
            "127.0.0.1", 0)
        servers.append(server)
        mx.port = server.sockets[0].getsockname()[1]
        return mx

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    tls: bool = False
    authenticated: bool = False
    reason: str = ""


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def execute(req: TlsRequirement, port: int, mx_host: str,
                  message: bytes = MESSAGE) -> Outcome:
    """Deliver ``message`` to 127.0.0.1:``port`` (the MX host ``mx_host``) following
    ``req`` the way the contract in ``outbound/transport.py`` says."""
    if req.defer_reason:
        return Outcome(False, reason=req.defer_reason)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False,
                             timeout=10)
    await client.connect()
    try:
        await client.ehlo(hostname="client.test")
        tls = authenticated = False
        if client.supports_extension("starttls"):
            try:
                await client.starttls(server_hostname=mx_host,
                                      tls_context=req.ssl_context or _unverified())
                tls = True
            except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                if req.require_tls:
                    return Outcome(False, reason=f"TLS handshake failed: {exc}")
                if req.report:
                    req.report("validation-failure", str(exc))
                return Outcome(False, reason=f"handshake failed (would retry plain): {exc}")
        elif req.require_tls:
            if req.report:
                req.report("starttls-not-supported", "")
            return Outcome(False, reason="STARTTLS required but not offered")
        if tls:
            assert client.transport is not None
            chain = peer_chain_der(client.transport.get_extra_info("ssl_object"))
            if req.verify is not None:
                reason = req.verify(chain, mx_host)
                if reason is not None:
                    return Outcome(False, tls=True, reason=reason)
                authenticated = True
            elif req.report:
                req.report("success", "")
        await client.sendmail("a@example.org", ["b@dane.test"], message)
        return Outcome(True, tls=tls, authenticated=authenticated)
    finally:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Any]:
    """A real store on SQLite, for tests whose subject is not the store (the MTA-STS
    cache and TLS-RPT tests use ``store``, which runs on both backends)."""
    from mailstack.store import Store

    s = Store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", tmp_path / "blobs")
    await s.open()
    yield s
    await s.close()

"""Fixtures for delivery to the internet: a fake clock, a fake DNS resolver (the
internet is the only thing faked), remote MX servers on loopback (aiosmtpd with
scripted replies, or a raw scripted server for faults), and an app whose transport map
points remote domains at them."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Envelope as AioEnvelope
from aiosmtpd.smtp import Session as AioSession

from mailstack.app import App
from mailstack.config import Settings
from mailstack.outbound.routing import DnsNoDomain, DnsTemporary, MxAnswer
from mailstack.store.queue import QueueRow
from mailstack.tls import server_context
from tests.conftest import add_mailbox

PASSWORD = "correct horse battery"
T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeResolver:
    """MX and address answers from dicts; a value that is an exception is raised."""

    def __init__(self) -> None:
        self.mx_answers: dict[str, MxAnswer | Exception] = {}
        self.hosts: dict[str, list[str] | Exception] = {}
        self.queries: list[tuple[str, str]] = []

    async def mx(self, domain: str) -> MxAnswer:
        self.queries.append(("MX", domain))
        answer = self.mx_answers.get(domain, DnsNoDomain(domain))
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def addresses(self, host: str) -> list[str]:
        self.queries.append(("A", host))
        answer = self.hosts.get(host, DnsNoDomain(host))
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class Sink:
    """An aiosmtpd MX on loopback. ``rcpt_replies[addr]`` and ``data_replies`` are
    scripts: each attempt takes the next reply (the last one repeats); none: 250."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)
    data_replies: list[str] = field(default_factory=list)
    extra_ehlo: list[str] = field(default_factory=list)
    connections: int = 0
    server: Any = None

    @staticmethod
    def _next(script: list[str]) -> str | None:
        if not script:
            return None
        return script.pop(0) if len(script) > 1 else script[0]

    async def handle_EHLO(self, server: AioSMTP, session: AioSession, envelope: AioEnvelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], *(f"250-{x}" for x in self.extra_ehlo), responses[-1]]

    async def handle_RCPT(self, server: AioSMTP, session: AioSession, envelope: AioEnvelope,
                          address: str, options: list[str]) -> str:
        reply = self._next(self.rcpt_replies.get(address, []))
        if reply is None or reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            return reply or "250 OK"
        return reply

    async def handle_DATA(self, server: AioSMTP, session: AioSession,
                          envelope: AioEnvelope) -> str:
        reply = self._next(self.data_replies)
        if reply is None or reply.startswith("2"):
            assert isinstance(envelope.content, bytes)
            self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                          envelope.content, list(envelope.mail_options)))
        return reply or "250 2.0.0 OK"

    def for_rcpt(self, rcpt: str) -> list[Received]:
        return [m for m in self.messages if rcpt in m.rcpt_tos]


async def start_sink(tls_ctx: ssl.SSLContext | None = None, *, smtputf8: bool = True,
                     host: str = "127.0.0.1", **kw: Any) -> Sink:
    sink = Sink(**kw)

    def factory() -> AioSMTP:
        sink.connections += 1
        return AioSMTP(sink, hostname="mx.remote.example", tls_context=tls_ctx,
                       enable_SMTPUTF8=smtputf8, timeout=30)

    sink.server = await asyncio.get_running_loop().create_server(factory, host, 0)
    sink.port = sink.server.sockets[0].getsockname()[1]
    return sink


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start_script(script: Script) -> tuple[Any, int]:
    """A raw TCP server running ``script`` per connection (faults, injection)."""
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await script(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@dataclass
class Outbound:
    """An app with hosted senders, outbound enabled, a fake clock and fake DNS."""

    app: App
    clock: FakeClock
    resolver: FakeResolver
    client_ssl: ssl.SSLContext

    @property
    def store(self) -> Any:
        assert self.app.store is not None
        return self.app.store

    async def submit(self, sender: str, recipients: list[str], data: bytes,
                     password: str = PASSWORD) -> None:
        await aiosmtplib.send(data, sender=sender, recipients=recipients,
                              hostname="127.0.0.1", port=self.app.ports["submissions"],
                              use_tls=True, tls_context=self.client_ssl,
                              username=sender, password=password, timeout=30)

    async def run(self) -> int:
        assert self.app.runner is not None
        return await self.app.runner.run_once()

    async def rows(self) -> list[QueueRow]:
        rows: list[QueueRow] = await self.store.queue_rows()
        return rows

    async def advance_to_next(self) -> bool:
        """Move the clock to the next due row and run a pass; False if none waits."""
        due = await self.store.next_due()
        if due is None:
            return False
        self.clock.now = max(self.clock.now, due)
        await self.run()
        return True

    async def inbox(self, address: str) -> list[EmailMessage]:
        addr = await self.store.get_address(address)
        folder = await self.store.get_folder(addr.id, "INBOX")
        out = []
        for m in await self.store.list_messages(folder.id):
            msg = email.message_from_bytes(await self.store.message_bytes(m),
                                           policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out


def status_fields(report: EmailMessage) -> list[dict[str, str]]:
    """The per-recipient blocks of a delivery-status report (keys lower-case)."""
    part = next(p for p in report.walk() if p.get_content_type() in (
        "message/delivery-status", "message/global-delivery-status"))
    blocks = [{k.lower(): str(v) for k, v in b.items()} for b in part.get_payload()]
    return blocks[1:]


@pytest.fixture
def server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    return server_context(*tls_files)


@pytest.fixture
async def outbound_factory(settings_factory: Callable[..., Settings],
                           client_ssl: ssl.SSLContext
                           ) -> AsyncIterator[Callable[..., Awaitable[Outbound]]]:
    started: list[App] = []

    async def factory(transport: dict[str, str] | None = None, *,
                      resolver: FakeResolver | None = None, clock: FakeClock | None = None,
                      **outbound: Any) -> Outbound:
        clock = clock or FakeClock()
        resolver = resolver or FakeResolver()
        settings = settings_factory(outbound={
            "enabled": True, "poll_interval_seconds": 3600.0,
            "transport": dict(transport or {}), **outbound})
        app = App(settings, clock=clock, resolver=resolver)
        await app.start()
        started.append(app)
        if await app.store.get_domain("example.com") is None:  # type: ignore[union-attr]
            await add_mailbox(app, "anna@example.com", PASSWORD)
            await add_mailbox(app, "bob@example.com", PASSWORD)
        return Outbound(app, clock, resolver, client_ssl)

    yield factory
    for app in started:
        await app.stop(grace=0)


def message(sender: str, to: str, subject: str = "test", body: str = "hello",
            extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\n{extra}Subject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\n{body}\r\n").encode()


__all__ = ["DnsTemporary", "MxAnswer"]

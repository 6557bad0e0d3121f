"""The asyncio layer of the SMTP client: one session to one server address.

The protocol itself (reply parsing, commands, DATA encoding, the transaction state
machine) is in ``smtpproto``; this module only moves bytes and keeps time.

Implementation notes (invariants):
- Every wait has a deadline (RFC 5321 §4.5.3.2; ``Timeouts`` from the settings); a
  timeout, a closed connection or a reply that is not SMTP raises ``SmtpError``
  (temporary), never anything else, so one bad server costs only its own attempt.
- TLS is executed exactly as the ``TlsRequirement`` says (``transport.py``): with
  ``require_tls`` no STARTTLS or a failed handshake is an error (4.7.4 / 4.7.5), never
  plaintext; otherwise a failed handshake is reported as ``TlsFailed`` so the caller
  reconnects without STARTTLS.
- Anything the server sent after its reply to STARTTLS and before the handshake is
  thrown away (response injection, CVE-2011-0411 class), both our parser's buffer and
  the stream reader's.
- AUTH (PLAIN, else LOGIN) is only ever sent over TLS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..config import OutboundSettings
from ..tls import tls_summary
from .smtpproto import (
    Capabilities,
    DataEncoder,
    Envelope,
    RemoteProtocolError,
    Reply,
    ReplyParser,
    Transaction,
)
from .transport import TlsRequirement

log = logging.getLogger("mailstack.outbound")


@dataclass(frozen=True)
class Timeouts:
    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0

    @classmethod
    def from_settings(cls, o: OutboundSettings) -> Timeouts:
        return cls(o.connect_timeout_seconds, o.greeting_timeout_seconds,
                   o.command_timeout_seconds, o.data_init_timeout_seconds,
                   o.data_block_timeout_seconds, o.data_end_timeout_seconds)


class SmtpError(Exception):
    """The session failed. ``permanent`` only for a 5xx reply that ends the session
    (e.g. 554 greeting); ``status`` is the RFC 3463 code to record."""

    def __init__(self, text: str, *, status: str = "4.4.2", reply: Reply | None = None,
                 permanent: bool = False) -> None:
        super().__init__(text)
        self.status = status
        self.reply = reply
        self.permanent = permanent


class TlsFailed(SmtpError):
    """The TLS handshake failed on an opportunistic session: retry without STARTTLS."""


def unverified_context() -> ssl.SSLContext:
    """Opportunistic TLS (RFC 7435): encrypt, accept any certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def peer_chain(obj: Any) -> list[bytes]:
    """The peer's certificate chain, DER, leaf first (the leaf alone if the chain is not
    reachable in this Python)."""
    inner = getattr(obj, "_sslobj", None)
    getter = getattr(inner, "get_unverified_chain", None)
    if getter is not None:
        try:
            return [c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
                    for c in getter() or []]
        except Exception:  # fall back to the leaf
            pass
    leaf = obj.getpeercert(binary_form=True) if obj is not None else None
    return [leaf] if leaf else []


class Session:
    """An open SMTP session (after the greeting, EHLO, STARTTLS and AUTH)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 host: str, address: str, timeouts: Timeouts) -> None:
        self.reader, self.writer = reader, writer
        self.host, self.address = host, address
        self.timeouts = timeouts
        self.parser = ReplyParser()
        self.pending: list[Reply] = []
        self.caps = Capabilities()
        self.tls = ""  # TLS summary once encrypted
        self.policy = ""  # the TlsRequirement's policy this session was opened under
        self.authenticated = False  # verify() accepted the peer (dane / mta-sts)
        self.messages = 0
        self.broken = False

    @property
    def remote_mta(self) -> str:
        return self.host

    async def read_reply(self, timeout: float, what: str) -> Reply:
        while not self.pending:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
            except TimeoutError:
                self.broken = True
                raise SmtpError(f"{self.host}[{self.address}]: timeout waiting for the "
                                f"reply to {what}", status="4.4.2") from None
            except (OSError, ssl.SSLError) as exc:
                self.broken = True
                raise SmtpError(f"{self.host}[{self.address}]: connection lost during "
                                f"{what}: {exc}") from exc
            if not data:
                self.broken = True
                raise SmtpError(f"{self.host}[{self.address}]: connection closed during "
                                f"{what}")
            try:
                self.pending += self.parser.feed(data)
            except RemoteProtocolError as exc:
                self.broken = True
                raise SmtpError(f"{self.host}[{self.address}]: protocol error during "
                                f"{what}: {exc}", status="4.5.0") from exc
        return self.pending.pop(0)

    async def write(self, data: bytes, timeout: float, what: str) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), timeout)
        except TimeoutError:
            self.broken = True
            raise SmtpError(f"{self.host}[{self.address}]: timeout sending {what}") from None
        except (OSError, ssl.SSLError) as exc:
            self.broken = True
            raise SmtpError(f"{self.host}[{self.address}]: connection lost sending "
                            f"{what}: {exc}") from exc

    async def command(self, line: bytes, timeout: float | None = None) -> Reply:
        what = line.split(b" ", 1)[0].split(b":", 1)[0].strip().decode("ascii", "replace")
        await self.write(line, timeout or self.timeouts.command, what)
        return await self.read_reply(timeout or self.timeouts.command, what)

    async def ehlo(self, name: str) -> None:
        reply = await self.command(f"EHLO {name}\r\n".encode())
        if reply.code == 250:
            self.caps = Capabilities.from_ehlo(reply)
            return
        if reply.code >= 500:  # RFC 5321 §3.2: fall back to HELO
            reply = await self.command(f"HELO {name}\r\n".encode())
            if reply.code == 250:
                self.caps = Capabilities()
                return
        raise SmtpError(f"{self.host}: EHLO/HELO refused: {reply}", reply=reply,
                        status=reply.enhanced, permanent=reply.permanent)

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        reply = await self.command(b"STARTTLS\r\n")
        if reply.code != 220:
            raise TlsFailed(f"{self.host}: STARTTLS refused: {reply}", status="4.7.5")
        # Response injection: bytes after the 220 and before the handshake are dropped.
        injected = self.parser.discard() or bool(self.pending)
        self.pending.clear()
        buf: Any = getattr(self.reader, "_buffer", None)
        if buf:
            injected = True
            buf.clear()
        if injected:
            log.warning("outbound %s[%s]: discarded data sent before the TLS handshake",
                        self.host, self.address)
        try:
            await asyncio.wait_for(self.writer.start_tls(
                ctx, server_hostname=self.host), self.timeouts.command)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            self.broken = True
            raise TlsFailed(f"{self.host}[{self.address}]: TLS handshake failed: "
                            f"{exc or type(exc).__name__}", status="4.7.5") from exc
        self.tls = tls_summary(self.writer.get_extra_info("ssl_object"))

    async def auth(self, user: str, password: str) -> None:
        if not self.tls:
            raise SmtpError(f"{self.host}: refusing to send AUTH without TLS",
                            status="4.7.4")
        if "PLAIN" in self.caps.auth:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            reply = await self.command(f"AUTH PLAIN {token}\r\n".encode())
        elif "LOGIN" in self.caps.auth:
            reply = await self.command(b"AUTH LOGIN\r\n")
            for value in (user, password):
                if reply.code != 334:
                    break
                reply = await self.command(base64.b64encode(value.encode()) + b"\r\n")
        else:
            raise SmtpError(f"{self.host}: offers no AUTH PLAIN or LOGIN", status="4.7.4")
        if reply.code != 235:
            raise SmtpError(f"{self.host}: AUTH failed: {reply}", status="4.7.8",
                            reply=reply)

    async def send(self, env: Envelope, chunks: AsyncIterator[bytes]) -> dict[int, Reply]:
        """One transaction; returns the deciding reply per recipient index. Raises
        SmtpError when the session breaks (then nothing is known to be delivered)."""
        if self.messages:
            reply = await self.command(b"RSET\r\n")
            if reply.code != 250:
                raise SmtpError(f"{self.host}: RSET refused: {reply}")
        self.messages += 1
        tx = Transaction(env, self.caps)
        out = tx.start()
        await self.write(out, self.timeouts.command, "MAIL")
        while not tx.done:
            timeout = self.timeouts.command
            if tx.expecting and out == b"DATA\r\n":
                timeout = self.timeouts.data_init
            reply = await self.read_reply(timeout, out.split(b" ", 1)[0].decode(
                "ascii", "replace").strip())
            out = tx.on_reply(reply)
            if out:
                await self.write(out, self.timeouts.command, out.split(b" ", 1)[0].decode(
                    "ascii", "replace").strip())
            if tx.wants_data:
                enc = DataEncoder()
                async for chunk in chunks:
                    data = enc.feed(chunk)
                    if data:
                        await self.write(data, self.timeouts.data_block, "the message")
                await self.write(enc.finish(), self.timeouts.data_block, "the message")
                reply = await self.read_reply(self.timeouts.data_end, "end of data")
                tx.on_reply(reply)
        return tx.results

    async def quit(self) -> None:
        if not self.broken:
            with contextlib.suppress(SmtpError):
                await self.write(b"QUIT\r\n", min(self.timeouts.command, 10), "QUIT")
                await self.read_reply(min(self.timeouts.command, 10), "QUIT")
        await self.close()

    def abort(self) -> None:
        self.broken = True
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 5)


async def open_session(host: str, address: str, port: int, *, helo: str,
                       tls: TlsRequirement, timeouts: Timeouts, use_starttls: bool = True,
                       auth: tuple[str, str] | None = None,
                       default_ctx: ssl.SSLContext | None = None) -> Session:
    """Connect, read the greeting, EHLO, STARTTLS as ``tls`` says, EHLO again, AUTH."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, limit=1 << 20), timeouts.connect)
    except (TimeoutError, OSError) as exc:
        raise SmtpError(f"{host}[{address}]:{port}: cannot connect: "
                        f"{exc or type(exc).__name__}") from exc
    s = Session(reader, writer, host, address, timeouts)
    s.policy = tls.policy
    try:
        greeting = await s.read_reply(timeouts.greeting, "the greeting")
        if greeting.code != 220:  # RFC 5321 §3.1: 554 means "no service here"
            raise SmtpError(f"{host}[{address}]: greeting {greeting}", reply=greeting,
                            status=greeting.enhanced, permanent=greeting.permanent)
        await s.ehlo(helo)
        if s.caps.starttls and use_starttls:
            try:
                await s.starttls(tls.ssl_context or default_ctx or unverified_context())
            except TlsFailed as exc:
                if tls.report is not None:
                    tls.report("validation-failure", str(exc))
                raise
            if tls.verify is None and tls.report is not None:
                tls.report("success", "")
            if tls.verify is not None:
                problem = tls.verify(peer_chain(writer.get_extra_info("ssl_object")), host)
                if problem is not None:
                    raise SmtpError(f"{host}: TLS peer not authenticated ({tls.policy}): "
                                    f"{problem}", status="4.7.5")
                # transport.py: "mta-sts-testing" only reports, it authenticates nothing
                s.authenticated = tls.policy in ("dane", "mta-sts")
            await s.ehlo(helo)
        elif tls.require_tls:
            if tls.report is not None:
                tls.report("starttls-not-supported", "")
            raise SmtpError(f"{host}[{address}]: STARTTLS not offered but TLS is required "
                            f"({tls.policy})", status="4.7.4")
        if auth is not None:
            await s.auth(*auth)
    except TlsFailed as exc:
        await s.close()
        if tls.require_tls:
            raise SmtpError(str(exc), status="4.7.5") from exc
        raise
    except Exception:
        await (s.close() if s.broken else s.quit())
        raise
    except BaseException:  # cancelled (shutdown): no goodbye, no waiting
        s.abort()
        raise
    return s


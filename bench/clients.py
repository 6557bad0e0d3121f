"""Minimal asyncio SMTP and IMAP clients used as the load generator for EVERY server.

Why not aiosmtplib/imaplib: the clients share the 2 cores with the servers, so they must
cost little CPU per operation, and the SMTP latency must be timed from the moment the
final ``.`` has been written to the moment the ``250`` arrives (aiosmtplib's ``data()``
times the transfer too). These clients do one command at a time (no pipelining), parse
only what they must (reply codes, tagged status, IMAP literals) and keep bytes as bytes.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time

from .common import HOST

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class ProtocolError(Exception):
    pass


class Smtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port: int, timeout: float = 30.0) -> Smtp:
        r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=1 << 20),
                                      timeout)
        c = cls(r, w)
        code, _ = await c.reply()
        if code != 220:
            raise ProtocolError(f"greeting {code}")
        code, _ = await c.cmd(b"EHLO client.bench.test")
        if code != 250:
            raise ProtocolError(f"EHLO {code}")
        return c

    async def reply(self) -> tuple[int, bytes]:
        lines = []
        while True:
            line = await self.r.readline()
            if not line:
                raise ProtocolError("connection closed")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)

    async def cmd(self, line: bytes) -> tuple[int, bytes]:
        self.w.write(line + b"\r\n")
        return await self.reply()

    async def auth_plain(self, user: str, password: str) -> None:
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        code, text = await self.cmd(b"AUTH PLAIN " + token)
        if code != 235:
            raise ProtocolError(f"AUTH {code} {text!r}")

    async def send(self, sender: str, rcpt: str, data: bytes) -> float:
        """One transaction; returns seconds from end of DATA to the final reply.
        Raises ProtocolError on any non-2xx/3xx reply (after RSET)."""
        code, text = await self.cmd(f"MAIL FROM:<{sender}>".encode())
        if code != 250:
            await self.cmd(b"RSET")
            raise ProtocolError(f"MAIL {code} {text!r}")
        code, text = await self.cmd(f"RCPT TO:<{rcpt}>".encode())
        if code != 250:
            await self.cmd(b"RSET")
            raise ProtocolError(f"RCPT {code} {text!r}")
        code, text = await self.cmd(b"DATA")
        if code != 354:
            raise ProtocolError(f"DATA {code} {text!r}")
        self.w.write(data)
        self.w.write(b".\r\n")
        await self.w.drain()
        t0 = time.perf_counter()
        code, text = await self.reply()
        dt = time.perf_counter() - t0
        if code != 250:
            raise ProtocolError(f"end of data {code} {text!r}")
        return dt

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.cmd(b"QUIT"), 5)
        except (OSError, ProtocolError, TimeoutError):
            pass
        self.w.close()


class Imap:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer
        self.n = 0
        self.last_tagged = b""

    @classmethod
    async def connect(cls, port: int, timeout: float = 60.0) -> Imap:
        r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=1 << 22),
                                      timeout)
        c = cls(r, w)
        greeting = await asyncio.wait_for(r.readline(), timeout)
        if not greeting.startswith(b"* OK"):
            w.close()
            raise ProtocolError(f"greeting {greeting!r}")
        return c

    def _tag(self) -> bytes:
        self.n += 1
        return b"a%d" % self.n

    async def _read_response(self, tag: bytes) -> tuple[bytes, list[bytes]]:
        """Untagged lines (literals inlined) and the tagged status word."""
        untagged: list[bytes] = []
        prefix = tag + b" "
        while True:
            line = await self.r.readline()
            if not line:
                raise ProtocolError("connection closed")
            while (m := _LITERAL.search(line)) is not None:
                data = await self.r.readexactly(int(m.group(1)))
                line = line + data + await self.r.readline()
            if line.startswith(prefix):
                self.last_tagged = line.rstrip()
                status = line[len(prefix):].split(b" ", 1)[0]
                return status, untagged
            untagged.append(line)

    async def cmd(self, command: bytes, literal: bytes | None = None,
                  expect_ok: bool = True) -> list[bytes]:
        tag = self._tag()
        if literal is None:
            self.w.write(tag + b" " + command + b"\r\n")
        else:
            self.w.write(tag + b" " + command + b" {%d}\r\n" % len(literal))
            cont = await self.r.readline()
            if not cont.startswith(b"+"):
                raise ProtocolError(f"no continuation for literal: {cont!r}")
            self.w.write(literal + b"\r\n")
        status, untagged = await self._read_response(tag)
        if expect_ok and status != b"OK":
            raise ProtocolError(f"{command[:20]!r} -> {self.last_tagged[:160]!r}")
        return untagged

    async def login(self, user: str, password: str) -> None:
        await self.cmd(f'LOGIN "{user}" "{password}"'.encode())

    async def idle_start(self) -> bytes:
        tag = self._tag()
        self.w.write(tag + b" IDLE\r\n")
        while True:
            line = await self.r.readline()
            if not line:
                raise ProtocolError("connection closed in IDLE")
            if line.startswith(b"+"):
                return tag
            if line.startswith(tag + b" "):
                raise ProtocolError(f"IDLE refused: {line!r}")

    async def idle_done(self, tag: bytes) -> None:
        self.w.write(b"DONE\r\n")
        await self._read_response(tag)

    def abort(self) -> None:
        self.w.close()

    async def logout(self) -> None:
        try:
            await asyncio.wait_for(self.cmd(b"LOGOUT", expect_ok=False), 5)
        except (OSError, ProtocolError, TimeoutError, asyncio.IncompleteReadError):
            pass
        self.w.close()


class Pop3:
    """One POP3 session (RFC 1939): single-line and multi-line replies, bytes kept."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, port: int, timeout: float = 30.0) -> Pop3:
        r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port, limit=1 << 22),
                                      timeout)
        c = cls(r, w)
        greeting = await asyncio.wait_for(r.readline(), timeout)
        if not greeting.startswith(b"+OK"):
            w.close()
            raise ProtocolError(f"greeting {greeting!r}")
        return c

    async def cmd(self, line: bytes) -> bytes:
        self.w.write(line + b"\r\n")
        reply = await self.r.readline()
        if not reply.startswith(b"+OK"):
            raise ProtocolError(f"{line.split(b' ')[0]!r} -> {reply[:120]!r}")
        return reply

    async def multi(self, line: bytes) -> list[bytes]:
        """A command with a multi-line reply; the lines (dot-unstuffed, CRLF kept)."""
        await self.cmd(line)
        lines = []
        while True:
            x = await self.r.readline()
            if not x:
                raise ProtocolError("connection closed in a multi-line reply")
            if x == b".\r\n":
                return lines
            lines.append(x[1:] if x.startswith(b"..") else x)

    async def login(self, user: str, password: str) -> None:
        await self.cmd(f"USER {user}".encode())
        await self.cmd(f"PASS {password}".encode())

    async def quit(self) -> None:
        try:
            await asyncio.wait_for(self.cmd(b"QUIT"), 5)
        except (OSError, ProtocolError, TimeoutError):
            pass
        self.w.close()

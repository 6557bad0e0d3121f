"""Fixtures for the IMAP server tests: a started app with one mailbox, and helpers to
drive blocking client libraries (imaplib, imapclient) from a thread so the server's
event loop keeps running."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from mailstack.app import App
from tests.conftest import add_mailbox

ADDR = "anna@example.com"
PW = "secret-pw"

MESSAGE = (b"From: Bob Sender <bob@example.org>\r\n"
           b"To: Anna <anna@example.com>\r\n"
           b"Subject: Hello there\r\n"
           b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
           b"Message-ID: <m1@example.org>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n"
           b"\r\n"
           b"Hello Anna,\r\nthis is the body.\r\n")


def message(subject: str, body: str = "Some body text") -> bytes:
    return (f"From: bob@example.org\r\nTo: anna@example.com\r\nSubject: {subject}\r\n"
            f"Date: Tue, 2 Jan 2024 10:00:00 +0000\r\n\r\n{body}\r\n").encode()


@pytest.fixture
async def imap_app(app_factory: Callable[..., Any]) -> App:
    app: App = await app_factory()
    await add_mailbox(app, ADDR, PW)
    return app


async def inbox_id(app: App, address: str = ADDR) -> int:
    assert app.store is not None
    addr = await app.store.get_address(address)
    assert addr is not None
    folder = await app.store.get_folder(addr.id, "INBOX")
    assert folder is not None
    return folder.id


async def folder_of(app: App, name: str, address: str = ADDR) -> int:
    assert app.store is not None
    addr = await app.store.get_address(address)
    assert addr is not None
    folder = await app.store.get_folder(addr.id, name)
    assert folder is not None
    return folder.id


def imaps(app: App, ctx: ssl.SSLContext, login: bool = True) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL("127.0.0.1", app.ports["imaps"], ssl_context=ctx, timeout=20)
    if login:
        client.login(ADDR, PW)
    return client


def plain(app: App, login: bool = True) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", app.ports["imap"], timeout=20)
    if login:
        client.login(ADDR, PW)
    return client


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking client scenario in a thread."""
    return await asyncio.to_thread(fn, *args)


class Raw:
    """A raw IMAP connection for byte-level tests (asyncio, no client library)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext | None = None) -> Raw:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="mail.example.net" if ctx else None,
            limit=16 * 1024 * 1024)
        raw = cls(reader, writer)
        greeting = await raw.line()
        assert greeting.startswith(b"* OK"), greeting
        return raw

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 30)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until(self, tag: bytes) -> list[bytes]:
        """All lines up to and including the tagged reply ``tag``."""
        lines = []
        while True:
            line = await self.line()
            if not line:
                raise ConnectionError(f"closed; got {lines!r}")
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    async def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        await self.send(tag + b" " + text + b"\r\n")
        return await self.until(tag)

    async def login(self) -> None:
        out = await self.cmd(b"L", f'LOGIN {ADDR} "{PW}"'.encode())
        assert out[-1].startswith(b"L OK"), out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def seen_as_recent(app: App, address: str = ADDR) -> None:
    """Let an earlier session have seen every message as recent (RFC 3501 §2.3.2), so
    tests about other things see no \\Recent flag in IMAP4rev1 sessions."""
    assert app.store is not None
    addr = await app.store.get_address(address)
    assert addr is not None
    for f in await app.store.list_folders(addr.id):
        await app.store.claim_recent(f.id, f.uidnext)

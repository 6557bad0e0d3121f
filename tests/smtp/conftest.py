"""Fixtures for the SMTP front-end tests: a running app with hosted addresses, and
helpers that read back what the store holds (every refusal checks "nothing stored")."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from mailstack.app import App
from tests.conftest import add_mailbox

PASSWORD = "correct horse battery"


@dataclass
class Env:
    app: App
    client_ssl: ssl.SSLContext

    @property
    def store(self) -> Any:
        assert self.app.store is not None
        return self.app.store

    def port(self, name: str) -> int:
        return self.app.ports[name]

    async def inbox(self, email: str) -> list[bytes]:
        addr = await self.store.get_address(email)
        assert addr is not None, email
        folder = await self.store.get_folder(addr.id, "INBOX")
        msgs = await self.store.list_messages(folder.id)
        return [await self.store.message_bytes(m) for m in msgs]

    async def total_stored(self) -> int:
        """Every message row in every folder, plus every queued recipient."""
        n = 0
        for addr in await self.store.list_addresses():
            for folder in await self.store.list_folders(addr.id):
                n += (await self.store.folder_status(folder.id)).messages
        return n + len(await self.store.list_queue())


async def populate(app: App) -> None:
    await add_mailbox(app, "anna@example.com", PASSWORD)
    await add_mailbox(app, "bob@example.com", PASSWORD)
    await add_mailbox(app, "carl@example.com", PASSWORD)
    await add_mailbox(app, "noreply@example.com", PASSWORD, kind="no-reply")
    await add_mailbox(app, "frida@free.example", PASSWORD, plan="free")
    await add_mailbox(app, "stan@std.example", PASSWORD, plan="standard")


@pytest.fixture
async def env(app_factory: Callable[..., Any], client_ssl: ssl.SSLContext) -> Env:
    app = await app_factory()
    await populate(app)
    return Env(app, client_ssl)


class Raw:
    """A raw SMTP client for what libraries refuse to send (pipelined STARTTLS,
    bare CR/LF): write bytes, read whole replies (multi-line joined)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ssl_ctx: ssl.SSLContext | None = None) -> Raw:
        import asyncio

        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl_ctx, server_hostname="127.0.0.1" if ssl_ctx else None)
        raw = cls(reader, writer)
        code, _ = await raw.reply()
        assert code == 220
        return raw

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await self.reader.readline()
            assert line, "connection closed while waiting for a reply"
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                break
        return int(lines[-1][:3]), "\n".join(x[4:] for x in lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str) -> tuple[int, str]:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        await self.writer.start_tls(ctx, server_hostname="127.0.0.1")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def plain_auth(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def message(sender: str, to: str, subject: str = "test", extra: str = "",
            body: str = "hello") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\n{extra}Subject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\n{body}\r\n").encode()

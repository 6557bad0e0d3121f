"""POP3 test helpers: a mailbox with a password, blocking poplib / raw-socket clients run
in a thread (the server shares the test's event loop), and waiting for a session to end.
"""

from __future__ import annotations

import asyncio
import poplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from mailstack.app import App
from mailstack.store import Address, Folder
from tests.conftest import add_mailbox

T = TypeVar("T")
USER, PASSWORD = "anna@example.com", "secret"


@dataclass
class Box:
    app: App
    address: Address
    inbox: Folder

    @property
    def store(self) -> Any:
        assert self.app.store is not None
        return self.app.store

    def port(self, name: str = "pop3s") -> int:
        return self.app.ports[name]

    async def append(self, data: bytes) -> Any:
        return await self.store.append(self.inbox.id, data)

    async def uids(self) -> list[int]:
        return [m.uid for m in await self.store.list_messages(self.inbox.id)]

    async def sessions_gone(self) -> None:
        """Wait (bounded) until every POP3 session of the app has ended."""
        for _ in range(500):
            if not any(fe.sessions for n, fe in self.app.frontends.items()  # type: ignore
                       if n.startswith("pop3")):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("POP3 sessions did not end")


async def make_box(app: App) -> Box:
    addr = await add_mailbox(app, USER, PASSWORD)
    assert app.store is not None
    inbox = await app.store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    return Box(app, addr, inbox)


@pytest.fixture
async def box(app: App) -> Box:
    return await make_box(app)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Blocking client code must not block the loop the server runs on."""
    return await asyncio.to_thread(fn, *args)


def pop3s(port: int, ctx: ssl.SSLContext, login: bool = True) -> poplib.POP3_SSL:
    p = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=10)
    if login:
        p.user(USER)
        p.pass_(PASSWORD)
    return p


class Raw:
    """A line-level client for what poplib cannot do (pipelining, STLS injection)."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock: socket.socket = ctx.wrap_socket(sock, server_hostname="mail.example.net") \
            if ctx else sock
        self.buf = b""
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self.buf = self.buf, b""
                return rest
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.line()

    def multiline_body(self) -> bytes:
        """Raw body up to (not including) the terminating ".\\r\\n", still stuffed."""
        while True:
            if self.buf.startswith(b".\r\n"):
                self.buf = self.buf[3:]
                return b""
            idx = self.buf.find(b"\r\n.\r\n")
            if idx >= 0:
                body, self.buf = self.buf[:idx + 2], self.buf[idx + 5:]
                return body
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed inside a multi-line reply")
            self.buf += chunk

    def starttls(self, ctx: ssl.SSLContext) -> None:
        assert not self.buf, "pipelined data left before TLS"
        self.sock = ctx.wrap_socket(self.sock, server_hostname="mail.example.net")

    def close(self) -> None:
        self.sock.close()

    def login(self) -> bytes:
        assert self.cmd(b"USER " + USER.encode()).startswith(b"+OK")
        return self.cmd(b"PASS " + PASSWORD.encode())

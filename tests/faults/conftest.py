"""Fault-injection fixtures: a private PostgreSQL cluster (created, stopped and started
by the tests; never the shared server), apps on it, and small line clients for IMAP,
POP3 and SMTP (asyncio: the server runs on the test's own loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.app import App
from tests.conftest import make_settings
from tests.faults.pgcluster import PrivateCluster

ADDR, PW = "anna@example.com", "secret"
MESSAGE = b"From: bob@example.org\r\nTo: anna@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    if shutil.which("runuser") is None and os.geteuid() == 0:  # pragma: no cover
        pytest.fail("runuser is needed to run PostgreSQL as postgres")
    c = PrivateCluster()
    c.start()
    yield c
    c.destroy()


def _ensure_running(c: PrivateCluster) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):
        c.start()


@pytest.fixture
async def pg_url(cluster: PrivateCluster) -> AsyncIterator[str]:
    """A fresh database in the private cluster, as a store URL."""
    import asyncpg

    await asyncio.to_thread(_ensure_running, cluster)
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(cluster.dsn)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    yield f"postgresql+asyncpg://postgres@127.0.0.1:{cluster.port}/{name}"
    await asyncio.to_thread(_ensure_running, cluster)
    conn = await asyncpg.connect(cluster.dsn)
    with contextlib.suppress(Exception):
        await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
    await conn.close()


@pytest.fixture
async def pg_app_factory(pg_url: str, tmp_path: Path, tls_files: tuple[Path, Path]
                         ) -> AsyncIterator[Callable[..., Any]]:
    started: list[App] = []

    async def factory(**sections: dict[str, Any]) -> App:
        app = App(make_settings(tmp_path, pg_url, tls_files, **sections))
        await app.start()
        started.append(app)
        return app

    yield factory
    for app in started:
        with contextlib.suppress(Exception):
            await app.stop(grace=0)


class Lines:
    """A plaintext line client (IMAP, POP3 or SMTP)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1",
                      local_addr: tuple[str, int] | None = None) -> Lines:
        reader, writer = await asyncio.open_connection(host, port, local_addr=local_addr)
        return cls(reader, writer)

    async def line(self, timeout: float = 20) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def send(self, text: str) -> None:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()

    async def ask(self, text: str) -> bytes:
        """Send one line, return one reply line (POP3)."""
        await self.send(text)
        return await self.line()

    async def smtp(self, text: str) -> bytes:
        """Send one SMTP command; the last line of its (multi-line) reply."""
        await self.send(text)
        while True:
            line = await self.line()
            if len(line) < 4 or line[3:4] != b"-":
                return line

    async def imap(self, tag: str, text: str) -> list[bytes]:
        await self.send(f"{tag} {text}")
        out = []
        while True:
            line = await self.line()
            if not line:
                raise ConnectionError(f"closed after {out!r}")
            out.append(line)
            if line.startswith(tag.encode() + b" "):
                return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def eventually(check: Callable[[], Any], timeout: float = 30.0,
                     step: float = 0.2) -> Any:
    """Poll ``check`` (sync or async) until it returns something true (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)

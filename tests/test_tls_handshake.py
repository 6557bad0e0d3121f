"""Slow clients (docs/behaviour.md §12): a client that opens a connection to an implicit-TLS port,
or says STARTTLS, and never completes the handshake is dropped after
``server.tls_handshake_timeout_seconds``; other clients are served meanwhile."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closes the connection (EOF or reset) within 20 s."""
    try:
        while await asyncio.wait_for(reader.read(1024), 20):
            pass
    except ConnectionError:
        pass
    return True


@pytest.mark.parametrize("listener", ["submissions", "imaps", "pop3s"])
async def test_unfinished_implicit_tls_handshake_dropped(app_factory: Any, listener: str,
                                                         client_ssl: ssl.SSLContext) -> None:
    app = await app_factory(server={"tls_handshake_timeout_seconds": 1.0})
    port = app.ports[listener]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # no handshake
    try:
        # a well-behaved client is served while the silent one waits
        r2, w2 = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl,
                                               server_hostname="localhost")
        greeting = await asyncio.wait_for(r2.readline(), 10)
        assert greeting[:1] in (b"2", b"*", b"+")
        w2.close()
        assert await closed_by_server(reader)
    finally:
        writer.close()


async def test_unfinished_starttls_handshake_dropped(app_factory: Any) -> None:
    app = await app_factory(server={"tls_handshake_timeout_seconds": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["imap"])
    try:
        await reader.readline()  # greeting
        writer.write(b"a STARTTLS\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"a OK")
        assert await closed_by_server(reader)  # we never start the handshake
    finally:
        writer.close()

"""Half-open connections to implicit-TLS ports (993, 995, 465) are counted per client
IP at accept time, before any TLS, and pending handshakes are capped overall: past
the caps a connection is closed at once, and other clients are still served
(docs/behaviour.md §1, §12). Bounded: a few dozen loopback connections."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from mailstack.app import App
from tests.faults.conftest import eventually

PORTS = ("imaps", "pop3s", "submissions")


async def _flood(port: int, n: int, ip: str) -> tuple[list[asyncio.StreamWriter],
                                                       list[asyncio.Task[bytes]]]:
    """``n`` TCP connections from ``ip`` that never start TLS; a task per connection
    ends when the server closes it."""
    writers, reads = [], []
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
        writers.append(w)
        reads.append(asyncio.ensure_future(r.read(1)))
    return writers, reads


async def _close(writers: list[asyncio.StreamWriter], reads: list[asyncio.Task[bytes]]
                 ) -> None:
    for t in reads:
        t.cancel()
    for w in writers:
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()


async def _tls_greeting(port: int, ctx: ssl.SSLContext, ip: str) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, local_addr=(ip, 0),
                                         server_hostname="mail.example.net")
    line = await asyncio.wait_for(r.readline(), 20)
    w.close()
    with contextlib.suppress(Exception):
        await w.wait_closed()
    return line


@pytest.mark.parametrize("name", PORTS)
async def test_per_ip_cap_before_tls(app_factory: Callable[..., Any], name: str,
                                     client_ssl: ssl.SSLContext) -> None:
    caps = {"max_connections_per_ip": 4}
    app: App = await app_factory(imap=caps, pop3=caps, smtp=caps,
                                 server={"max_pending_tls_handshakes": 50})
    port = app.ports[name]
    writers, reads = await _flood(port, 12, "127.0.0.1")
    try:
        # the server closes every connection past the cap, without waiting for TLS
        await eventually(lambda: sum(t.done() for t in reads) == 8, timeout=20)
        assert all(t.result() == b"" for t in reads if t.done())
        assert app.services is not None and app.services.handshakes.pending == 4
        # another client (another IP) is served meanwhile, over TLS
        greeting = await _tls_greeting(port, client_ssl, "127.0.0.2")
        assert greeting[:3] in (b"* O", b"+OK", b"220"), greeting
    finally:
        await _close(writers, reads)


async def test_pending_handshake_cap(app_factory: Callable[..., Any],
                                     client_ssl: ssl.SSLContext) -> None:
    app: App = await app_factory(imap={"max_connections_per_ip": 100},
                                 server={"max_pending_tls_handshakes": 6})
    assert app.services is not None
    port = app.ports["imaps"]
    writers, reads = await _flood(port, 6, "127.0.0.1")
    more, more_reads = await _flood(port, 10, "127.0.0.3")
    try:
        await eventually(lambda: all(t.done() for t in more_reads), timeout=20)
        assert not any(t.done() for t in reads)  # the first six are still pending
        assert app.services.handshakes.pending == 6
        assert app.services.handshakes.refused >= 10
    finally:
        await _close(writers, reads)
        await _close(more, more_reads)
    # once they are gone, a real client gets its handshake and greeting
    await eventually(lambda: app.services is not None
                     and app.services.handshakes.pending == 0, timeout=20)
    assert (await _tls_greeting(port, client_ssl, "127.0.0.2")).startswith(b"* OK")

"""End to end with Debian's Postfix as the remote MX (docs/behaviour.md §6): submit on
465 -> our queue -> Postfix on loopback (PIPELINING, DSN) -> its maildir holds the
message once, bytes intact."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import dkim
import pytest

from tests.cli.conftest import make_cli
from tests.outbound.zone import dkim_dnsfunc, parse_zone

from .conftest import Outbound, message
from .postfix_peer import PostfixPeer, require_postfix

Factory = Callable[..., Awaitable[Outbound]]


@pytest.fixture
async def postfix() -> AsyncIterator[PostfixPeer]:
    require_postfix()
    # Postfix's own users must reach the directory: not under pytest's 0700 tmp dirs.
    root = Path(tempfile.mkdtemp(prefix="mailstack-test-postfix-"))
    peer = PostfixPeer(root, "remote.example", ["x", "y"])
    try:
        await asyncio.to_thread(peer.start)
        yield peer
    finally:
        await asyncio.to_thread(peer.stop)
        shutil.rmtree(root, ignore_errors=True)


async def test_delivered_through_postfix_once(outbound_factory: Factory,
                                              postfix: PostfixPeer, tmp_path: Path,
                                              db_url: str) -> None:
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{postfix.port}"})
    cli = make_cli(tmp_path, db_url)  # the real command on the app's database
    await asyncio.to_thread(cli.ok, "dkim", "generate", "example.com")
    zone = parse_zone((await asyncio.to_thread(cli.ok, "dns", "example.com")).out,
                      "example.com")
    body = ".leading dot\r\n..\r\nlast line"
    await ob.submit("anna@example.com", ["x@remote.example", "y@remote.example"],
                    message("anna@example.com", "x@remote.example", "via postfix", body,
                            extra="Bcc: y@remote.example\r\n"))
    await ob.run()
    rows = await ob.rows()
    assert {r.state for r in rows} == {"delivered"}, [r.last_error for r in rows]
    assert all(r.history[-1]["reply"].startswith("250") for r in rows)
    for _ in range(300):  # Postfix delivers to the maildir on its own schedule
        if postfix.messages("x") and postfix.messages("y"):
            break
        await asyncio.sleep(0.1)
    (got,) = postfix.messages("x")
    assert len(postfix.messages("y")) == 1
    assert b"Subject: via postfix" in got
    assert body.encode().replace(b"\r\n", b"\n") in got  # maildir files use LF
    assert b"\nBcc:" not in got
    assert b"from mail.example.net" in got  # Postfix's Received: names our EHLO
    # signed at submission; the signatures survive our relay and Postfix's delivery
    crlf = got.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert crlf.count(b"DKIM-Signature:") == 2
    for i in range(2):
        assert dkim.DKIM(crlf).verify(idx=i, dnsfunc=dkim_dnsfunc(zone))
    await ob.run()
    await asyncio.sleep(0.3)
    assert len(postfix.messages("x")) == 1  # once

"""The octets of message content all SMTP connections hold in memory are bounded
(``smtp.max_inflight_message_bytes``): past it DATA and BDAT get 452 4.3.1, nothing is
stored, the budget is given back when a transaction ends, and other clients are served
(docs/behaviour.md §12). Spooling is off here (``spool_threshold_bytes = 0``): with it
on, a message the budget cannot hold goes to a spool file instead (tests/faults/
test_spool.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailstack.app import App
from tests.conftest import add_mailbox
from tests.faults.conftest import ADDR, Lines, eventually

KB = 1024
LINE = b"y" * 998 + b"\r\n"


def body(octets: int) -> bytes:
    return b"From: bob@example.org\r\nSubject: s\r\n\r\n" + LINE * (octets // len(LINE))


async def _open(app: App) -> Lines:
    c = await Lines.connect(app.ports["smtp"])
    assert (await c.line()).startswith(b"220 ")
    assert (await c.smtp("EHLO client.example.org")).startswith(b"250 ")
    return c


async def _data(c: Lines, octets: int) -> bytes:
    assert (await c.smtp("MAIL FROM:<bob@example.org>")).startswith(b"250 ")
    assert (await c.smtp(f"RCPT TO:<{ADDR}>")).startswith(b"250 ")
    assert (await c.smtp("DATA")).startswith(b"354 ")
    c.writer.write(body(octets))
    return await c.smtp(".")


async def test_inflight_message_budget(app_factory: Callable[..., Any]) -> None:
    app: App = await app_factory(smtp={"max_inflight_message_bytes": 1024 * KB,
                                           "spool_threshold_bytes": 0})
    assert app.store is not None and app.services is not None
    budget = app.services.message_budget
    addr = await add_mailbox(app, ADDR, "secret")
    inbox = await app.store.get_folder(addr.id, "INBOX")
    assert inbox is not None

    b = await _open(app)
    reply = await _data(b, 1500 * KB)  # more than the whole budget
    assert reply.startswith(b"452 4.3.1"), reply
    assert budget.used == 0 and await app.store.list_messages(inbox.id) == []

    # A holds 800 KiB in an unfinished BDAT transaction
    a = await _open(app)
    assert (await a.smtp("MAIL FROM:<bob@example.org>")).startswith(b"250 ")
    assert (await a.smtp(f"RCPT TO:<{ADDR}>")).startswith(b"250 ")
    chunk = body(800 * KB)
    a.writer.write(f"BDAT {len(chunk)}\r\n".encode() + chunk)
    assert (await a.line()).startswith(b"250 ")
    assert budget.used == len(chunk)
    # B: 300 KiB does not fit beside it, 100 KiB does
    assert (await _data(b, 300 * KB)).startswith(b"452 4.3.1")
    assert (await _data(b, 100 * KB)).startswith(b"250 ")
    # a further BDAT chunk of A past the budget: 452, A's transaction is over
    a.writer.write(b"BDAT 300000 LAST\r\n" + b"z" * 300000)
    assert (await a.line()).startswith(b"452 4.3.1")
    assert budget.used == 0
    assert (await _data(b, 300 * KB)).startswith(b"250 ")
    await eventually(lambda: budget.used == 0, timeout=10)
    assert len(await app.store.list_messages(inbox.id)) == 2
    await a.close()
    await b.close()

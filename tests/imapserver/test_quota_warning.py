"""The storage warning (docs/behaviour.md §3): when a delivery (SMTP) or an APPEND takes
an address past 90 % of its plan's storage quota, ONE warning mail reaches its INBOX;
further mail sends no second one until usage has dropped below 85 % and risen again.
Concurrent deliveries crossing the line together still send one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiosmtplib

from mailstack.app import App
from tests.conftest import add_mailbox
from tests.imapserver.conftest import ADDR, PW, inbox_id, message, plain, run

QUOTA = 40000
OVER = QUOTA * 90 // 100
SUBJECT = "Your mailbox is almost full"
FILL = message("fill", "\r\n".join(["z" * 90] * 11))  # ~1.4 kB as delivered


async def _app(app_factory: Callable[..., Any]) -> App:
    app: App = await app_factory(plans={"tiny": {"storage_quota": QUOTA}})
    await add_mailbox(app, ADDR, PW, plan="tiny")
    return app


async def _usage(app: App) -> int:
    assert app.store is not None
    addr = await app.store.get_address(ADDR)
    assert addr is not None
    return (await app.store.quota_usage(addr.id))[0]


async def _send(app: App, n: int = 1) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=app.ports["smtp"],
                               start_tls=False) as c:
        for _ in range(n):
            await c.sendmail("someone@example.org", [ADDR], FILL)
    assert app.services is not None
    await app.services.notifier.drain()


def _warnings(app: App) -> list[bytes]:
    """The warnings in INBOX, as an IMAP client sees them (their header blocks)."""
    c = plain(app)
    try:
        c.select("INBOX")
        typ, data = c.search(None, "SUBJECT", f'"{SUBJECT}"')
        assert typ == "OK"
        out = []
        for n in data[0].split():
            typ, got = c.fetch(n, "(BODY.PEEK[HEADER])")
            assert typ == "OK"
            out.append(got[0][1])
        return out
    finally:
        c.logout()


async def _count(app: App) -> int:
    assert app.store is not None
    return len(await app.store.list_messages(await inbox_id(app)))


async def test_one_warning_per_crossing_by_smtp(app_factory: Callable[..., Any]) -> None:
    app = await _app(app_factory)
    sent = 0
    while await _usage(app) <= OVER:
        assert await _count(app) == sent  # no warning below the line
        await _send(app)
        sent += 1
    warnings = await run(_warnings, app)
    assert len(warnings) == 1
    head = warnings[0]
    assert b"Auto-Submitted: auto-generated" in head and f"To: <{ADDR}>".encode() in head
    assert await _count(app) == sent + 1
    # more mail while above the line: no second warning
    await _send(app)
    assert len(await run(_warnings, app)) == 1
    assert await _usage(app) < QUOTA  # (still accepted: below the quota itself)

    # deleting below 85 % re-arms it; crossing again sends the second one
    def expunge_fills() -> None:
        c = plain(app)
        try:
            c.select("INBOX")
            typ, data = c.search(None, "SUBJECT", "fill")
            assert typ == "OK"
            ids = data[0].split()
            c.store(b",".join(ids[:len(ids) // 2]), "+FLAGS.SILENT", "(\\Deleted)")
            assert c.expunge()[0] == "OK"
        finally:
            c.logout()

    await run(expunge_fills)
    assert await _usage(app) < QUOTA * 85 // 100
    while await _usage(app) <= OVER:
        assert len(await run(_warnings, app)) == 1
        await _send(app)
    assert len(await run(_warnings, app)) == 2


async def test_concurrent_deliveries_send_one(app_factory: Callable[..., Any]) -> None:
    app = await _app(app_factory)
    await _send(app, 24)  # ~33 kB: below the line
    assert await _usage(app) <= OVER
    await asyncio.gather(*[_send(app) for _ in range(4)])  # together across it
    assert await _usage(app) > OVER
    assert len(await run(_warnings, app)) == 1


async def test_append_crossing_warns(app_factory: Callable[..., Any]) -> None:
    app = await _app(app_factory)
    big = message("big", ("y" * 98 + "\r\n") * ((OVER + 200) // 100))

    def append() -> None:
        c = plain(app)
        try:
            for data in (message("small"), big, message("small")):
                typ, _ = c.append("INBOX", None, None, data)
                assert typ == "OK"
        finally:
            c.logout()

    await run(append)
    assert app.services is not None
    await app.services.notifier.drain()
    assert await _usage(app) > OVER
    assert len(await run(_warnings, app)) == 1


async def test_no_warning_without_quota_or_when_off(app_factory: Callable[..., Any]) -> None:
    app: App = await app_factory(plans={"tiny": {"storage_quota": QUOTA}},
                                 quota={"warning_percent": 0})
    await add_mailbox(app, ADDR, PW, plan="tiny")
    while await _usage(app) <= OVER:
        await _send(app, 5)
    assert await run(_warnings, app) == []


async def test_claim_is_atomic(app_factory: Callable[..., Any]) -> None:
    app = await _app(app_factory)
    assert app.store is not None
    await _send(app, 5)  # armed: below the line
    addr = await app.store.get_address(ADDR)
    assert addr is not None
    used = await _usage(app)
    wins = await asyncio.gather(*[app.store.claim_quota_warning(addr.id, 100, 50)
                                  for _ in range(8)])
    assert sum(wins) == 1
    assert await app.store.quota_warning_armed(addr.id) == (used, False)
    assert not await app.store.claim_quota_warning(addr.id, 100, 50)


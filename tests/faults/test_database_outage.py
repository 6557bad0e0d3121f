"""The database refusing connections (a private PostgreSQL cluster stopped and started
by the test): every front-end answers a temporary error with one log line per failure
and keeps serving; when the database is back, logins work again (the POP3 maildrop
lock of a session that ended during the outage is released) and the cross-node event
channel reconnects (docs/behaviour.md §12)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from mailstack.app import App
from mailstack.store import Store
from tests.conftest import add_mailbox
from tests.faults.conftest import ADDR, MESSAGE, PW, Lines, eventually
from tests.faults.pgcluster import PrivateCluster


async def _imap_login(app: App, user: str = ADDR, password: str = PW) -> Lines:
    c = await Lines.connect(app.ports["imap"])
    assert (await c.line()).startswith(b"* OK")
    out = await c.imap("L", f'LOGIN {user} "{password}"')
    assert out[-1].startswith(b"L OK"), out
    return c


async def _pop3_login(app: App) -> tuple[Lines, bytes]:
    c = await Lines.connect(app.ports["pop3"])
    assert (await c.line()).startswith(b"+OK")
    assert (await c.ask(f"USER {ADDR}")).startswith(b"+OK")
    return c, await c.ask(f"PASS {PW}")


def _mailstack_tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("mailstack") and r.exc_info]


async def test_database_refusing_connections(pg_app_factory: Callable[..., Any],
                                             cluster: PrivateCluster,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    app: App = await pg_app_factory()
    assert app.store is not None
    addr = await add_mailbox(app, ADDR, PW)
    inbox = await app.store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    await app.store.append(inbox.id, MESSAGE)

    imap = await _imap_login(app)
    assert (await imap.imap("s", "SELECT INBOX"))[-1].startswith(b"s OK")
    pop, reply = await _pop3_login(app)
    assert reply.startswith(b"+OK"), reply
    assert (await pop.ask("DELE 1")).startswith(b"+OK")

    await asyncio.to_thread(cluster.stop)
    caplog.clear()

    # an open IMAP session: a tagged NO [UNAVAILABLE], the connection stays
    out = await imap.imap("a", "FETCH 1 (FLAGS)")
    assert out[-1].startswith(b"a NO [UNAVAILABLE]"), out
    out = await imap.imap("b", "FETCH 1 (FLAGS)")
    assert out[-1].startswith(b"b NO [UNAVAILABLE]"), out
    # a new IMAP login
    fresh = await Lines.connect(app.ports["imap"])
    assert (await fresh.line()).startswith(b"* OK")  # another client is served meanwhile
    out = await fresh.imap("c", f'LOGIN {ADDR} "{PW}"')
    assert out[-1].startswith(b"c NO [UNAVAILABLE]"), out
    assert (await fresh.imap("d", "CAPABILITY"))[-1].startswith(b"d OK")
    await fresh.close()
    # a new POP3 login, and QUIT of the session that marked a message deleted
    pop2, reply = await _pop3_login(app)
    assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
    await pop2.close()
    assert (await pop.ask("QUIT")).startswith(b"-ERR [SYS/TEMP]")
    await pop.close()
    # SMTP: the recipient cannot be looked up
    smtp = await Lines.connect(app.ports["smtp"])
    assert (await smtp.line()).startswith(b"220 ")
    assert (await smtp.smtp("EHLO client.example.org")).startswith(b"250 ")
    assert (await smtp.smtp("MAIL FROM:<bob@example.org>")).startswith(b"250 ")
    reply = await smtp.smtp(f"RCPT TO:<{ADDR}>")
    assert reply.startswith(b"451 4.3.0"), reply
    assert (await smtp.smtp("NOOP")).startswith(b"250 ")  # the session goes on
    await smtp.smtp("QUIT")
    await smtp.close()

    # one log line per failure, never a traceback
    assert _mailstack_tracebacks(caplog) == []
    smtp_errors = [r for r in caplog.records
                   if r.name == "mailstack.smtp" and r.levelno >= logging.ERROR]
    assert len(smtp_errors) == 1, [r.getMessage() for r in smtp_errors]

    await asyncio.to_thread(cluster.start)

    # the database is back: the session answers again, logins work, and the maildrop
    # lock of the POP3 session that ended during the outage was released
    out = await imap.imap("e", "FETCH 1 (FLAGS)")
    assert out[-1].startswith(b"e OK"), out
    await imap.close()

    async def pop3_ok() -> bool:
        c, reply = await _pop3_login(app)
        await c.ask("QUIT")
        await c.close()
        assert not reply.startswith(b"-ERR [AUTH]"), reply
        return reply.startswith(b"+OK")

    await eventually(pop3_ok, timeout=40, step=0.5)
    # nothing was deleted by the QUIT that failed
    assert [m.uid for m in await app.store.list_messages(inbox.id)] == [1]
    assert _mailstack_tracebacks(caplog) == []


async def test_events_after_outage_and_gap(pg_app_factory: Callable[..., Any],
                                           pg_url: str, tmp_path: Any,
                                           cluster: PrivateCluster) -> None:
    """Node A serves the sessions, node B changes things. After the database restarts
    A's LISTEN connection comes back (a password change on B cuts A's session); after
    a gap in which notifications were lost, A's sessions re-check and resync."""
    app: App = await pg_app_factory()
    store = app.store
    assert store is not None
    store.listen_check_seconds = 0.5
    addr = await add_mailbox(app, ADDR, PW)
    other = Store(pg_url, tmp_path / "data" / "blobs")
    await other.open(listen=False)
    try:
        imap = await _imap_login(app)
        await asyncio.to_thread(cluster.stop)
        await eventually(lambda: not store.listening.is_set(), timeout=20)
        await asyncio.to_thread(cluster.start)
        await eventually(lambda: store.listen_reconnects >= 1, timeout=40)
        await imap.imap("n", "NOOP")  # the session survived the outage

        # a password change on node B reaches node A's session
        assert app.services is not None
        await other.set_password(addr.id, await app.services.passwords.hash("new-1"))
        bye = await imap.line()
        assert bye.startswith(b"* BYE"), bye
        await imap.close()

        # a gap: A's LISTEN connection is cut and what B changes meanwhile is never
        # notified to A; after the reconnect A's sessions re-check on their own
        bert = await add_mailbox(app, "bert@example.com", "pw-b")
        imap = await _imap_login(app, password="new-1")
        idle = await _imap_login(app, "bert@example.com", "pw-b")
        assert (await idle.imap("s", "SELECT INBOX"))[-1].startswith(b"s OK")
        await idle.send("i IDLE")
        assert (await idle.line()).startswith(b"+ ")
        store.listen_backoff = (4.0, 4.0)
        reconnects = store.listen_reconnects
        gone: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        store._listener.add_termination_listener(lambda _c: gone.set_result(True))
        admin = await asyncpg.connect(cluster.dsn)
        assert await admin.fetchval("SELECT pg_terminate_backend($1)",
                                    store._listener.get_server_pid())
        await admin.close()
        await asyncio.wait_for(gone, 10)
        inbox = await other.get_folder(bert.id, "INBOX")
        assert inbox is not None
        await other.append(inbox.id, MESSAGE)  # not notified to A: it is not listening
        await other.set_password(addr.id, await app.services.passwords.hash("new-2"))
        assert store.listen_reconnects == reconnects  # still in the gap
        assert (await imap.line()).startswith(b"* BYE")  # after the reconnect and Resync
        assert await idle.line() == b"* 1 EXISTS\r\n"
        await imap.close()
        await idle.close()
    finally:
        await other.close()


"""POP3 sessions: STLS and plaintext rules, authentication failures, the maildrop lock,
UIDL stability, and sessions ended by the server (RFC 1939 §3/§8, RFC 2595,
docs/behaviour.md §1, §2, §8).
"""

from __future__ import annotations

import poplib
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest

from mailstack.app import App
from mailstack.store import Store

from .conftest import PASSWORD, USER, Box, Raw, in_thread, make_box, pop3s

MSG = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def pop3_plain(port: int) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", port, timeout=10)


async def test_stls_on_110(box: Box, client_ssl: ssl.SSLContext) -> None:
    await box.append(MSG)

    def run() -> tuple[dict[str, list[str]], dict[str, list[str]], tuple[int, int]]:
        p = pop3_plain(box.port("pop3"))
        before = p.capa()
        p.stls(client_ssl)
        after = p.capa()
        p.user(USER)
        p.pass_(PASSWORD)
        stat = p.stat()
        p.quit()
        return before, after, stat

    before, after, stat = await in_thread(run)
    assert "STLS" in before and "STLS" not in after
    assert stat == (1, len(MSG))


async def test_no_password_before_tls(app_factory: Callable[..., Any],
                                      client_ssl: ssl.SSLContext) -> None:
    app: App = await app_factory(server={"allow_plaintext_auth_on_loopback": False})
    box = await make_box(app)

    def run() -> list[Any]:
        r = Raw(box.port("pop3"))
        got: list[Any] = [r.cmd(b"CAPA"), r.multiline_body()]
        got += [r.cmd(b"USER " + USER.encode()), r.cmd(b"PASS " + PASSWORD.encode()),
                r.cmd(b"AUTH PLAIN AGFubmFAZXhhbXBsZS5jb20Ac2VjcmV0")]
        assert r.cmd(b"STLS") == b"+OK begin TLS negotiation"
        r.starttls(client_ssl)
        got += [r.cmd(b"CAPA"), r.multiline_body(), r.login()]
        r.cmd(b"QUIT")
        r.close()
        return got

    caps, capa_body, user, pass_, auth, _, capa_tls, login = await in_thread(run)
    assert caps.startswith(b"+OK")
    assert b"STLS\r\n" in capa_body
    assert b"USER" not in capa_body and b"SASL" not in capa_body
    for refused in (user, pass_, auth):
        assert refused.startswith(b"-ERR plaintext authentication is not allowed")
        assert b"STLS" in refused
    assert b"USER\r\n" in capa_tls and b"SASL PLAIN\r\n" in capa_tls
    assert b"STLS" not in capa_tls
    assert login.startswith(b"+OK maildrop has")
    # nothing was ever tried with the plaintext password
    log = await box.store.list_activity(USER)
    assert [e.event for e in log] == ["login_ok"]


async def test_stls_discards_pipelined_plaintext(box: Box,
                                                 client_ssl: ssl.SSLContext) -> None:
    """CVE-2011-0411 class: ``STLS\\r\\nUSER x\\r\\n`` in one segment; the USER must not
    run under TLS."""
    def run() -> tuple[bytes, bytes, bytes]:
        r = Raw(box.port("pop3"))
        r.send(b"STLS\r\nUSER " + USER.encode() + b"\r\n")
        ok = r.line()
        r.starttls(client_ssl)
        after = r.cmd(b"PASS " + PASSWORD.encode())  # would log in if USER had run
        stls_again = r.cmd(b"STLS")
        r.cmd(b"QUIT")
        r.close()
        return ok, after, stls_again

    ok, after, stls_again = await in_thread(run)
    assert ok == b"+OK begin TLS negotiation"
    assert after == b"-ERR send USER first"
    assert stls_again == b"-ERR STLS is not allowed before login" or \
        stls_again == b"-ERR TLS is already active"
    assert await box.store.list_activity(USER) == []


async def test_stls_refused_on_995(box: Box, client_ssl: ssl.SSLContext) -> None:
    def run() -> bytes:
        r = Raw(box.port(), client_ssl)
        got = r.cmd(b"STLS")
        r.close()
        return got

    assert await in_thread(run) == b"-ERR STLS is not available on this port"


async def test_wrong_password_changes_nothing(box: Box, client_ssl: ssl.SSLContext) -> None:
    original = await box.append(MSG)

    def run() -> list[bytes]:
        got = []
        for user, password in ((USER, "wrong"), ("nobody@example.com", "wrong"),
                               ("not-an-address", PASSWORD)):
            p = pop3s(box.port(), client_ssl, login=False)
            p.user(user)
            with pytest.raises(poplib.error_proto) as exc:
                p.pass_(password)
            got.append(exc.value.args[0])
            with pytest.raises(poplib.error_proto):
                p.stat()  # still not logged in
            p.quit()
        return got

    got = await in_thread(run)
    # the same answer for a wrong password and an unknown address (no enumeration)
    assert got == [b"-ERR [AUTH] authentication failed"] * 3
    assert box.app.services is not None
    await box.app.services.notifier.drain()  # a failed-login notice may be mailed in
    uids = await box.uids()
    assert uids[0] == original.uid
    assert await box.store.expunged_since(box.inbox.id, 0) == []
    events = [e.event for e in await box.store.list_activity(USER)]
    assert "login_fail" in events and "login_ok" not in events

    def login() -> tuple[int, int]:
        p = pop3s(box.port(), client_ssl)  # no lock was left behind
        stat = p.stat()
        p.quit()
        return stat

    assert (await in_thread(login))[0] == len(uids)


async def test_throttled_login(app_factory: Callable[..., Any],
                               client_ssl: ssl.SSLContext) -> None:
    app: App = await app_factory(auth={"slow_after_failures": 1, "lock_after_failures": 2})
    box = await make_box(app)

    def run() -> list[bytes]:
        got = []
        p = pop3s(box.port(), client_ssl, login=False)
        for password in ("bad1", "bad2", PASSWORD):
            p.user(USER)
            try:
                got.append(p.pass_(password))
            except poplib.error_proto as exc:
                got.append(exc.args[0])
        p.quit()
        return got

    got = await in_thread(run)
    assert got[:2] == [b"-ERR [AUTH] authentication failed"] * 2
    assert got[2].startswith(b"-ERR [SYS/TEMP] Too many failed logins; try again after ")


async def test_in_use_and_release(box: Box, client_ssl: ssl.SSLContext) -> None:
    await box.append(MSG)

    def run() -> tuple[bytes, tuple[int, int], tuple[int, int]]:
        first = pop3s(box.port(), client_ssl)
        second = poplib.POP3("127.0.0.1", box.port("pop3"), timeout=10)  # 110 shares it
        second.stls(client_ssl)
        second.user(USER)
        with pytest.raises(poplib.error_proto) as exc:
            second.pass_(PASSWORD)
        stat_first = first.stat()  # the first session is untouched
        first.quit()
        second.user(USER)  # RFC 1939 §8: may try again in the same connection
        second.pass_(PASSWORD)
        stat_second = second.stat()
        second.quit()
        return exc.value.args[0], stat_first, stat_second

    refused, stat_first, stat_second = await in_thread(run)
    assert refused == b"-ERR [IN-USE] maildrop already in use by another session"
    assert stat_first == stat_second == (1, len(MSG))


async def test_stale_lock_is_taken_over(box: Box, client_ssl: ssl.SSLContext) -> None:
    store = box.store
    stale = box.app.settings.pop3.lock_stale_seconds
    # a crashed process took the lock long ago and never refreshed it
    store.clock = lambda: time.time() - stale - 60
    assert await store.acquire_pop3_lock(box.address.id, "dead-node:1:x", stale)
    store.clock = time.time

    def login() -> bytes:
        p = pop3s(box.port(), client_ssl, login=False)
        p.user(USER)
        try:
            return p.pass_(PASSWORD)
        except poplib.error_proto as exc:
            return exc.args[0]
        finally:
            p.quit()

    assert (await in_thread(login)).startswith(b"+OK maildrop has")
    # a lock refreshed recently (a live session on another node) is respected
    assert await store.acquire_pop3_lock(box.address.id, "live-node:2:y", stale)
    assert await in_thread(login) == \
        b"-ERR [IN-USE] maildrop already in use by another session"
    await store.release_pop3_lock(box.address.id, "live-node:2:y")


async def test_dropped_connection_deletes_nothing(box: Box,
                                                  client_ssl: ssl.SSLContext) -> None:
    for i in range(3):
        await box.append(MSG + b"%d\r\n" % i)
    before = await box.uids()

    def run() -> None:
        r = Raw(box.port(), client_ssl)
        assert r.login().startswith(b"+OK")
        assert r.cmd(b"DELE 1").startswith(b"+OK")
        assert r.cmd(b"DELE 2").startswith(b"+OK")
        r.close()  # no QUIT: no UPDATE state (RFC 1939 §6)

    await in_thread(run)
    await box.sessions_gone()
    assert await box.uids() == before
    assert await box.store.expunged_since(box.inbox.id, 0) == []

    def login() -> tuple[int, int]:
        p = pop3s(box.port(), client_ssl)  # and the lock was released
        stat = p.stat()
        p.quit()
        return stat

    assert (await in_thread(login))[0] == 3


async def test_uidl_stable_and_never_reused(box: Box, client_ssl: ssl.SSLContext) -> None:
    for i in range(3):
        await box.append(MSG + b"%d\r\n" % i)

    def uidl(dele: tuple[int, ...] = ()) -> list[bytes]:
        p = pop3s(box.port(), client_ssl)
        ids = [ln.split()[1] for ln in p.uidl()[1]]
        for n in dele:
            p.dele(n)
        p.quit()
        return ids

    first = await in_thread(uidl)
    assert await in_thread(uidl) == first  # the next session: the same ids
    assert len(set(first)) == 3
    await in_thread(uidl, (1,))  # delete the first message
    await box.append(MSG + b"new\r\n")
    after = await in_thread(uidl)
    assert after[:2] == first[1:]  # survivors keep their ids, though renumbered
    assert after[2] not in first
    # INBOX renamed away (its mail moves) and mail arrives again: no id comes back
    await box.store.rename_folder(box.address.id, "INBOX", "Old")
    await box.append(MSG + b"x\r\n")
    await box.append(MSG + b"y\r\n")
    latest = await in_thread(uidl)
    assert len(latest) == 2 and not set(latest) & set(first + after)


async def test_password_change_closes_session(box: Box, client_ssl: ssl.SSLContext) -> None:
    await box.append(MSG)

    def start() -> Raw:
        r = Raw(box.port(), client_ssl)
        assert r.login().startswith(b"+OK")
        assert r.cmd(b"DELE 1").startswith(b"+OK")
        return r

    r = await in_thread(start)
    assert box.app.services is not None
    await box.store.set_password(box.address.id, await box.app.services.passwords.hash("new"))

    def rest() -> tuple[bytes, bytes]:
        line = r.line()  # told without asking
        eof = r.line()
        r.close()
        return line, eof

    line, eof = await in_thread(rest)
    assert line == b"-ERR [AUTH] credentials changed; log in again"
    assert eof == b""
    await box.sessions_gone()
    assert len(await box.uids()) == 1  # the DELE never took effect


async def test_shutdown_tells_client(box: Box, client_ssl: ssl.SSLContext) -> None:
    await box.append(MSG)

    def start() -> Raw:
        r = Raw(box.port(), client_ssl)
        assert r.login().startswith(b"+OK")
        assert r.cmd(b"DELE 1").startswith(b"+OK")
        return r

    r = await in_thread(start)
    uids = await box.uids()
    await box.app.stop(grace=0)

    def rest() -> tuple[bytes, bytes]:
        line = r.line()
        eof = r.line()
        r.close()
        return line, eof

    line, eof = await in_thread(rest)
    assert line == b"-ERR [SYS/TEMP] server shutting down; try again shortly"
    assert eof == b""
    # the DELE never took effect, and the lock was released before the store closed
    store = await Store.open_from_settings(box.app.settings)
    try:
        assert [m.uid for m in await store.list_messages(box.inbox.id)] == uids
        assert await store.acquire_pop3_lock(box.address.id, "next", 900)
    finally:
        await store.close()


async def test_idle_autologout(app_factory: Callable[..., Any],
                               client_ssl: ssl.SSLContext) -> None:
    app: App = await app_factory(pop3={"idle_timeout_seconds": 1})
    box = await make_box(app)
    await box.append(MSG)

    def run() -> tuple[bytes, bytes]:
        r = Raw(box.port(), client_ssl)
        assert r.login().startswith(b"+OK")
        assert r.cmd(b"DELE 1").startswith(b"+OK")
        line = r.line()  # waits for the server to give up on us
        eof = r.line()
        r.close()
        return line, eof

    line, eof = await in_thread(run)
    assert line == b"-ERR autologout: idle for too long"
    assert eof == b""
    await box.sessions_gone()
    assert len(await box.uids()) == 1  # autologout does not enter UPDATE (RFC 1939 §3)


async def test_lock_taken_over_ends_session(app_factory: Callable[..., Any],
                                            client_ssl: ssl.SSLContext) -> None:
    """A session that could not refresh its lock (another node took it over) ends and
    deletes nothing: two sessions must never both delete from one maildrop."""
    app: App = await app_factory(pop3={"lock_stale_seconds": 10})  # refresh every 3.3 s
    box = await make_box(app)
    await box.append(MSG)

    def start() -> Raw:
        r = Raw(box.port(), client_ssl)
        assert r.login().startswith(b"+OK")
        assert r.cmd(b"DELE 1").startswith(b"+OK")
        return r

    r = await in_thread(start)
    store = box.store
    store.clock = lambda: time.time() + 3600  # from "later", our lock looks stale
    assert await store.acquire_pop3_lock(box.address.id, "other-node:9:z", 10)
    store.clock = time.time

    def rest() -> tuple[bytes, bytes]:
        line = r.line()
        eof = r.line()
        r.close()
        return line, eof

    line, eof = await in_thread(rest)
    assert line == b"-ERR [SYS/TEMP] maildrop lock lost; log in again"
    assert eof == b""
    await box.sessions_gone()
    assert len(await box.uids()) == 1
    # the other holder's lock was not released by the session that lost it
    assert not await store.acquire_pop3_lock(box.address.id, "third", 10)

"""Security notices (docs/behaviour.md §2): a new-network login and failed attempts (at most one per
hour) reach the address's INBOX, and a granted user's login address elsewhere."""

from __future__ import annotations

import asyncio
import concurrent.futures
import email
import email.policy
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailstack.app import App
from mailstack.config import AuthSettings
from mailstack.notices import Notifier
from mailstack.policy.auth import Authenticator, LoginGuard
from mailstack.policy.passwords import Passwords
from mailstack.store import Store
from tests.conftest import add_mailbox


class Clock:
    now = 2_000_000_000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = AuthSettings(argon2_time_cost=1, argon2_memory_kib=64, argon2_parallelism=1,
                        max_delay_seconds=0, lock_after_failures=100)


async def setup(store: Store) -> tuple[Authenticator, Notifier, Clock, int]:
    clock = Clock()
    store.clock = clock
    pw = Passwords(1, 64, 1)
    await store.add_domain("example.com", "standard")
    a = await store.add_address("anna", "example.com", password_hash=pw.hash_sync("right"))
    inbox = await store.get_folder(a.id, "INBOX")
    assert inbox is not None
    notifier = Notifier(store, "mail.example.net", SETTINGS, clock)
    auth = Authenticator(store, pw, LoginGuard(SETTINGS, store, clock), SETTINGS, notifier)
    return auth, notifier, clock, inbox.id


async def inbox_subjects(store: Store, folder_id: int) -> list[str]:
    out = []
    for m in await store.list_messages(folder_id):
        parsed = email.message_from_bytes(await store.message_bytes(m),
                                          policy=email.policy.default)
        assert parsed["Auto-Submitted"] == "auto-generated"
        assert parsed["Return-Path"] == "<>"
        out.append(str(parsed["Subject"]))
    return out


async def test_new_network_notice(store: Store) -> None:
    auth, notifier, _, inbox = await setup(store)
    assert (await auth.authenticate("anna@example.com", "right", client_ip="192.0.2.1",
                                    protocol="imap")).ok
    await notifier.drain()
    assert await inbox_subjects(store, inbox) == []  # first login: baseline, no notice
    assert (await auth.authenticate("anna@example.com", "right", client_ip="198.51.100.1",
                                    protocol="smtp")).ok
    await notifier.drain()
    assert await inbox_subjects(store, inbox) == ["New sign-in to your mailbox"]
    (m,) = await store.list_messages(inbox)
    assert b"198.51.100.1" in await store.message_bytes(m)


async def test_failed_attempt_notice_at_most_hourly(store: Store) -> None:
    auth, notifier, clock, inbox = await setup(store)
    for _ in range(4):
        r = await auth.authenticate("anna@example.com", "wrong", client_ip="192.0.2.1",
                                    protocol="pop3")
        assert r.status == "failed"
        await notifier.drain()
    assert await inbox_subjects(store, inbox) == ["Failed sign-in attempts on your mailbox"]
    clock.now += 3601
    await auth.authenticate("anna@example.com", "wrong", client_ip="192.0.2.1",
                            protocol="pop3")
    await notifier.drain()
    assert len(await inbox_subjects(store, inbox)) == 2
    # an unknown address gets nothing and creates nothing
    await auth.authenticate("ghost@example.com", "x", client_ip="192.0.2.1", protocol="pop3")
    await notifier.drain()
    assert await store.get_address("ghost@example.com") is None


async def test_notice_to_granted_user_elsewhere(store: Store) -> None:
    auth, notifier, _, inbox = await setup(store)
    anna = await store.get_address("anna@example.com")
    assert anna is not None
    uid = await store.add_user("boss@remote.org", "x")
    await store.grant(uid, anna.id, ["read", "passwd"])
    await auth.authenticate("anna@example.com", "wrong", client_ip="192.0.2.1",
                            protocol="imap")
    await notifier.drain()
    assert len(await store.list_messages(inbox)) == 1
    (queued,) = await store.list_queue()
    assert queued.recipient == "boss@remote.org" and queued.sender == ""


async def test_storage_warning_asks_the_store_only_near_the_level(store: Store) -> None:
    """docs/behaviour.md §3: far below the 90 % level, deliveries are counted down
    locally (one store query per minute per address); near it every delivery is
    checked, and the warning goes out once the store's usage is past it."""

    from mailstack.config import PlanSettings, QuotaSettings
    from mailstack.store import DeliveryTarget

    _, _, clock, inbox = await setup(store)
    plan = PlanSettings(storage_quota=100_000)
    notifier = Notifier(store, "mail.example.net", SETTINGS, clock, quota=QuotaSettings(),
                        plan_of=lambda _name: plan)
    looks: list[str] = []
    real = store.storage_state

    async def storage_state(address: str) -> Any:
        looks.append(address)
        return await real(address)

    store.storage_state = storage_state  # type: ignore[method-assign]

    async def deliver(size: int) -> None:
        data = b"Subject: x\r\n\r\n" + b"y" * (size - 14)
        blob = await store.put_blob(data)
        await store.deliver(blob, len(data), [DeliveryTarget(inbox)])
        notifier.after_storing(["anna@example.com"], len(data))
        await notifier.drain()

    for _ in range(5):
        await deliver(1000)
    assert len(looks) == 1  # 5 kB used: 85 kB of room remembered
    clock.now += 61
    await deliver(1000)
    assert len(looks) == 2  # the remembered figure expired
    for _ in range(9):
        await deliver(9000)  # 87 kB: the countdown (with its margin) reaches the level
    assert 3 <= len(looks) <= 9
    async def warnings() -> int:
        n = 0
        for m in await store.list_messages(inbox):
            n += b"Subject: Your mailbox is almost full" in await store.message_bytes(m)
        return n

    assert await warnings() == 0
    await deliver(4000)  # 91 kB: past 90 %
    assert await warnings() == 1
    await deliver(1000)
    assert await warnings() == 1
async def test_parallel_wrong_auth_on_465_gives_exactly_one_notice(
        app_factory: Callable[..., Any], client_ssl: ssl.SSLContext) -> None:
    """Two rounds of six parallel wrong AUTH PLAIN on the submissions port (the
    guard set not to lock, so all twelve are failures): the notice is decided and
    recorded in one transaction, so one notice reaches the INBOX, and one
    ``notice_failed`` entry is in the activity log."""
    app: App = await app_factory(auth={"lock_after_failures": 100,
                                       "network_lock_after_failures": 1000,
                                       "max_delay_seconds": 0})
    anna = await add_mailbox(app, "anna@example.com", "right-secret")
    assert app.store is not None and app.services is not None
    inbox = await app.store.get_folder(anna.id, "INBOX")
    assert inbox is not None
    port = app.ports["submissions"]

    def wrong_auth(n: int) -> int:
        with smtplib.SMTP_SSL("127.0.0.1", port, context=client_ssl, timeout=30) as c:
            c.ehlo("client.example")
            try:
                c.login("anna@example.com", f"wrong-{n}")
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code
            raise AssertionError("a wrong password was accepted")

    loop = asyncio.get_running_loop()
    # the clients' own threads: the server's Argon2 runs in the default executor
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        for start in (0, 6):
            codes = await asyncio.gather(*(loop.run_in_executor(pool, wrong_auth, n)
                                           for n in range(start, start + 6)))
            assert codes == [535] * 6
    await app.services.notifier.drain()
    assert await inbox_subjects(app.store, inbox.id) == [
        "Failed sign-in attempts on your mailbox"]
    events = [e.event for e in await app.store.list_activity("anna@example.com", limit=200)]
    assert events.count("notice_failed") == 1


async def test_failed_notice_claim_across_two_stores(store: Store, db_url: str,
                                                     tmp_path: Path) -> None:
    """Two processes' stores on one database claim at once: exactly one wins, and the
    next claim within the interval loses."""
    await store.add_domain("example.com", "standard")
    a = await store.add_address("anna", "example.com", password_hash="x")
    other = Store(db_url, tmp_path / "blobs")
    await other.open(listen=False)
    try:
        results = await asyncio.gather(*(
            s.claim_failed_notice(a.id, "Anna@example.com", 3600)
            for _ in range(8) for s in (store, other)))
        assert results.count(True) == 1
        assert not await other.claim_failed_notice(a.id, "anna@example.com", 3600)
        entries = await store.list_activity("anna@example.com")
        assert [e.event for e in entries] == ["notice_failed"]
        # a removed address claims nothing
        assert not await store.claim_failed_notice(a.id + 999, "ghost@example.com", 3600)
    finally:
        await other.close()

"""Security notices (docs/behaviour.md §2): a new-network login and failed attempts (at most one per
hour) reach the address's INBOX, and a granted user's login address elsewhere."""

from __future__ import annotations

import email
import email.policy

from mailstack.config import AuthSettings
from mailstack.notices import Notifier
from mailstack.policy.auth import Authenticator, LoginGuard
from mailstack.policy.passwords import Passwords
from mailstack.store import Store


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

"""Which sessions a credential change ends (docs/behaviour.md §2), on both backends:
the events the store publishes for an app password revoked, "app passwords only", a
grant, a responder change; the pure rule ``session_ended_by`` and the re-check
``credential_holds`` sessions make after subscribing or a resync."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailstack.policy.auth import credential_holds, session_ended_by
from mailstack.store import (
    MAIN_PASSWORD,
    AddressDeleted,
    AutorespondersChanged,
    CredentialRevoked,
    CredentialsChanged,
    MessagesAdded,
    NotFound,
    SendersChanged,
    Store,
)


def test_session_ended_by() -> None:
    epoch, phone = 3, 17
    for ev, main_ends, phone_ends in [
        (CredentialsChanged(1, 4), True, True),  # a new password: everything
        (CredentialsChanged(1, 3), False, False),  # not newer than the login
        (AddressDeleted(1), True, True),
        (CredentialRevoked(1, phone), False, True),  # that app password only
        (CredentialRevoked(1, 99), False, False),  # another app password
        (CredentialRevoked(1, MAIN_PASSWORD), True, False),  # app passwords only
        (SendersChanged(1), False, False),
        (AutorespondersChanged(1), False, False),
        (MessagesAdded(1, 5, (1,)), False, False),
    ]:
        assert session_ended_by(ev, epoch, MAIN_PASSWORD) is main_ends, ev
        assert session_ended_by(ev, epoch, phone) is phone_ends, ev


async def test_revoke_and_app_only_events_and_recheck(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    a = await store.add_address("anna", "example.com", password_hash="x")
    await store.add_app_password(a.id, "phone", "h1")
    await store.add_app_password(a.id, "tablet", "h2")
    ids = {i for i, _ in await store.app_password_hashes(a.id)}
    with store.events.subscribe(a.id) as sub:
        revoked = await store.revoke_app_password(a.id, "phone")
        assert sub.queue.get_nowait() == CredentialRevoked(a.id, revoked)
        assert await store.set_app_passwords_only(a.id, True)
        assert sub.queue.get_nowait() == CredentialRevoked(a.id, MAIN_PASSWORD)
        assert not await store.set_app_passwords_only(a.id, True)  # unchanged: no event
        assert await store.set_app_passwords_only(a.id, False)  # off: nothing to end
        assert sub.queue.empty()
    addr = await store.get_address_by_id(a.id)
    assert addr is not None and addr.credential_epoch == a.credential_epoch  # no bump
    tablet = (await store.app_password_hashes(a.id))[0][0]
    assert ids == {revoked, tablet}
    assert await credential_holds(store, addr, addr.credential_epoch, tablet)
    assert not await credential_holds(store, addr, addr.credential_epoch, revoked)
    assert await credential_holds(store, addr, addr.credential_epoch, MAIN_PASSWORD)
    await store.set_app_passwords_only(a.id, True)
    addr = await store.get_address_by_id(a.id)
    assert not await credential_holds(store, addr, addr.credential_epoch, MAIN_PASSWORD)
    assert not await credential_holds(store, None, 0, tablet)
    # refusals change nothing
    try:
        await store.revoke_app_password(a.id, "phone")
        raise AssertionError("revoked twice")
    except NotFound:
        pass
    assert [r[0] for r in await store.list_app_passwords(a.id)] == ["tablet"]


async def test_grant_changes_tell_the_login_address(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    bob = await store.add_address("bob", "example.com", password_hash="x")
    carol = await store.add_address("carol", "example.com", password_hash="x")
    hosted = await store.add_user("Bob@Example.com", "h")
    remote = await store.add_user("boss@remote.example", "h")
    with store.events.subscribe(bob.id) as sub:
        await store.grant(hosted, carol.id, ["send"])
        assert sub.queue.get_nowait() == SendersChanged(bob.id)
        await store.grant(remote, carol.id, ["send"])  # not bob's login: nothing for bob
        assert sub.queue.empty()
        await store.revoke_grant(hosted, carol.id)
        assert sub.queue.get_nowait() == SendersChanged(bob.id)
        await store.grant(hosted, carol.id, ["read"])
        assert sub.queue.get_nowait() == SendersChanged(bob.id)
        assert await store.remove_user(hosted) == ["carol@example.com"]
        assert sub.queue.get_nowait() == SendersChanged(bob.id)
    assert await store.get_user_id("bob@example.com") is None
    assert await store.get_address("carol@example.com") is not None
    assert await store.grants_for_address(carol.id) == [
        ("boss@remote.example", frozenset({"send"}))]


async def test_user_password_bumps_the_user_epoch(store: Store) -> None:
    uid = await store.add_user("boss@remote.example", "h1")
    assert await store.user_credential_epoch(uid) == 0
    assert await store.set_user_password(uid, "h2") == 1
    assert await store.user_credential_epoch(uid) == 1
    try:
        await store.set_user_password(uid + 100, "h3")
        raise AssertionError("no such user")
    except NotFound:
        pass


async def test_responder_change_reaches_another_store(tmp_path: Path, db_url: str) -> None:
    """Another process's responder change bumps this process's counter, so its cache
    of who has an active responder is read again (mailstack/autoreplies.py)."""
    a, b = Store(db_url, tmp_path / "blobs"), Store(db_url, tmp_path / "blobs")
    await a.open()
    await b.open()
    try:
        await a.add_domain("example.com", "standard")
        addr = await a.add_address("anna", "example.com", password_hash="x")
        before = b.autoresponder_changes
        with b.events.subscribe(addr.id) as sub:
            await a.add_autoresponder(addr.id, "away", subject="Away", body="Gone")
            if b._follower is not None:  # SQLite: follow the change log now
                await b._follower.poll()
            got = await asyncio.wait_for(sub.queue.get(), 5)
        assert got == AutorespondersChanged(addr.id)
        assert b.autoresponder_changes > before
    finally:
        await a.close()
        await b.close()

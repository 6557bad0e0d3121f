"""The verified-credential cache (docs/behaviour.md §2): a repeated correct login skips
Argon2; a wrong password never hits; a changed password or a revoked app password stops
matching at once; entries expire and the cache is bounded."""

from __future__ import annotations

import asyncio
import imaplib

from mailstack.app import App
from mailstack.policy.passwords import Passwords
from tests.conftest import add_mailbox


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_only_verified_credentials_are_remembered() -> None:
    clock = Clock()
    pw = Passwords(1, 64, 1, cache_seconds=60, cache_size=2, clock=clock)
    stored = await pw.hash("right-password")
    assert await pw.verify(stored, "right-password")
    assert pw.cache_hits == 0
    assert await pw.verify(stored, "right-password")
    assert pw.cache_hits == 1
    assert not await pw.verify(stored, "wrong-password")
    assert not await pw.verify(stored, "wrong-password")
    assert pw.cache_hits == 1  # failures are never cached
    other = await pw.hash("right-password")  # the password was set again: a new hash
    assert await pw.verify(other, "right-password")
    assert pw.cache_hits == 1
    assert not await pw.verify(None, "right-password")  # unknown address: never a hit


async def test_entries_expire_and_the_cache_is_bounded() -> None:
    clock = Clock()
    pw = Passwords(1, 64, 1, cache_seconds=60, cache_size=2, clock=clock)
    hashes = [await pw.hash(f"password-{i}") for i in range(3)]
    for i, h in enumerate(hashes):
        assert await pw.verify(h, f"password-{i}")
    assert len(pw._cache) == 2  # the oldest went
    assert await pw.verify(hashes[0], "password-0") and pw.cache_hits == 0
    assert await pw.verify(hashes[2], "password-2") and pw.cache_hits == 1
    clock.now += 61
    assert await pw.verify(hashes[2], "password-2") and pw.cache_hits == 1  # expired


async def test_verify_any_uses_the_cache_and_off_means_off() -> None:
    pw = Passwords(1, 64, 1, cache_seconds=60)
    apps = [await pw.hash("app-one-secret"), await pw.hash("app-two-secret")]
    assert await pw.verify_any(apps, "app-two-secret") == 1
    assert await pw.verify_any(apps, "app-two-secret") == 1 and pw.cache_hits == 1
    assert await pw.verify_any(apps[:1], "app-two-secret") is None  # revoked
    off = Passwords(1, 64, 1, cache_seconds=0)
    stored = await off.hash("x-password")
    assert await off.verify(stored, "x-password") and await off.verify(stored, "x-password")
    assert off.cache_hits == 0 and not off._cache


def _login(port: int, user: str, password: str) -> bool:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        c.login(user, password)
    except imaplib.IMAP4.error:
        c.logout()
        return False
    c.logout()
    return True


async def test_repeated_imap_logins_hit_and_a_password_change_cuts_through(app: App) -> None:
    assert app.store is not None and app.services is not None
    addr = await add_mailbox(app, "phone@example.com", "first-password")
    port = app.ports["imap"]
    pw = app.services.passwords
    assert pw.cache_seconds > 0  # on by default
    assert await asyncio.to_thread(_login, port, "phone@example.com", "first-password")
    hits = pw.cache_hits
    assert await asyncio.to_thread(_login, port, "phone@example.com", "first-password")
    assert pw.cache_hits == hits + 1
    await app.store.set_password(addr.id, await pw.hash("second-password"))
    assert not await asyncio.to_thread(_login, port, "phone@example.com", "first-password")
    assert await asyncio.to_thread(_login, port, "phone@example.com", "second-password")
    # an app password, cached, then revoked
    await app.store.add_app_password(addr.id, "tablet", await pw.hash("tablet-app-secret"))
    for _ in range(2):
        assert await asyncio.to_thread(_login, port, "phone@example.com", "tablet-app-secret")
    await app.store.revoke_app_password(addr.id, "tablet")
    assert not await asyncio.to_thread(_login, port, "phone@example.com",
                                       "tablet-app-secret")

"""DKIM keys in the store (both backends): per hosted domain, unique selectors, one
transaction per key set, pending -> active -> retired, removed with the domain."""

from __future__ import annotations

import pytest

from mailstack.store import AlreadyExists, Conflict, NewDkimKey, NotFound, Store


def pair(tag: str) -> list[NewDkimKey]:
    return [NewDkimKey(f"{tag}r", "rsa-sha256", f"priv-r-{tag}", f"pub-r-{tag}"),
            NewDkimKey(f"{tag}e", "ed25519-sha256", f"priv-e-{tag}", f"pub-e-{tag}")]


async def test_keys_for_hosted_domain_only(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.add_dkim_keys("nothosted.example", pair("a"))
    assert await store.dkim_keys() == []


async def test_add_activate_retire(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    await store.add_domain("other.example", "standard")
    await store.add_dkim_keys("Example.COM", pair("a"))
    active = await store.dkim_signing_keys("example.com")
    assert [(k.selector, k.algorithm, k.private_key, k.status) for k in active] == [
        ("ar", "rsa-sha256", "priv-r-a", "active"), ("ae", "ed25519-sha256", "priv-e-a",
                                                    "active")]
    assert await store.dkim_signing_keys("other.example") == []
    # a rotation waits (pending) until activated; signing keys unchanged meanwhile
    await store.add_dkim_keys("example.com", pair("b"), status="pending")
    assert [k.selector for k in await store.dkim_signing_keys("example.com")] == ["ar", "ae"]
    new = await store.activate_dkim_keys("example.com")
    assert [k.selector for k in new] == ["br", "be"]
    status = {k.selector: k.status for k in await store.dkim_keys("example.com")}
    assert status == {"ar": "retired", "ae": "retired", "br": "active", "be": "active"}
    with pytest.raises(Conflict):
        await store.activate_dkim_keys("example.com")  # nothing pending


async def test_duplicate_selector_refused_nothing_stored(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    await store.add_dkim_keys("example.com", pair("a"))
    bad = [NewDkimKey("zr", "rsa-sha256", "p", "q"), NewDkimKey("ae", "ed25519-sha256", "p",
                                                                 "q")]
    with pytest.raises(AlreadyExists):
        await store.add_dkim_keys("example.com", bad)
    # the whole set was refused: the old keys still sign, no "zr" exists
    keys = await store.dkim_keys("example.com")
    assert [(k.selector, k.status) for k in keys] == [("ar", "active"), ("ae", "active")]


async def test_same_selector_in_two_domains(store: Store) -> None:
    for d in ("a.example", "b.example"):
        await store.add_domain(d, "standard")
        await store.add_dkim_keys(d, pair("x"))
    assert [k.domain for k in await store.dkim_keys()] == ["a.example"] * 2 + ["b.example"] * 2


async def test_keys_removed_with_domain(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    await store.add_dkim_keys("example.com", pair("a"))
    await store.remove_domain("example.com")
    assert await store.dkim_keys() == []


async def test_migration_step_creates_the_table(store: Store) -> None:
    """The migration step (for databases from before DKIM keys) makes a usable table."""
    from mailstack.store import schema as t
    from mailstack.store.db import MIGRATIONS, _m_dkim_keys

    assert _m_dkim_keys in MIGRATIONS
    async with store.engine.begin() as conn:
        await conn.run_sync(lambda c: t.dkim_keys.drop(c))
        await conn.run_sync(_m_dkim_keys)
    await store.add_domain("example.com", "standard")
    await store.add_dkim_keys("example.com", pair("m"))
    assert len(await store.dkim_signing_keys("example.com")) == 2

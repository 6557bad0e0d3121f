"""Autoresponders in the store (docs/behaviour.md §7), on SQLite and PostgreSQL: saved
responders, one active per address even under concurrent activations from two nodes,
the throttle claimed atomically (two simultaneous deliveries -> one reply), reset,
pruning, the hourly count, and the migration step."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from mailstack.policy.autoresponder import AutoreplyVerdict
from mailstack.store import AlreadyExists, AutoResponder, NotFound, Store
from mailstack.store.db import MIGRATIONS, _m_autoresponder

STEP = MIGRATIONS.index(_m_autoresponder) + 1  # this table's migration step


class Clock:
    def __init__(self, now: float = 2_000_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def address(store: Store, email: str = "anna@example.com") -> int:
    local, _, domain = email.partition("@")
    if await store.get_domain(domain) is None:
        await store.add_domain(domain, "standard")
    return (await store.add_address(local, domain, password_hash="x")).id


async def active_names(store: Store, address_id: int) -> list[str]:
    return [r.name for r in await store.list_autoresponders(address_id) if r.active]


async def test_save_edit_list_remove(store: Store) -> None:
    aid = await address(store)
    r = await store.add_autoresponder(
        aid, "holiday", subject="Away", body="Back in January", html="<p>Back</p>",
        starts_at=10.0, ends_at=20.0, weekdays={0, 4}, timezone="Europe/Zurich",
        from_address="team@example.com", exclusions=("boss@corp.example", "@partner.example"))
    assert r.weekdays == frozenset({0, 4}) and not r.active
    assert r.exclusions == ("boss@corp.example", "@partner.example")
    with pytest.raises(AlreadyExists):
        await store.add_autoresponder(aid, "holiday", subject="other", body="other")
    assert [x.body for x in await store.list_autoresponders(aid)] == ["Back in January"]
    edited = await store.update_autoresponder(aid, "holiday", html=None, weekdays=(),
                                              subject="Weg")
    assert edited.html is None and edited.weekdays == frozenset() and edited.subject == "Weg"
    assert edited.timezone == "Europe/Zurich" and edited.starts_at == 10.0
    with pytest.raises(NotFound):
        await store.update_autoresponder(aid, "nope", subject="x")
    await store.remove_autoresponder(aid, "holiday")
    assert await store.list_autoresponders(aid) == []
    with pytest.raises(NotFound):
        await store.remove_autoresponder(aid, "holiday")


async def test_activating_one_deactivates_the_other(store: Store) -> None:
    aid = await address(store)
    other = await address(store, "bob@example.com")
    for name in ("holiday", "sick"):
        await store.add_autoresponder(aid, name, subject=name, body=name)
    await store.add_autoresponder(other, "holiday", subject="b", body="b")
    await store.activate_autoresponder(other, "holiday")
    await store.activate_autoresponder(aid, "holiday")
    assert await active_names(store, aid) == ["holiday"]
    await store.activate_autoresponder(aid, "sick")
    assert await active_names(store, aid) == ["sick"]
    assert await active_names(store, other) == ["holiday"]  # other addresses untouched
    with pytest.raises(NotFound):
        await store.activate_autoresponder(aid, "nope")
    assert await active_names(store, aid) == ["sick"]
    assert await store.deactivate_autoresponder(aid, "holiday") == 0
    assert await store.deactivate_autoresponder(aid) == 1
    assert await active_names(store, aid) == []
    found = await store.active_autoresponders(["ANNA@example.com", "bob@example.com",
                                               "ghost@example.com"])
    assert [(k, r.name) for k, r in found] == [("bob@example.com", "holiday")]


async def test_the_database_refuses_two_active(store: Store) -> None:
    """The partial unique index: even a write that bypasses activate_autoresponder
    cannot leave two responders of one address active."""
    aid = await address(store)
    for name in ("a", "b"):
        await store.add_autoresponder(aid, name, subject=name, body=name)
    await store.activate_autoresponder(aid, "a")
    with pytest.raises(IntegrityError):
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE autoresponders SET active = true WHERE name = 'b'"))
    assert await active_names(store, aid) == ["a"]


async def test_concurrent_activations_leave_exactly_one(store: Store, db_url: str,
                                                        tmp_path: Path) -> None:
    """Two nodes (two Store objects on one database) activating different responders at
    the same time, many rounds: always exactly one active, never an error."""
    aid = await address(store)
    names = [f"r{i}" for i in range(6)]
    for name in names:
        await store.add_autoresponder(aid, name, subject=name, body=name)
    node2 = Store(db_url, tmp_path / "blobs")
    await node2.open(listen=False)
    try:
        for _ in range(5):
            await asyncio.gather(*(
                (store if i % 2 else node2).activate_autoresponder(aid, name)
                for i, name in enumerate(names)))
            assert len(await active_names(store, aid)) == 1
    finally:
        await node2.close()


def reply_always(r: AutoResponder, last: float | None, recent: int) -> AutoreplyVerdict:
    return AutoreplyVerdict(last is None, "reply")


async def test_simultaneous_claims_from_one_sender_give_one_reply(
        store: Store, db_url: str, tmp_path: Path) -> None:
    clock = Clock()
    store.clock = clock
    aid = await address(store)
    r = await store.add_autoresponder(aid, "holiday", subject="s", body="b")
    await store.activate_autoresponder(aid, "holiday")
    node2 = Store(db_url, tmp_path / "blobs", clock=clock)
    await node2.open(listen=False)
    try:
        results = await asyncio.gather(*(
            (store if i % 2 else node2).claim_autoreply(r.id, "bob@remote.example",
                                                        reply_always)
            for i in range(8)))
    finally:
        await node2.close()
    replies = [res for res in results if res is not None and res[1].reply]
    assert len(replies) == 1
    assert await store.autoreply_throttle(r.id) == {"bob@remote.example": clock.now}


async def test_claim_sees_last_reply_reset_and_hourly_count(store: Store) -> None:
    clock = Clock()
    store.clock = clock
    aid = await address(store)
    r = await store.add_autoresponder(aid, "holiday", subject="s", body="b")
    r = await store.activate_autoresponder(aid, "holiday")
    seen: list[tuple[float | None, int, int]] = []

    def record(resp: AutoResponder, last: float | None, recent: int) -> AutoreplyVerdict:
        seen.append((last, recent, resp.generation))
        return AutoreplyVerdict(True, "reply")

    await store.claim_autoreply(r.id, "bob@remote.example", record)
    clock.now += 60
    await store.claim_autoreply(r.id, "carl@remote.example", record)
    clock.now += 60
    await store.claim_autoreply(r.id, "bob@remote.example", record)
    start = clock.now - 120
    assert seen[0] == (None, 0, 1)  # generation 1: the first activation
    assert seen[1] == (None, 1, 1)
    assert seen[2] == (start, 2, 1)
    clock.now += 3600  # the hour is over: nothing counts any more
    await store.claim_autoreply(r.id, "dora@remote.example", record)
    assert seen[3][1] == 0
    # reset (same instant as the last reply): that reply no longer counts, but the row
    # stays for the hourly count
    assert await store.reset_autoreply_throttle(aid) == 1
    await store.claim_autoreply(r.id, "dora@remote.example", record)
    assert seen[4] == (None, 1, 2)
    # re-activating the active one changes nothing; a new activation starts afresh
    await store.activate_autoresponder(aid, "holiday")
    await store.claim_autoreply(r.id, "dora@remote.example", record)
    assert seen[5] == (clock.now, 1, 2)
    await store.deactivate_autoresponder(aid)
    await store.activate_autoresponder(aid, "holiday")
    await store.claim_autoreply(r.id, "dora@remote.example", record)
    assert seen[6] == (None, 1, 3)
    # a claim that decides "no" writes nothing
    res = await store.claim_autoreply(
        r.id, "eve@remote.example", lambda *_: AutoreplyVerdict(False, "throttled"))
    assert res is not None and not res[1].reply
    assert "eve@remote.example" not in await store.autoreply_throttle(r.id)
    # a removed responder: nothing decided
    await store.remove_autoresponder(aid, "holiday")
    assert await store.claim_autoreply(r.id, "bob@remote.example", record) is None


async def test_prune_old_throttle_rows(store: Store) -> None:
    clock = Clock()
    store.clock = clock
    aid = await address(store)
    r = await store.add_autoresponder(aid, "holiday", subject="s", body="b")
    await store.claim_autoreply(r.id, "old@remote.example", reply_always)
    clock.now += 8 * 86400
    await store.claim_autoreply(r.id, "new@remote.example", reply_always)
    assert await store.prune_autoreply_throttle(clock.now - 7 * 86400) == 1
    assert list(await store.autoreply_throttle(r.id)) == ["new@remote.example"]


async def test_removing_the_address_removes_its_responders(store: Store) -> None:
    aid = await address(store)
    r = await store.add_autoresponder(aid, "holiday", subject="s", body="b")
    await store.claim_autoreply(r.id, "bob@remote.example", reply_always)
    await store.remove_address(aid)
    assert await store.list_autoresponders(aid) == []
    assert await store.autoreply_throttle(r.id) == {}


async def test_migration_step_creates_the_tables(store: Store, db_url: str,
                                                 tmp_path: Path) -> None:
    """A database at the version before this step gets the tables on open."""
    async with store.engine.begin() as conn:
        await conn.execute(text("DROP TABLE autoreply_throttle"))
        await conn.execute(text("DROP TABLE autoresponders"))
        await conn.execute(text(f"DELETE FROM schema_version WHERE version >= {STEP}"))
    await store.close()
    reopened = Store(db_url, tmp_path / "blobs")
    assert await reopened.migrate() == STEP - 1  # later steps run again: they may
    try:
        aid = await address(reopened)
        await reopened.add_autoresponder(aid, "x", subject="s", body="b")
        await reopened.activate_autoresponder(aid, "x")
        assert await active_names(reopened, aid) == ["x"]
    finally:
        await reopened.close()

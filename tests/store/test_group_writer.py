"""Group commit of SQLite write transactions (store/writer.py): concurrent writers share
one transaction and one COMMIT; one failing writer costs only its own change; a failed
COMMIT fails every member and stores nothing; events are published after the commit.

Calls are started with ``asyncio.gather``: every job is queued before the writer task
runs, so they form one group without any timing assumption.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from mailstack.store import DeliveryTarget, MessagesAdded, NotFound, Store, Unavailable
from mailstack.store import writer as writer_module


def msg(i: int) -> bytes:
    return f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()


async def test_concurrent_writes_share_one_commit(sq: Any) -> None:
    store, addr, inbox = sq
    for i in range(3):
        await store.append(inbox.id, msg(i))
    await store.store_flags(inbox.id, [3], ["\\Deleted"], "add")
    sub = store.events.subscribe(addr.id)
    blobs = [await store.put_blob(msg(i)) for i in (10, 11)]  # blobs first: no await
    before = store.writer.stats.groups                      # between the calls below
    results = await asyncio.gather(
        store.deliver(blobs[0], len(msg(10)), [DeliveryTarget(inbox.id, b"", frozenset())]),
        store.store_flags(inbox.id, [1], ["\\Seen"], "add"),
        store.deliver(blobs[1], len(msg(11)), [DeliveryTarget(inbox.id, b"", frozenset())]),
        store.store_flags(inbox.id, [2], ["$Work"], "add"),
        store.expunge(inbox.id, [3]),
    )
    assert store.writer.stats.groups == before + 1  # ONE transaction for all of them
    assert store.writer.stats.largest == 5
    assert results[0][0].uid == 4 and results[2][0].uid == 5  # in queue order
    assert results[4] == [3]
    msgs = {m.uid: m for m in await store.list_messages(inbox.id)}
    assert "\\Seen" in msgs[1].flags and "$Work" in msgs[2].flags
    assert sorted(msgs) == [1, 2, 4, 5]
    # MODSEQs as if each had committed alone: all different
    assert len({m.modseq for m in msgs.values()}) == len(msgs)
    added = []
    while not sub.queue.empty():
        ev = sub.queue.get_nowait()
        if isinstance(ev, MessagesAdded):
            added += ev.uids
    assert added == [4, 5]  # published after the commit, in order
    sub.close()


async def _deliver(store: Store, folder_id: int, blob: str) -> Any:
    return await store.deliver(blob, 20, [DeliveryTarget(folder_id, b"", frozenset())])


async def test_a_failing_writer_costs_only_its_own_change(sq: Any) -> None:
    store, _addr, inbox = sq
    await store.append(inbox.id, msg(0))
    blob = await store.put_blob(msg(1))
    before = store.writer.stats.groups
    results = await asyncio.gather(
        _deliver(store, inbox.id, blob),
        _deliver(store, 10_000, blob),  # no such folder: fails inside its savepoint
        store.store_flags(inbox.id, [1], ["\\Flagged"], "add"),
        return_exceptions=True)
    assert store.writer.stats.groups == before + 1  # the other two: one commit
    assert isinstance(results[1], NotFound)
    assert not isinstance(results[0], BaseException)
    assert not isinstance(results[2], BaseException)
    msgs = await store.list_messages(inbox.id)
    assert [m.uid for m in msgs] == [1, 2]
    assert "\\Flagged" in msgs[0].flags
    # the first writer of a group failing: its transaction is rolled back whole, the
    # others run in the next one
    results = await asyncio.gather(
        _deliver(store, 10_000, blob),
        _deliver(store, inbox.id, blob),
        _deliver(store, inbox.id, blob),
        return_exceptions=True)
    assert isinstance(results[0], NotFound)
    assert not any(isinstance(r, BaseException) for r in results[1:])
    assert [m.uid for m in await store.list_messages(inbox.id)] == [1, 2, 3, 4]


async def test_failed_commit_fails_every_member_and_stores_nothing(
        sq: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, addr, inbox = sq
    await store.append(inbox.id, msg(0))
    sub = store.events.subscribe(addr.id)

    async def broken(*_a: Any, **_k: Any) -> None:
        raise OperationalError("INSERT INTO change_log", {}, Exception("disk I/O error"))

    def broken_sync(*_a: Any, **_k: Any) -> None:
        raise OperationalError("INSERT INTO change_log", {}, Exception("disk I/O error"))

    blob = await store.put_blob(msg(1))
    monkeypatch.setattr(writer_module, "record_changes", broken)
    monkeypatch.setattr(writer_module, "record_changes_sync", broken_sync)
    results = await asyncio.gather(
        _deliver(store, inbox.id, blob),
        store.store_flags(inbox.id, [1], ["\\Seen"], "add"),
        return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results), results
    monkeypatch.undo()
    msgs = await store.list_messages(inbox.id)
    assert [m.uid for m in msgs] == [1] and "\\Seen" not in msgs[0].flags
    assert sub.queue.empty()  # nothing committed, nothing announced
    # the writer keeps working afterwards
    await store.append(inbox.id, msg(2))
    assert len(await store.list_messages(inbox.id)) == 2
    sub.close()


async def test_a_cancelled_writer_does_not_block_the_others(sq: Any) -> None:
    store, _addr, inbox = sq
    blob = await store.put_blob(msg(1))
    first = asyncio.ensure_future(_deliver(store, inbox.id, blob))
    cancelled = asyncio.ensure_future(_deliver(store, inbox.id, blob))
    last = asyncio.ensure_future(_deliver(store, inbox.id, blob))
    await asyncio.sleep(0)  # all three queued; the first one's body is running
    cancelled.cancel()  # before its turn: skipped
    done = await asyncio.gather(first, last)
    assert cancelled.cancelled()
    uids = sorted(m.uid for m in await store.list_messages(inbox.id))
    assert uids == [done[0][0].uid, done[1][0].uid] == [1, 2]


async def test_function_jobs_and_async_bodies_alternate_in_queue_order(sq: Any) -> None:
    """Plain-function jobs (the hot paths, one hop to the writer thread) and async
    bodies (the rest) are grouped separately, each run keeping the queue's order."""
    store, addr, inbox = sq
    blob = await store.put_blob(msg(1))
    before = store.writer.stats.groups
    results = await asyncio.gather(
        _deliver(store, inbox.id, blob),  # function job
        _deliver(store, inbox.id, blob),  # same group
        store.create_folder(addr.id, "Work"),  # async body: a group of its own
        _deliver(store, inbox.id, blob),  # function job again: the third group
        return_exceptions=True)
    assert not any(isinstance(r, BaseException) for r in results), results
    assert store.writer.stats.groups == before + 3
    assert [r[0].uid for r in (results[0], results[1], results[3])] == [1, 2, 3]
    assert await store.get_folder(addr.id, "Work") is not None


async def test_a_function_job_cancelled_in_its_group_is_still_committed(sq: Any) -> None:
    """Cancelled while its group runs on the writer thread: the caller hears
    CancelledError, the change is committed all the same (as with a shield), and the
    writer goes on with the next job."""
    store, _addr, inbox = sq
    started, release = threading.Event(), threading.Event()

    def slow(conn: Any, _events: list[Any]) -> int:
        started.set()
        release.wait(10)
        conn.execute(text("UPDATE folders SET first_recent_uid = 77 WHERE id = :i"),
                     {"i": inbox.id})
        return 1

    job = asyncio.ensure_future(store.run_write(slow))
    assert await asyncio.to_thread(started.wait, 10)
    job.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await job
    await store.append(inbox.id, msg(1))  # the writer goes on
    assert await store.run_read(lambda conn: conn.execute(text(
        "SELECT first_recent_uid FROM folders WHERE id = :i"), {"i": inbox.id}).scalar()) == 77

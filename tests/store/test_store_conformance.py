"""Store conformance: every test runs on SQLite and on PostgreSQL (fixture ``store``)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from mailstack.store import (
    AlreadyExists,
    Conflict,
    FlagsChanged,
    LimitReached,
    MessagesAdded,
    MessagesExpunged,
    NotFound,
    Store,
    Unavailable,
)
from mailstack.store.mailbox import DeliveryTarget


def msg(n: int) -> bytes:
    return f"From: a@example.org\r\nSubject: message {n}\r\n\r\nbody {n}\r\n".encode()


async def mailbox(store: Store, address: str = "anna@example.com") -> tuple[int, int]:
    local, _, domain = address.partition("@")
    if await store.get_domain(domain) is None:
        await store.add_domain(domain, "standard")
    a = await store.add_address(local, domain, password_hash="x")
    inbox = await store.get_folder(a.id, "INBOX")
    assert inbox is not None
    return a.id, inbox.id


async def test_uids_ascending_and_never_visible_out_of_order(store: Store) -> None:
    """50 concurrent appends: UIDs 1..50, and a reader polling meanwhile only ever sees
    a gap-free prefix (no UID n+1 committed before UID n)."""
    _, inbox = await mailbox(store)
    snapshots: list[list[int]] = []
    done = asyncio.Event()

    async def reader() -> None:
        while not done.is_set():
            snapshots.append([m.uid for m in await store.list_messages(inbox)])
            await asyncio.sleep(0)

    task = asyncio.create_task(reader())
    results = await asyncio.gather(*(store.append(inbox, msg(i)) for i in range(50)))
    done.set()
    await task
    assert sorted(m.uid for m in results) == list(range(1, 51))
    assert [m.uid for m in await store.list_messages(inbox)] == list(range(1, 51))
    for snap in snapshots:
        assert snap == list(range(1, len(snap) + 1)), snap
    status = await store.folder_status(inbox)
    assert status.uidnext == 51 and status.messages == 50


async def test_modseq_moves_on_every_flag_change(store: Store) -> None:
    _, inbox = await mailbox(store)
    m = await store.append(inbox, msg(1))
    seen = [m.modseq]
    for flags, mode in ((["\\Seen"], "add"), (["$Label1"], "add"), (["\\Seen"], "remove"),
                        (["\\Flagged"], "replace")):
        changed, refused = await store.store_flags(inbox, [m.uid], flags, mode)
        assert refused == [] and len(changed) == 1
        assert changed[0].modseq > seen[-1]
        seen.append(changed[0].modseq)
    (final,) = await store.get_messages(inbox, [m.uid])
    assert final.flags == frozenset({"\\Flagged"})
    assert (await store.folder_status(inbox)).highestmodseq == seen[-1]
    # a no-op change does not move MODSEQ
    changed, _ = await store.store_flags(inbox, [m.uid], ["\\Flagged"], "add")
    assert changed == []
    assert (await store.folder_status(inbox)).highestmodseq == seen[-1]


async def test_unchanged_since_refuses_newer(store: Store) -> None:
    _, inbox = await mailbox(store)
    a = await store.append(inbox, msg(1))
    b = await store.append(inbox, msg(2))
    await store.store_flags(inbox, [b.uid], ["\\Seen"], "add")
    changed, refused = await store.store_flags(inbox, [a.uid, b.uid], ["\\Flagged"], "add",
                                               unchanged_since=b.modseq)
    assert [m.uid for m in changed] == [a.uid] and refused == [b.uid]


async def test_expunge_records_uids_with_modseq(store: Store) -> None:
    _, inbox = await mailbox(store)
    for i in range(5):
        await store.append(inbox, msg(i))
    before = (await store.folder_status(inbox)).highestmodseq
    await store.store_flags(inbox, [2, 4], ["\\Deleted"], "add")
    assert await store.expunge(inbox) == [2, 4]
    assert await store.expunged_since(inbox, before) == [2, 4]
    assert [m.uid for m in await store.list_messages(inbox)] == [1, 3, 5]
    # UID EXPUNGE restricted to a set (RFC 4315 §2.1)
    await store.store_flags(inbox, [1, 3], ["\\Deleted"], "add")
    assert await store.expunge(inbox, [3]) == [3]
    assert [m.uid for m in await store.list_messages(inbox)] == [1, 5]
    # POP3-style removal regardless of \Deleted
    assert await store.expunge(inbox, [5], only_deleted=False) == [5]
    # expunged UIDs are never reused
    m = await store.append(inbox, msg(9))
    assert m.uid == 6


async def test_uidvalidity_changes_when_folder_recreated(store: Store) -> None:
    aid, _ = await mailbox(store)
    f1 = await store.create_folder(aid, "Projects")
    await store.delete_folder(aid, "Projects")
    f2 = await store.create_folder(aid, "Projects")
    assert f2.uidvalidity != f1.uidvalidity
    assert f2.uidnext == 1


async def test_folder_rules(store: Store) -> None:
    aid, _ = await mailbox(store)
    names = sorted(f.name for f in await store.list_folders(aid))
    assert names == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    specials = {f.name: f.special_use for f in await store.list_folders(aid)}
    assert specials["Sent"] == "\\Sent" and specials["INBOX"] is None
    with pytest.raises(Conflict):
        await store.delete_folder(aid, "inbox")
    with pytest.raises(AlreadyExists):
        await store.create_folder(aid, "Inbox")
    with pytest.raises(AlreadyExists):
        await store.create_folder(aid, "Sent")
    assert (await store.get_folder(aid, "iNbOx")) is not None
    # names are data: path-like and SQL-like names stay plain rows
    for odd in ("../../x", "a'; DROP TABLE messages; --", "100%_done", "ünïcödé"):
        f = await store.create_folder(aid, odd)
        assert (await store.get_folder(aid, odd)) == f
    assert await store.get_folder(aid, "100%_don_") is None


async def test_rename_moves_children_and_inbox_rename_moves_messages(store: Store) -> None:
    aid, inbox = await mailbox(store)
    await store.create_folder(aid, "Work")
    await store.create_folder(aid, "Work/2024")
    await store.create_folder(aid, "Workshop")
    await store.rename_folder(aid, "Work", "Jobs")
    names = {f.name for f in await store.list_folders(aid)}
    assert {"Jobs", "Jobs/2024", "Workshop"} <= names and "Work" not in names
    with pytest.raises(AlreadyExists):
        await store.rename_folder(aid, "Jobs", "Sent")
    with pytest.raises(NotFound):
        await store.rename_folder(aid, "Nope", "Other")
    for i in range(3):
        await store.append(inbox, msg(i))
    await store.rename_folder(aid, "INBOX", "Old mail")
    old = await store.get_folder(aid, "Old mail")
    assert old is not None
    assert len(await store.list_messages(old.id)) == 3
    assert await store.list_messages(inbox) == []  # INBOX stays, empty (RFC 9051 §6.3.6)


async def test_copy_and_move(store: Store) -> None:
    aid, inbox = await mailbox(store)
    trash = await store.get_folder(aid, "Trash")
    assert trash is not None
    for i in range(3):
        await store.append(inbox, msg(i), flags=["\\Seen"])
    assert await store.copy_messages(inbox, [1, 3], trash.id) == [(1, 1), (3, 2)]
    copied = await store.list_messages(trash.id)
    assert [m.flags for m in copied] == [frozenset({"\\Seen"})] * 2
    assert await store.move_messages(inbox, [2, 99], trash.id) == [(2, 3)]
    assert [m.uid for m in await store.list_messages(inbox)] == [1, 3]
    assert 2 in await store.expunged_since(inbox, 0)
    body = await store.message_bytes((await store.get_messages(trash.id, [3]))[0])
    assert body == msg(1)


async def test_events_published_after_commit(store: Store) -> None:
    aid, inbox = await mailbox(store)
    with store.events.subscribe(aid) as sub:
        m = await store.append(inbox, msg(1))
        await store.store_flags(inbox, [m.uid], ["\\Deleted"], "add")
        await store.expunge(inbox)
        got = [sub.queue.get_nowait() for _ in range(3)]
    assert isinstance(got[0], MessagesAdded) and got[0].uids == (1,)
    assert isinstance(got[1], FlagsChanged) and got[1].uids == (1,)
    assert isinstance(got[2], MessagesExpunged) and got[2].uids == (1,)
    assert store.events.subscriber_count(aid) == 0


async def test_deliver_one_blob_many_copies(store: Store) -> None:
    _, inbox_a = await mailbox(store, "anna@example.com")
    _, inbox_b = await mailbox(store, "bob@example.com")
    body = msg(7)
    blob = await store.put_blob(body)
    rows = await store.deliver(blob, len(body), [
        DeliveryTarget(inbox_a, b"Delivered-To: anna@example.com\r\n"),
        DeliveryTarget(inbox_b, b"Delivered-To: bob@example.com\r\n")])
    assert [r.blob_id for r in rows] == [blob, blob]
    data_b = await store.message_bytes(rows[1])
    assert data_b == b"Delivered-To: bob@example.com\r\n" + body
    assert rows[1].size == len(data_b)


async def test_blobs_survive_reopen(store: Store, db_url: str, tmp_path: Path) -> None:
    _, inbox = await mailbox(store)
    await store.append(inbox, msg(1))
    await store.close()
    again = Store(db_url, tmp_path / "blobs")
    await again.open()
    try:
        (m,) = await again.list_messages(inbox)
        assert await again.message_bytes(m) == msg(1)
    finally:
        await again.close()


async def test_failed_fsync_stores_nothing(store: Store, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """A disk fault while writing the blob: Unavailable, no row, no blob, no temp file."""
    _, inbox = await mailbox(store)

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(Unavailable):
        await store.append(inbox, msg(1))
    monkeypatch.undo()
    assert await store.list_messages(inbox) == []
    assert list(store.blobs.tmp.iterdir()) == []
    assert list(store.blobs.root.glob("??/??/*")) == []


async def test_temp_files_swept_at_start(store: Store, db_url: str, tmp_path: Path) -> None:
    """A crash's temp files go; those a live process is writing (a running server,
    while a CLI command opens the same store) stay."""
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    (store.blobs.tmp / "leftover.123").write_bytes(b"half a message")
    (store.blobs.tmp / f"{'a' * 64}.{dead.pid}.1").write_bytes(b"crashed writer")
    writing = store.blobs.tmp / f"{'b' * 64}.{os.getppid()}.2"
    writing.write_bytes(b"a live writer")
    await store.close()
    again = Store(db_url, tmp_path / "blobs")
    await again.open()
    try:
        assert list(again.blobs.tmp.iterdir()) == [writing]
        old = time.time() - 7200
        os.utime(writing, (old, old))  # older than an hour: a stuck writer, swept
        assert again.blobs.sweep_temp() == 1
        assert list(again.blobs.tmp.iterdir()) == []
    finally:
        await again.close()


async def test_addresses_compare_case_insensitively(store: Store) -> None:
    await store.add_domain("Example.COM", "free")
    a = await store.add_address("Anna.Alpha", "example.com", password_hash="x")
    assert (await store.get_address("anna.alpha@EXAMPLE.com")) == a
    with pytest.raises(AlreadyExists):
        await store.add_address("ANNA.ALPHA", "example.com")


async def test_address_kinds_and_limits(store: Store) -> None:
    await store.add_domain("example.com", "free")
    nr = await store.add_address("no-reply", "example.com", kind="no-reply")
    assert await store.list_folders(nr.id) == []  # a no-reply address receives nothing
    await store.add_address("all", "example.com", kind="catchall")
    with pytest.raises(AlreadyExists):
        await store.add_address("all2", "example.com", kind="catchall")
    assert (await store.catchall_for("example.com")).local_part == "all"  # type: ignore[union-attr]
    await store.add_alias("team", "example.com", ["anna@example.com", "x@remote.org"])
    with pytest.raises(AlreadyExists):
        await store.add_address("team", "example.com")
    with pytest.raises(AlreadyExists):
        await store.add_alias("no-reply", "example.com", ["a@b.c"])
    await store.add_address("c", "example.com", max_addresses=3)
    with pytest.raises(LimitReached):
        await store.add_address("d", "example.com", max_addresses=3)
    assert len(await store.list_addresses("example.com")) == 3
    with pytest.raises(NotFound):
        await store.add_address("x", "unknown.org")


async def test_remove_address_destroys_content(store: Store) -> None:
    aid, inbox = await mailbox(store)
    await store.append(inbox, msg(1))
    await store.remove_address(aid)
    assert await store.get_address("anna@example.com") is None
    assert await store.get_folder_by_id(inbox) is None
    assert await store.list_messages(inbox) == []


async def test_password_change_bumps_epoch_and_notifies(store: Store) -> None:
    aid, _ = await mailbox(store)
    with store.events.subscribe(aid) as sub:
        epoch = await store.set_password(aid, "newhash")
        ev = sub.queue.get_nowait()
    assert epoch == 1 and ev.epoch == 1  # type: ignore[attr-defined]
    a = await store.get_address("anna@example.com")
    assert a is not None and a.password_hash == "newhash" and a.credential_epoch == 1


async def test_pop3_lock_and_stale_takeover(store: Store) -> None:
    aid, _ = await mailbox(store)
    assert await store.acquire_pop3_lock(aid, "one", stale_after=60)
    assert not await store.acquire_pop3_lock(aid, "two", stale_after=60)
    assert await store.acquire_pop3_lock(aid, "two", stale_after=-1)  # stale: taken over
    assert not await store.refresh_pop3_lock(aid, "one")
    await store.release_pop3_lock(aid, "two")
    assert await store.acquire_pop3_lock(aid, "three", stale_after=60)


async def test_activity_and_send_log(store: Store) -> None:
    aid, _ = await mailbox(store)
    await store.log_activity("login_fail", address="Anna@Example.com", client_ip="192.0.2.1",
                             protocol="imap")
    (entry,) = await store.list_activity("anna@example.com")
    assert entry.event == "login_fail" and entry.client_ip == "192.0.2.1"
    await store.record_send(aid, 5)
    assert [n for _, n in await store.sends_since(aid, 0)] == [5]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)  # a PostgreSQL feature
async def test_events_reach_other_nodes(backend: str, store: Store, db_url: str,
                                        tmp_path: Path) -> None:
    """Two front-end nodes on one PostgreSQL: a commit on one reaches the other's
    subscribers through LISTEN/NOTIFY; nothing is sent for a rolled-back change."""
    aid, inbox = await mailbox(store)
    other = Store(db_url, tmp_path / "blobs")
    await other.open()
    try:
        with other.events.subscribe(aid) as sub:
            await store.append(inbox, msg(1))
            ev = await asyncio.wait_for(sub.queue.get(), 10)
            assert isinstance(ev, MessagesAdded) and ev.uids == (1,)
            with pytest.raises(NotFound):
                await store.delete_folder(aid, "does-not-exist")
            await store.store_flags(inbox, [1], ["\\Seen"], "add")
            ev = await asyncio.wait_for(sub.queue.get(), 10)
            assert isinstance(ev, FlagsChanged)
            assert sub.queue.empty()
    finally:
        await other.close()


async def test_concurrent_first_logins_note_network_once(store: Store) -> None:
    """Many sessions of one address logging in at once from one network (a mail client
    opening several connections): no error, and the network is recorded once."""
    aid, _ = await mailbox(store)
    results = await asyncio.gather(*(store.note_network(aid, "192.0.2.0/24")
                                     for _ in range(20)))
    assert results == [False] * 20  # the first network is the baseline, never "new"
    assert await store.note_network(aid, "198.51.100.0/24") is True
    assert await store.note_network(aid, "198.51.100.0/24") is False

"""COPY and MOVE within one folder (RFC 6851 §3 allows MOVE to the selected mailbox;
like Dovecot the messages get new UIDs). Both backends (fixture ``store``)."""

from __future__ import annotations

from mailstack.store import MessagesAdded, MessagesExpunged, Store
from tests.store.test_store_conformance import mailbox, msg


async def test_move_within_folder_gives_new_uids(store: Store) -> None:
    addr, inbox = await mailbox(store)
    for i in range(3):
        await store.append(inbox, msg(i), flags=["\\Seen"] if i == 1 else [])
    before = (await store.folder_status(inbox)).highestmodseq
    with store.events.subscribe(addr) as sub:
        pairs = await store.move_messages(inbox, [1, 2], inbox)
        events = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    assert pairs == [(1, 4), (2, 5)]
    rows = await store.list_messages(inbox)
    assert [m.uid for m in rows] == [3, 4, 5]
    assert rows[2].flags == frozenset({"\\Seen"})  # flags travel with the message
    assert [await store.message_bytes(m) for m in rows] == [msg(2), msg(0), msg(1)]
    status = await store.folder_status(inbox)
    assert status.uidnext == 6 and status.messages == 3
    assert status.highestmodseq > before
    assert await store.expunged_since(inbox, before) == [1, 2]
    assert any(isinstance(e, MessagesAdded) and e.uids == (4, 5) for e in events)
    assert any(isinstance(e, MessagesExpunged) and e.uids == (1, 2) for e in events)


async def test_copy_within_folder_adds_copies(store: Store) -> None:
    _, inbox = await mailbox(store)
    await store.append(inbox, msg(0))
    assert await store.copy_messages(inbox, [1], inbox) == [(1, 2)]
    rows = await store.list_messages(inbox)
    assert [m.uid for m in rows] == [1, 2]
    assert rows[0].blob_id == rows[1].blob_id  # one blob, two rows

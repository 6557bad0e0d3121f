"""SQLite reads known to be small run on the calling thread (the event loop), bigger
ones and ones of unknown size on a reader thread (store/threads.py ``INLINE_ROWS``); a
folder's whole-folder reads go by the message count SELECT last saw; a few small
message files are read without a thread hop, more or bigger ones in a thread.

Which thread ran a read is observed by wrapping the store's two ways of running it."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest

from mailstack.store import Store
from mailstack.store import base as base_module
from mailstack.store import imap as imap_module


def _spy(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record (how, thread id) of every read transaction from now on."""
    seen: list[tuple[str, int]] = []
    threads = store._threads
    assert threads is not None
    real_tx = threads._read_tx

    def read_here(fn: Any, *args: Any) -> Any:
        seen.append(("here", threading.get_ident()))
        return real_tx(fn, args)

    def read_tx(fn: Any, args: Any) -> Any:
        seen.append(("thread", threading.get_ident()))
        return real_tx(fn, args)

    monkeypatch.setattr(threads, "read_here", read_here)
    monkeypatch.setattr(threads, "_read_tx", read_tx)
    return seen


def _msg(i: int) -> bytes:
    return f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()


async def test_small_reads_run_on_the_loop_big_ones_in_a_thread(
        sq: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, addr, _inbox = sq
    monkeypatch.setattr(base_module, "INLINE_ROWS", 5)
    inbox = await store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    for i in range(8):
        await store.append(inbox.id, _msg(i))
    loop_thread = threading.get_ident()
    seen = _spy(store, monkeypatch)

    got = await store.get_folder(addr.id, "INBOX")  # one row by key
    assert got is not None and got.id == inbox.id and got.uidnext == 9
    assert seen == [("here", loop_thread)]
    seen.clear()
    rows = await store.flag_rows(inbox.id, [1, 2, 3])  # three UIDs: at most three rows
    assert [r[0] for r in rows] == [1, 2, 3] and seen == [("here", loop_thread)]
    seen.clear()
    rows = await store.flag_rows(inbox.id, range(1, 8))  # seven: more than 5
    assert len(rows) == 7 and seen[0][0] == "thread" and seen[0][1] != loop_thread
    seen.clear()

    # a whole-folder read: unknown size until SELECT has counted the folder
    assert len(await store.message_rows(inbox.id)) == 8
    assert seen[0][0] == "thread"
    seen.clear()
    opened = await store.select_folder(addr.id, "INBOX")
    assert opened is not None and len(opened.uids) == 8 and seen[0][0] == "thread"
    seen.clear()
    await store.message_rows(inbox.id)  # 8 > 5: still a thread, now known
    await store.select_folder(addr.id, "INBOX")
    assert [how for how, _ in seen] == ["thread", "thread"]
    seen.clear()

    # after an EXPUNGE down to 3 messages, SELECT counts 3 and the next reads stay here
    await store.store_flags(inbox.id, list(range(1, 6)), ["\\Deleted"], "add")
    assert await store.expunge(inbox.id) == [1, 2, 3, 4, 5]
    seen.clear()
    opened = await store.select_folder(addr.id, "INBOX")  # hint still 8: a thread
    assert opened is not None and opened.uids == [6, 7, 8]
    assert [how for how, _ in seen] == ["thread"]
    seen.clear()
    assert [u for u, _ in await store.uids_by_flags(inbox.id, 0, 0)] == [6, 7, 8]
    assert (await store.select_folder(addr.id, "INBOX")) is not None
    assert [r.uid for r in await store.message_rows(inbox.id)] == [6, 7, 8]
    assert seen == [("here", loop_thread)] * 3


async def test_a_few_small_files_are_read_without_a_hop(
        sq: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, addr, _inbox = sq
    inbox = await store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    for i in range(3):
        await store.append(inbox.id, _msg(i))
    msgs = await store.get_messages(inbox.id, [1, 2, 3])
    hops: list[int] = []
    real = asyncio.to_thread

    async def to_thread(fn: Any, *a: Any, **kw: Any) -> Any:
        hops.append(1)
        return await real(fn, *a, **kw)

    monkeypatch.setattr(imap_module.asyncio, "to_thread", to_thread)
    items = [(m.blob_id, m.prefix) for m in msgs]
    total = sum(m.size for m in msgs)
    assert await store.read_messages(items, size=total) == [_msg(i) for i in range(3)]
    assert hops == []
    monkeypatch.setattr(imap_module, "INLINE_FILES", 2)  # more files than that: a hop
    assert await store.read_messages(items, size=total) == [_msg(i) for i in range(3)]
    assert hops == [1]
    monkeypatch.setattr(imap_module, "INLINE_FILES", 32)
    assert await store.read_messages(items) == [_msg(i) for i in range(3)]  # size unknown
    assert hops == [1, 1]
    monkeypatch.setattr(imap_module, "INLINE_BYTES", total - 1)  # bigger than that: a hop
    assert await store.read_messages(items, size=total) == [_msg(i) for i in range(3)]
    assert hops == [1, 1, 1]


async def test_prepared_reads_answer_like_the_store_and_never_share_across_fork(
        sq: Any) -> None:
    """RCPT facts through the prepared statement: a hosted address with its counter,
    an unknown local part, a key of another domain, an unhosted domain. A process
    forked after a prepared read opens its own connection (a SQLite connection must
    not cross fork(2))."""
    store, addr, _inbox = sq
    inbox = await store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    await store.append(inbox.id, _msg(1))
    domain, found, usage = await store.rcpt_facts("Example.COM.", "anna@example.com")
    assert domain is not None and domain.name == "example.com"
    assert found is not None and found.id == addr.id and found.domain == "example.com"
    assert usage == (len(_msg(1)), 1)
    domain, found, usage = await store.rcpt_facts("example.com", "nobody@example.com")
    assert domain is not None and found is None and usage == (0, 0)
    domain, found, _ = await store.rcpt_facts("example.com", "anna@example.org")
    assert domain is not None and found is None
    assert await store.rcpt_facts("example.org", "anna@example.org") == (None, None, (0, 0))

    threads = store._threads
    assert threads is not None and len(threads._conns) == 1
    from mailstack.store.smtp import _RCPT_FACTS
    params = {"name": "example.com", "local": "anna", "same": True}
    pid = os.fork()
    if pid == 0:  # the child: no event loop, plain calls
        ok = False
        try:
            row = threads.read_prepared(_RCPT_FACTS, params)
            ok = row is not None and row["id"] == addr.id and len(threads._conns) == 2 \
                and threads._local.conn[0] == os.getpid()
        finally:
            os._exit(0 if ok else 1)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert threads.read_prepared(_RCPT_FACTS, params) is not None
    assert len(threads._conns) == 1  # the parent's own, reused


async def test_pop3_message_read_without_a_hop_when_small(
        sq: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """POP3 RETR's presence check + file read: on the loop for a message the caller
    says is small, in a thread otherwise; None once the message is gone either way."""
    store, addr, _inbox = sq
    inbox = await store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    msg = await store.append(inbox.id, _msg(1))
    seen = _spy(store, monkeypatch)
    assert await store.present_message_bytes(inbox.id, msg.uid, msg.id, msg.size) == _msg(1)
    assert await store.present_message_bytes(inbox.id, msg.uid, msg.id) == _msg(1)
    big = imap_module.INLINE_BYTES + 1
    assert await store.present_message_bytes(inbox.id, msg.uid, msg.id, big) == _msg(1)
    assert [how for how, _ in seen] == ["here", "thread", "thread"]
    await store.store_flags(inbox.id, [msg.uid], ["\\Deleted"], "add")
    await store.expunge(inbox.id)
    assert await store.present_message_bytes(inbox.id, msg.uid, msg.id, msg.size) is None

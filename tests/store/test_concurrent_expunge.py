"""Concurrent EXPUNGE of one folder (found by bench/imap_stress.py: several IMAP clients
on one mailbox): each \\Deleted message is expunged exactly once, both calls succeed,
on both backends (PostgreSQL runs the two transactions side by side)."""

from __future__ import annotations

import asyncio

from mailstack.store import Store


async def test_concurrent_expunges_remove_each_message_once(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    addr = await store.add_address("anna", "example.com")
    inbox = await store.get_folder(addr.id, "INBOX")
    assert inbox is not None
    for i in range(6):
        await store.append(inbox.id, f"Subject: {i}\r\n\r\nx\r\n".encode())
    await store.store_flags(inbox.id, [2, 3, 5], ["\\Deleted"], "add")
    for _ in range(3):  # a few tries at the interleaving
        results = await asyncio.gather(store.expunge(inbox.id), store.expunge(inbox.id),
                                       store.expunge(inbox.id))
        got = sorted(u for r in results for u in r)
        remaining = [m.uid for m in await store.list_messages(inbox.id)]
        if got:
            assert got == [2, 3, 5], results  # each exactly once
            assert sorted(await store.expunged_since(inbox.id, 0)) == [2, 3, 5]
        assert remaining == [1, 4, 6]

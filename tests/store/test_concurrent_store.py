"""Concurrent STOREs on one message from two stores (two processes or nodes) never lose
each other's change: each transaction reads the flags it changes only after it holds
the folder's row lock (PostgreSQL runs read committed; SQLite has one writer). Found by
bench/imap_stress.py: a \\Deleted added by one session was undone by another session's
+FLAGS (\\Seen) computed from flags read before the first committed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailstack.store import Store


async def test_two_stores_adding_flags_to_one_message_keep_both(db_url: str,
                                                                tmp_path: Path) -> None:
    one = Store(db_url, tmp_path / "blobs")
    await one.open(listen=False)
    two = Store(db_url, tmp_path / "blobs")
    await two.open(listen=False)
    try:
        await one.add_domain("example.com", "standard")
        addr = await one.add_address("anna", "example.com")
        inbox = await one.get_folder(addr.id, "INBOX")
        assert inbox is not None
        rounds = 40
        for i in range(rounds):
            await one.append(inbox.id, f"Subject: {i}\r\n\r\nx\r\n".encode())
        for uid in range(1, rounds + 1):
            await asyncio.gather(one.store_flags(inbox.id, [uid], ["\\Deleted"], "add"),
                                 two.store_flags(inbox.id, [uid], ["\\Seen"], "add"),
                                 one.store_flags(inbox.id, [uid], ["$Work"], "add"),
                                 two.store_flags(inbox.id, [uid], ["$Late"], "add"))
        msgs = await one.list_messages(inbox.id)
        lost = [m.uid for m in msgs
                if not {"\\Deleted", "\\Seen", "$Work", "$Late"} <= set(m.flags)]
        assert lost == []
        modseqs = [m.modseq for m in msgs]
        assert len(set(modseqs)) == rounds  # each message's last change its own MODSEQ
    finally:
        await two.close()
        await one.close()

"""Blob garbage collection (both backends): unreferenced old files go; referenced,
queued and young ones stay."""

from __future__ import annotations

import os
import time

from mailstack.store import Store


async def test_gc_removes_only_unreferenced_old_blobs(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    a = await store.add_address("anna", "example.com", password_hash="x")
    inbox = await store.get_folder(a.id, "INBOX")
    assert inbox is not None
    keep = await store.append(inbox.id, b"Subject: keep\r\n\r\nkeep\r\n")
    gone = await store.append(inbox.id, b"Subject: gone\r\n\r\ngone\r\n")
    queued = await store.put_blob(b"Subject: queued\r\n\r\nfor the internet\r\n")
    await store.enqueue("anna@example.com", ["x@remote.example"], queued, 30)
    await store.expunge(inbox.id, [gone.uid], only_deleted=False)
    young = await store.put_blob(b"Subject: young\r\n\r\nnot committed yet\r\n")

    old = time.time() - 7200
    for blob_id in (keep.blob_id, gone.blob_id, queued):
        os.utime(store.blobs.path_of(blob_id), (old, old))
    assert await store.collect_garbage(min_age=3600) == 1
    assert not store.blobs.path_of(gone.blob_id).exists()
    for blob_id in (keep.blob_id, queued, young):
        assert store.blobs.path_of(blob_id).exists()
    (m,) = await store.list_messages(inbox.id)
    assert await store.message_bytes(m) == b"Subject: keep\r\n\r\nkeep\r\n"


async def test_gc_after_address_removed(store: Store) -> None:
    await store.add_domain("example.com", "standard")
    a = await store.add_address("anna", "example.com", password_hash="x")
    inbox = await store.get_folder(a.id, "INBOX")
    assert inbox is not None
    m = await store.append(inbox.id, b"Subject: private\r\n\r\nsecret\r\n")
    await store.remove_address(a.id)
    old = time.time() - 7200
    os.utime(store.blobs.path_of(m.blob_id), (old, old))
    assert await store.collect_garbage(min_age=3600) == 1
    assert list(store.blobs.root.glob("??/??/*")) == []


async def test_identical_bytes_again_make_an_old_orphan_young(store: Store) -> None:
    """The same bytes arriving again reuse the blob; its time is refreshed so a
    collector running between the write and the commit keeps it."""
    data = b"Subject: same\r\n\r\nsame bytes\r\n"
    blob_id = await store.put_blob(data)
    old = time.time() - 7200
    os.utime(store.blobs.path_of(blob_id), (old, old))  # an old orphan
    assert await store.put_blob(data) == blob_id  # a new delivery, not committed yet
    assert await store.collect_garbage(min_age=3600) == 0
    assert store.blobs.path_of(blob_id).exists()

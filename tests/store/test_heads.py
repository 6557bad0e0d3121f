"""Header blocks kept by blob id (store/heads.py) and header-only reads through them:
what a header-only read returns holds the message's whole header (the same header
fields as the whole message, with any per-copy prefix), the second read of a blob
opens no file, and the memory bound holds."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from mailstack import mime
from mailstack.store import Store
from mailstack.store import heads as heads_module
from mailstack.store.heads import HeadCache, read_head


@pytest.mark.parametrize(("data", "head"), [
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore", b"A: 1\r\nB: 2\r\n\r\n"),
    (b"A: 1\nB: 2\n\nbody", b"A: 1\nB: 2\n\n"),
    (b"A: 1\r\nno blank line at all", b"A: 1\r\nno blank line at all"),
    (b"\r\nbody only", b"\r\n"),
    (b"\nbody only", b"\n"),
    (b"", b""),
    # the blank line straddles the 16 KiB read size
    (b"X: " + b"y" * (16 * 1024 - 5) + b"\r\n\r\nbody", b"X: " + b"y" * (16 * 1024 - 5)
     + b"\r\n\r\n"),
])
def test_read_head(tmp_path: Path, data: bytes, head: bytes) -> None:
    f = tmp_path / "m"
    f.write_bytes(data)
    assert read_head(f) == head


def test_cache_bound() -> None:
    cache = HeadCache(max_bytes=10)
    cache.put("a", b"12345")
    cache.put("b", b"12345")
    assert cache.get("a") == b"12345"  # a used last
    cache.put("c", b"123")
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c")
    cache.put("big", b"x" * (heads_module.MAX_HEAD + 1))
    assert cache.get("big") is None


async def test_header_only_reads_hold_the_header_and_come_from_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", tmp_path / "blobs")
    await store.open()
    try:
        rng = random.Random(3)
        items: list[tuple[str, bytes]] = []
        wholes: list[bytes] = []
        for i in range(60):
            eol = rng.choice((b"\r\n", b"\n"))
            head = eol.join(b"H%d: v%d" % (j, i) for j in range(rng.randrange(0, 6)))
            data = head + (eol if head else b"") + eol + b"body %d" % i + eol * 2 + b"X: no"
            if rng.random() < 0.2:  # the blank line right at the start of the file
                data = eol + b"body"
            prefix = rng.choice((b"", b"Delivered-To: a@b\r\n", b"Received: x\r\n\r\n"))
            blob = await store.put_blob(data)
            items.append((blob, prefix))
            wholes.append(prefix + data)
        names = ["h0", "h3", "delivered-to", "received", "x"]
        got = await store.read_messages(items, header_only=True)
        for part, whole in zip(got, wholes, strict=True):
            assert whole.startswith(part)
            assert mime.header_fields(part, names) == mime.header_fields(whole, names)

        def no_file(_path: Any) -> bytes:
            raise AssertionError("read from the file again")

        monkeypatch.setattr("mailstack.store.imap.read_head", no_file)
        assert await store.read_messages(items, header_only=True) == got
        assert await store.read_messages(items) == wholes  # whole reads: the files
    finally:
        await store.close()

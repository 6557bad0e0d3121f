"""Flags of big folders kept in memory (store/flagcache.py): whatever another store
(another process, another node) or this one changes, ``flag_rows`` and
``uids_by_flags`` answer exactly what the database holds. Checked on both backends
against a second store that reads the database directly, after each of 120 random
changes (flags, new mail, expunges, from either store), then for a deleted folder.
The cache's bookkeeping (deltas, races, eviction) has unit tests of its own."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from mailstack.store import DeliveryTarget, Store, flagcache
from mailstack.store import imap as store_imap
from mailstack.store.base import SEEN_BIT
from mailstack.store.flagcache import FlagCache, Refresh

FLAGS = ["\\Seen", "\\Flagged", "\\Deleted", "$Work", "$Late"]


def _msg(i: int) -> bytes:
    return f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()


async def _truth(direct: Store, fid: int) -> tuple[list[Any], list[Any]]:
    return (await direct.flag_rows(fid), await direct.uids_by_flags(fid, 0, SEEN_BIT))


@pytest.mark.parametrize("loop_rows", [10**9, 3], ids=["on-loop", "in-thread"])
async def test_kept_flags_follow_every_change(db_url: str, tmp_path: Path, loop_rows: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flagcache, "MIN_ROWS", 5)
    monkeypatch.setattr(store_imap, "_LOOP_ROWS", loop_rows)  # picked in a thread above
    cached = Store(db_url, tmp_path / "blobs")
    await cached.open()
    direct = Store(db_url, tmp_path / "blobs")
    await direct.open(listen=False)
    monkeypatch.setattr(direct, "_big", lambda _fid: False)  # always the database
    try:
        await cached.add_domain("example.com", "standard")
        addr = await cached.add_address("anna", "example.com")
        inbox = await cached.get_folder(addr.id, "INBOX")
        assert inbox is not None
        fid = inbox.id
        for i in range(12):
            await cached.append(fid, _msg(i), flags=["\\Seen"] if i % 2 else [])
        opened = await cached.select_folder(addr.id, "INBOX")  # counts 12: kept from now
        assert opened is not None and cached._big(fid)
        rng = random.Random(5)
        n = 12
        for step in range(120):
            who = rng.choice((cached, direct))
            uids = [u for u, *_ in await direct.flag_rows(fid)]
            op = rng.randrange(10)
            if op < 5 and uids:
                chosen = rng.sample(uids, rng.randint(1, min(4, len(uids))))
                await who.store_flags(fid, chosen, rng.sample(FLAGS, rng.randint(1, 2)),
                                      rng.choice(("add", "remove", "replace")))
            elif op < 8:
                n += 1
                data = _msg(n)
                await who.deliver(await who.put_blob(data), len(data),
                                  [DeliveryTarget(fid, b"", frozenset())])
            else:
                await who.expunge(fid)
            got = (await cached.flag_rows(fid), await cached.uids_by_flags(fid, 0, SEEN_BIT))
            assert got == await _truth(direct, fid), step
            some = sorted(rng.sample(uids, min(3, len(uids)))) if uids else [1]
            assert await cached.flag_rows(fid, some) == await direct.flag_rows(fid, some)
        assert cached.flag_cache.since(fid) is not None  # the kept rows were used
        # a folder that is gone: nothing, and nothing kept for it
        await cached.create_folder(addr.id, "Big")
        big = await cached.get_folder(addr.id, "Big")
        assert big is not None
        for i in range(8):
            await cached.append(big.id, _msg(i))
        assert (await cached.select_folder(addr.id, "Big")) is not None
        assert len(await cached.flag_rows(big.id)) == 8
        await direct.delete_folder(addr.id, "Big")
        assert await cached.flag_rows(big.id) == []
        assert await cached.uids_by_flags(big.id, 0, 0) == []
        assert cached.flag_cache.since(big.id) is None
    finally:
        await direct.close()
        await cached.close()


def _r(uid: int, modseq: int, flags: int = 0, kw: str = "") -> tuple[int, int, int, str]:
    return (uid, modseq, flags, kw)


def test_cache_bookkeeping() -> None:
    cache = FlagCache(max_rows=6)
    kept = cache.apply(1, Refresh(5, 77, None, [_r(1, 2), _r(2, 5), _r(3, 4)], []))
    assert kept is not None and cache.since(1) == (77, 5)
    # a delta: one changed, one new, one expunged
    kept = cache.apply(1, Refresh(8, 77, 5, [_r(2, 7, 1), _r(4, 8)], [3]))
    assert kept is not None and sorted(kept.rows) == [1, 2, 4] and kept.rows[2] == _r(2, 7, 1)
    assert cache.since(1) == (77, 8)
    # an older refresh that lost a race is not applied, the newer rows are kept
    kept = cache.apply(1, Refresh(6, 77, 5, [_r(2, 6)], []))
    assert kept is not None and kept.rows[2] == _r(2, 7, 1) and cache.since(1) == (77, 8)
    stale_full = cache.apply(1, Refresh(7, 77, None, [_r(9, 7)], []))
    assert stale_full is not None and sorted(stale_full.rows) == [1, 2, 4]
    # a delta from a base that is not kept (other UIDVALIDITY, or above what is kept)
    assert cache.apply(1, Refresh(9, 78, 8, [], [])) is None
    assert cache.apply(1, Refresh(12, 77, 10, [], [])) is None
    assert cache.apply(2, Refresh(3, 5, 1, [], [])) is None
    # a new UIDVALIDITY in a whole-folder read replaces everything
    kept = cache.apply(1, Refresh(2, 78, None, [_r(1, 1)], []))
    assert kept is not None and list(kept.rows) == [1] and cache.since(1) == (78, 2)
    # at most max_rows in all: the least recently used folder goes first
    cache.apply(2, Refresh(1, 5, None, [_r(i, 1) for i in range(1, 4)], []))
    cache.apply(3, Refresh(1, 6, None, [_r(i, 1) for i in range(1, 3)], []))
    assert cache.since(1) is not None and cache.since(2) is not None
    cache.apply(1, Refresh(3, 78, 2, [_r(2, 3)], []))  # folder 1 used last
    cache.apply(4, Refresh(1, 7, None, [_r(1, 1)], []))  # 2 + 3 + 2 + 1 > 6
    assert cache.since(2) is None and cache.since(1) is not None
    assert cache.since(3) is not None and cache.since(4) is not None
    # a folder bigger than the whole budget is not kept at all
    big = cache.apply(5, Refresh(1, 9, None, [_r(i, 1) for i in range(1, 9)], []))
    assert big is not None and len(big.rows) == 8 and cache.since(5) is None

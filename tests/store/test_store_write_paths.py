"""The IMAP write paths with fewer statements (``store_flags_report``, ``expunge`` with
``DELETE ... RETURNING``, COPY/MOVE with one executemany) keep RFC 7162 semantics: one
new MODSEQ above the previous HIGHESTMODSEQ for every message that really changed,
nothing bumped when nothing changed, UNCHANGEDSINCE refusals left untouched, every
expunge recorded as (uid, modseq), events only for committed changes. Both backends
(fixture ``store``)."""

from __future__ import annotations

from mailstack.store import FlagsChanged, MessagesExpunged, Store
from tests.store.test_store_conformance import mailbox, msg


async def _fill(store: Store, folder: int, flags: list[list[str]]) -> None:
    for i, fl in enumerate(flags):
        await store.append(folder, msg(i), flags=fl)


def _drain(sub: object) -> list[object]:
    q = sub.queue  # type: ignore[attr-defined]
    return [q.get_nowait() for _ in range(q.qsize())]


async def test_store_report_one_modseq_for_changed_only(store: Store) -> None:
    addr, inbox = await mailbox(store)
    await _fill(store, inbox, [[], ["\\Seen"], ["\\Flagged", "Work"], []])
    high = (await store.folder_status(inbox)).highestmodseq
    before = {m.uid: m for m in await store.list_messages(inbox)}
    with store.events.subscribe(addr) as sub:
        changed, refused, after = await store.store_flags_report(
            inbox, [4, 2, 1, 3, 99], ["\\Seen"], "add")
        events = _drain(sub)
    assert refused == []
    assert [m.uid for m in changed] == [1, 3, 4]  # 2 already had \Seen; 99 does not exist
    assert {m.modseq for m in changed} == {high + 1}
    assert [m.uid for m in after] == [1, 2, 3, 4]  # every listed message that exists
    assert after[1] == before[2]  # unchanged message reported as it is
    assert after[2].flags == frozenset({"\\Seen", "\\Flagged", "Work"})
    stored = {m.uid: m for m in await store.list_messages(inbox)}
    assert stored == {m.uid: m for m in after}  # what is reported is what is stored
    assert (await store.folder_status(inbox)).highestmodseq == high + 1
    assert events == [FlagsChanged(addr, inbox, (1, 3, 4), high + 1)]


async def test_store_noop_bumps_nothing(store: Store) -> None:
    addr, inbox = await mailbox(store)
    await _fill(store, inbox, [["\\Seen"], ["\\Seen", "x"]])
    high = (await store.folder_status(inbox)).highestmodseq
    before = await store.list_messages(inbox)
    with store.events.subscribe(addr) as sub:
        changed, refused, after = await store.store_flags_report(
            inbox, [1, 2], ["\\Seen"], "add")
        assert _drain(sub) == []
    assert (changed, refused) == ([], [])
    assert after == before == await store.list_messages(inbox)
    assert (await store.folder_status(inbox)).highestmodseq == high


async def test_store_different_results_and_keywords(store: Store) -> None:
    """Messages ending with different flag sets (the executemany path); keywords are
    case-insensitive (RFC 9051 §2.3.2): one keyword whatever its case, spelled as
    last stored."""
    _, inbox = await mailbox(store)
    await _fill(store, inbox, [["Work"], ["\\Draft", "work"], ["Other"], []])
    high = (await store.folder_status(inbox)).highestmodseq
    changed, _ = await store.store_flags(inbox, [1, 2, 3, 4], ["WORK", "\\Answered"], "add")
    assert [m.uid for m in changed] == [1, 2, 3, 4]
    flags = {m.uid: m.flags for m in await store.list_messages(inbox)}
    assert flags == {1: {"WORK", "\\Answered"}, 2: {"\\Draft", "WORK", "\\Answered"},
                     3: {"Other", "WORK", "\\Answered"}, 4: {"WORK", "\\Answered"}}
    changed, _ = await store.store_flags(inbox, [1, 2, 3, 4], ["work"], "remove")
    assert [m.uid for m in changed] == [1, 2, 3, 4]
    assert {m.modseq for m in changed} == {high + 2}
    flags = {m.uid: m.flags for m in await store.list_messages(inbox)}
    assert flags == {1: {"\\Answered"}, 2: {"\\Draft", "\\Answered"},
                     3: {"Other", "\\Answered"}, 4: {"\\Answered"}}
    changed, _ = await store.store_flags(inbox, [1, 3], ["\\Deleted"], "replace")
    assert [m.flags for m in changed] == [{"\\Deleted"}, {"\\Deleted"}]
    assert (await store.folder_status(inbox)).highestmodseq == high + 3


async def test_store_unchangedsince_refusals_untouched(store: Store) -> None:
    """RFC 7162 §3.1.3: a message changed after UNCHANGEDSINCE is refused and left as
    it is; the others change."""
    _, inbox = await mailbox(store)
    await _fill(store, inbox, [[], [], []])
    mark = (await store.folder_status(inbox)).highestmodseq
    await store.store_flags(inbox, [2], ["\\Seen"], "add")
    before = {m.uid: m for m in await store.list_messages(inbox)}
    changed, refused, after = await store.store_flags_report(
        inbox, [1, 2, 3], ["\\Flagged"], "add", unchanged_since=mark)
    assert refused == [2] and [m.uid for m in changed] == [1, 3]
    stored = {m.uid: m for m in await store.list_messages(inbox)}
    assert stored[2] == before[2] == after[1]
    assert all("\\Flagged" in stored[u].flags for u in (1, 3))
    # all refused: nothing written, HIGHESTMODSEQ unchanged
    high = (await store.folder_status(inbox)).highestmodseq
    changed, refused = await store.store_flags(inbox, [1, 2, 3], ["\\Draft"], "add",
                                               unchanged_since=0)
    assert (changed, refused) == ([], [1, 2, 3])
    assert (await store.folder_status(inbox)).highestmodseq == high
    assert {m.uid: m for m in await store.list_messages(inbox)} == stored


async def test_expunge_records_uid_and_modseq(store: Store) -> None:
    addr, inbox = await mailbox(store)
    await _fill(store, inbox, [["\\Deleted"], [], ["\\Deleted"], ["\\Deleted"]])
    high = (await store.folder_status(inbox)).highestmodseq
    with store.events.subscribe(addr) as sub:
        assert await store.expunge(inbox, [3, 4, 2]) == [3, 4]  # UID EXPUNGE: listed only
        assert await store.expunge(inbox) == [1]
        events = _drain(sub)
    assert events == [MessagesExpunged(addr, inbox, (3, 4), high + 1),
                      MessagesExpunged(addr, inbox, (1,), high + 2)]
    assert [m.uid for m in await store.list_messages(inbox)] == [2]
    assert await store.expunged_since(inbox, high) == [1, 3, 4]
    assert await store.expunged_since(inbox, high + 1) == [1]
    assert (await store.folder_status(inbox)).highestmodseq == high + 2


async def test_expunge_nothing_changes_nothing(store: Store) -> None:
    addr, inbox = await mailbox(store)
    await _fill(store, inbox, [[], ["\\Deleted"]])
    high = (await store.folder_status(inbox)).highestmodseq
    with store.events.subscribe(addr) as sub:
        assert await store.expunge(inbox, [1]) == []  # listed but not \Deleted
        assert await store.expunge(inbox, []) == []
        assert await store.expunge(inbox + 1000) == []  # no such folder
        assert _drain(sub) == []
    assert (await store.folder_status(inbox)).highestmodseq == high
    assert [m.uid for m in await store.list_messages(inbox)] == [1, 2]
    assert await store.expunged_since(inbox, 0) == []
    # POP3 (only_deleted=False) removes what it names regardless of \Deleted
    assert await store.expunge(inbox, [1], only_deleted=False) == [1]
    assert await store.expunged_since(inbox, high) == [1]


async def test_large_sets_copy_store_expunge(store: Store) -> None:
    """More than one 500-UID chunk: COPY doubles the folder (one executemany each time),
    STORE and EXPUNGE of 1,024 messages, every expunge recorded once."""
    _, inbox = await mailbox(store)
    await store.append(inbox, msg(0))
    for _ in range(10):
        uids = [m.uid for m in await store.list_messages(inbox)]
        pairs = await store.copy_messages(inbox, uids, inbox)
        assert [p[0] for p in pairs] == uids
    uids = [m.uid for m in await store.list_messages(inbox)]
    assert len(uids) == 1024 and uids == list(range(1, 1025))
    high = (await store.folder_status(inbox)).highestmodseq
    changed, _ = await store.store_flags(inbox, uids[:700], ["\\Deleted"], "add")
    assert len(changed) == 700 and {m.modseq for m in changed} == {high + 1}
    gone = await store.expunge(inbox, uids[100:])
    assert gone == uids[100:700]
    assert await store.expunged_since(inbox, high) == uids[100:700]
    assert await store.expunge(inbox) == uids[:100]
    assert [m.uid for m in await store.list_messages(inbox)] == uids[700:]
    assert (await store.folder_status(inbox)).highestmodseq == high + 3

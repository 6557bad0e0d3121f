"""SORT / UID SORT (RFC 5256 §3, RFC 5957 SORT=DISPLAY, RFC 5267 ESORT) and THREAD /
UID THREAD (RFC 5256 §4) over the session's view.

Implementation notes (invariants):
- The messages are chosen by the SEARCH evaluator (same keys, same charset rules).
- Sort keys are stored as columns with each message when it is stored
  (``mailstack.headerkeys``, ``mailstack.store.sortkeys``); rows without them (stored
  before that) get them on the first SORT/THREAD, from their header blocks only (in
  batches of ``BATCH``, one thread hop each, one write per ``WRITE_BATCH``). A SORT is
  then ONE ``ORDER BY`` query, the
  matching UIDs kept in that order. THREAD reads the stored keys as the driver's
  plain rows and threads off the event loop (the cyclic GC paused meanwhile), so a
  big mailbox never blocks other clients. SORT results and rendered THREAD replies
  of big mailboxes are kept per set of messages (``ResultCache``: exact, see there),
  so a client that asks again for an unchanged mailbox costs a digest of its UIDs.
- ``SORT ... ALL`` takes the view's UIDs without evaluating a search.
- With a MODSEQ search key the reply carries (MODSEQ n) like SEARCH (RFC 7162 §3.1.5).
- ESORT (RFC 5267 §3.2): MIN/MAX are the first/last message in sort order, ALL lists
  them in sort order (ranges only for ascending runs), COUNT their number, PARTIAL a
  window of positions of the sorted result (RFC 5267 §4.4); UPDATE keeps the result
  live (``mailstack.imap.contexts``, CONTEXT=SORT).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

from mailstack.headerkeys import header_keys
from mailstack.imap import contexts, respond, sorting
from mailstack.imap import search as k
from mailstack.imap import types as t
from mailstack.imap.search_exec import evaluate
from mailstack.imap.session import Session
from mailstack.store import SortKeyRow, Store, ThreadRow

BATCH = 1024
WRITE_BATCH = 16384


def _extract(items: list[tuple[int, float, bytes]]) -> list[SortKeyRow]:
    """Keys of messages stored without them (``mailstack.headerkeys``, as at delivery)."""
    out = []
    for id_, arrival, header in items:
        k = header_keys(header)
        out.append(SortKeyRow(id_, arrival if k.date is None else k.date, *k[1:]))
    return out


async def fill_keys(store: Store, folder_id: int) -> None:
    """Compute and store the keys of the folder's messages that have none yet: only
    their header blocks are read, ``BATCH`` per thread hop; written ``WRITE_BATCH`` at a
    time (each write is a transaction with its fsync and a hold of the writer lock:
    few, but none so long that deliveries wait on it for long)."""
    missing = await store.unkeyed_messages(folder_id)
    pending: list[SortKeyRow] = []
    for i in range(0, len(missing), BATCH):
        batch = missing[i:i + BATCH]
        heads = await store.read_messages([(r.blob_id, r.prefix) for r in batch],
                                          header_only=True)
        pending += await asyncio.to_thread(_extract, [
            (r.id, r.internal_date, h) for r, h in zip(batch, heads, strict=True)])
        if len(pending) >= WRITE_BATCH:
            await store.set_sort_key_rows(pending)
            pending = []
    await store.set_sort_key_rows(pending)


async def _matching(s: Session, key: k.SearchKey) -> tuple[set[int], list[tuple[int, int]]]:
    """The UIDs of the view matching ``key`` (ALL: the view, without a query), and the
    (uid, modseq) pairs when the reply needs MODSEQ."""
    view = s.require_view()
    if isinstance(key, k.All):
        return set(view.uids), []
    found = await evaluate(s, key)
    return {u for u, _ in found}, found


def _thread_keys(rows: list[ThreadRow], wanted: set[int]) -> list[sorting.SortKeys]:
    """THREAD's keys of the wanted messages, ascending by UID (the rows come so); the
    UID stands in for the sequence number (same order, RFC 5256 §4 ties). Positional
    construction from the row's own tuple: the cheapest per-message object."""
    keys = sorting.SortKeys
    return [keys(uid, uid, date, 0, date, subject, reply == 1, "", "", "", "", "", mid,
                 tuple(refs.split()) if refs else ())
            for uid, date, subject, reply, mid, refs in rows if uid in wanted]


_gc_lock = threading.Lock()
_gc_paused = 0  # THREAD computations running with the cyclic GC paused
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused_for_threading() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a THREAD builds its 100,000s of
    objects: every 700 allocations the collector would otherwise run, and its full
    passes walk the whole (growing) heap, several times the work of the threading
    itself (0.04 s against 0.2-0.8 s for the keys of 100,000 messages, measured).
    Reference counting still frees everything at once; the collector resumes when the
    last running THREAD ends (it is process-wide: a counter, not a plain toggle)."""
    global _gc_paused, _gc_was_enabled
    with _gc_lock:
        if _gc_paused == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_paused += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_paused -= 1
            if _gc_paused == 0 and _gc_was_enabled:
                gc.enable()


def _modseq_suffix(c: t.Sort | t.Thread, found: list[tuple[int, int]]) -> str:
    if isinstance(c, t.Sort) and k.modseq_required(c.key) and found:
        return f" (MODSEQ {max(ms for _, ms in found)})"
    return ""


def _ordered_set(numbers: list[int]) -> str:
    """A sequence set keeping the order; only ascending runs become ranges."""
    out: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(out)


async def ordered_uids(s: Session, key: k.SearchKey,
                       criteria: tuple[tuple[str, bool], ...]) -> list[int]:
    """The UIDs of the view matching ``key``, in sort order (RFC 5256 §3)."""
    wanted, _ = await _matching(s, key)
    return await _ordered(s, wanted, criteria)


async def _ordered(s: Session, wanted: set[int], criteria: tuple[tuple[str, bool], ...]
                   ) -> list[int]:
    view = s.require_view()
    cache_key: tuple[object, ...] | None = None
    if len(wanted) >= SORTS.smallest:
        cache_key = (s.store.node_id, view.folder_id, view.uidvalidity, criteria,
                     await _digest_off_loop(wanted, list(view.uids)))
        cached = SORTS.get(cache_key)
        if cached is not None:
            return list(cached)  # the caller's own (CONTEXT=SORT updates it)
    await fill_keys(s.store, view.folder_id)
    ordered = await s.store.sorted_uids(view.folder_id, criteria)
    found = [u for u in ordered if u in wanted]
    if cache_key is not None and len(found) == len(wanted):
        SORTS.put(cache_key, tuple(found))
    return found


async def sort(s: Session, c: t.Sort) -> str | None:
    view = s.require_view()
    opts = c.return_options
    update = opts is not None and "UPDATE" in opts  # RFC 5267 §4 (CONTEXT=SORT)
    if update:
        contexts.check_tag(s, c.tag)
    wanted, found = await _matching(s, c.key)
    if k.modseq_required(c.key):
        s.enable_condstore()
    uids = await _ordered(s, wanted, c.criteria)
    if c.uid:
        numbers = uids
    else:
        seq = view.seq_of
        numbers = [seq(u) or 0 for u in uids]
    if opts is None:
        listed = " ".join(map(str, numbers))  # ~2x cheaper than one f-string each
        s.send(respond.untagged(("SORT " + listed if listed else "SORT")
                                + _modseq_suffix(c, found)))
        return None
    shown = opts - {"CONTEXT", "UPDATE"}
    if not shown:
        shown = frozenset({"ALL"})
    parts = [f'(TAG "{c.tag}")'] + (["UID"] if c.uid else [])
    if "MIN" in shown and numbers:
        parts.append(f"MIN {numbers[0]}")
    if "MAX" in shown and numbers:
        parts.append(f"MAX {numbers[-1]}")
    if "ALL" in shown and numbers:
        parts.append(f"ALL {_ordered_set(numbers)}")
    if c.partial is not None:  # RFC 5267 §4.4: positions low..high of the sorted result
        window = numbers[c.partial[0] - 1:c.partial[1]]
        parts.append(f"PARTIAL ({c.partial[0]}:{c.partial[1]} "
                     f"{_ordered_set(window) if window else 'NIL'})")
    if "COUNT" in shown:
        parts.append(f"COUNT {len(numbers)}")
    if k.modseq_required(c.key) and found:
        parts.append(f"MODSEQ {max(ms for _, ms in found)}")
    s.send(respond.untagged("ESEARCH " + " ".join(parts)))
    if update:
        contexts.start(s, c.tag, c.uid, c.key, c.criteria, uids)
    return None


def _digest(uids: set[int], view_uids: list[int]) -> bytes:
    """A collision-proof name for a set of UIDs (~1 ms for 100,000); the view's own
    list (already ascending) when the set is the whole view (``ALL``)."""
    whole = len(uids) == len(view_uids) and uids.issuperset(view_uids)
    ordered = view_uids if whole else sorted(uids)
    return hashlib.blake2b(array("Q", ordered).tobytes(), digest_size=20).digest()


async def _digest_off_loop(uids: set[int], view_uids: list[int]) -> bytes:
    """``_digest`` of the caller's own copies; in a thread for big sets (sorting and
    hashing 100,000 UIDs takes ~10 ms, too long for the event loop)."""
    if len(uids) < 20_000:
        return _digest(uids, view_uids)
    return await asyncio.to_thread(_digest, uids, view_uids)


V = TypeVar("V")


class ResultCache(Generic[V]):
    """SORT results and rendered THREAD replies of big mailboxes, least recently used
    dropped first.

    Why it is exact: both are a function of the criteria (the algorithm), the
    numbering and the set of messages, whose keys never change once stored (they come
    from the header, which is immutable, and from the arrival time and size; RFC 5256
    §3, §4). The key names that set by a digest of its UIDs (and, for THREAD with
    sequence numbers, the digest of the view's UIDs), so any APPEND, delivery or
    EXPUNGE that changes the set misses; the store's identity and the UIDVALIDITY keep
    mailboxes apart. Only results in which every message had its keys are kept.
    Dovecot keeps sort and thread data in its index for the same reason."""

    def __init__(self, maximum: int = 8, smallest: int = 1000) -> None:
        self.maximum = maximum
        self.smallest = smallest  # fewer messages take a few ms: not kept
        self._results: OrderedDict[tuple[object, ...], V] = OrderedDict()

    def get(self, key: tuple[object, ...]) -> V | None:
        found = self._results.get(key)
        if found is not None:
            self._results.move_to_end(key)
        return found

    def put(self, key: tuple[object, ...], value: V) -> None:
        self._results[key] = value
        self._results.move_to_end(key)
        while len(self._results) > self.maximum:
            self._results.popitem(last=False)


THREADS: ResultCache[str] = ResultCache()
SORTS: ResultCache[tuple[int, ...]] = ResultCache()


async def thread(s: Session, c: t.Thread) -> str | None:
    view = s.require_view()
    wanted, _ = await _matching(s, c.key)
    cache_key: tuple[object, ...] | None = None
    if len(wanted) >= THREADS.smallest:
        view_uids = list(view.uids)
        cache_key = (s.store.node_id, view.folder_id, view.uidvalidity, c.algorithm,
                     c.uid, await _digest_off_loop(wanted, view_uids),
                     None if c.uid else await _digest_off_loop(set(view_uids), view_uids))
        cached = THREADS.get(cache_key)
        if cached is not None:
            s.send(respond.untagged(("THREAD " + cached).rstrip()))
            return None
    await fill_keys(s.store, view.folder_id)
    rows = await s.store.thread_rows(view.folder_id)
    algo = sorting.references if c.algorithm == "REFERENCES" else sorting.ordered_subject

    def run() -> tuple[str, bool]:
        with _gc_paused_for_threading():
            keys = _thread_keys(rows, wanted)
            roots = algo(keys)
            number = {m.uid: m.uid for m in keys} if c.uid else \
                {m.uid: view.seq_of(m.uid) or 0 for m in keys}
            return sorting.render(roots, number), len(keys) == len(wanted)

    text, complete = await asyncio.to_thread(run)
    if cache_key is not None and complete:
        THREADS.put(cache_key, text)
    s.send(respond.untagged(("THREAD " + text).rstrip()))
    return None

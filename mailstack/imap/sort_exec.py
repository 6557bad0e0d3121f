"""SORT / UID SORT (RFC 5256 §3, RFC 5957 SORT=DISPLAY, RFC 5267 ESORT) and THREAD /
UID THREAD (RFC 5256 §4) over the session's view.

Implementation notes (invariants):
- The messages are chosen by the SEARCH evaluator (same keys, same charset rules).
- Sort keys are computed once per message from its header block (only the header is
  read, in batches of ``BATCH``, one thread hop each) and cached in the store (one write
  per command); later commands decode the cache. Extraction, decoding, sorting and
  threading run off the event loop, so a big mailbox never blocks other clients.
- With a MODSEQ search key the reply carries (MODSEQ n) like SEARCH (RFC 7162 §3.1.5).
- ESORT (RFC 5267 §3.2): MIN/MAX are the first/last message in sort order, ALL lists
  them in sort order (ranges only for ascending runs), COUNT their number.
"""

from __future__ import annotations

import asyncio
import json

from mailstack.imap import respond, sorting
from mailstack.imap import search as k
from mailstack.imap import types as t
from mailstack.imap.search_exec import evaluate
from mailstack.imap.session import Session

BATCH = 1024


def _extract(items: list[tuple[int, int, float, int, bytes]]) -> list[sorting.SortKeys]:
    return [sorting.keys_from_header(*x) for x in items]


def _decode(items: list[tuple[int, int, float, int, str]]) -> list[sorting.SortKeys | None]:
    try:  # one parse for all (fast); a damaged entry sends us the slow way
        values = json.loads("[" + ",".join(x[4] for x in items) + "]")
    except ValueError:
        return [sorting.keys_from_json(*x) for x in items]
    return [sorting.keys_from_value(*x[:4], v) for x, v in zip(items, values, strict=True)]


def _encode(keys: list[tuple[int, sorting.SortKeys]]) -> list[tuple[int, str]]:
    return [(i, sorting.keys_json(k)) for i, k in keys]


async def _keys(s: Session, found: list[tuple[int, int]]) -> list[sorting.SortKeys]:
    """Keys of the matching messages: cached ones decoded, the others computed from the
    header blocks and cached in ONE write (off the event loop throughout)."""
    view = s.require_view()
    pairs = await s.store.sort_rows(view.folder_id, [u for u, _ in found])
    rows = [r for r, _ in pairs]
    have = [(r.uid, view.seq_of(r.uid) or 0, r.internal_date, r.size, k)
            for r, k in pairs if k is not None]
    decoded = await asyncio.to_thread(_decode, have)
    out = [k for k in decoded if k is not None]
    done = {k.uid for k in out}
    missing = [r for r in rows if r.uid not in done]
    computed: list[tuple[int, sorting.SortKeys]] = []
    for i in range(0, len(missing), BATCH):
        batch = missing[i:i + BATCH]
        heads = await s.store.read_messages([(r.blob_id, r.prefix) for r in batch],
                                            header_only=True)
        items = [(r.uid, view.seq_of(r.uid) or 0, r.internal_date, r.size, h)
                 for r, h in zip(batch, heads, strict=True)]
        keys = await asyncio.to_thread(_extract, items)
        computed += [(r.id, k) for r, k in zip(batch, keys, strict=True)]
    if computed:
        await s.store.set_sort_keys(await asyncio.to_thread(_encode, computed))
    return out + [k for _, k in computed]


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


async def sort(s: Session, c: t.Sort) -> str | None:
    s.require_view()
    found = await evaluate(s, c.key)
    if k.modseq_required(c.key):
        s.enable_condstore()
    keys = await _keys(s, found)
    ordered = await asyncio.to_thread(sorting.sort, keys, c.criteria)
    numbers = [m.uid if c.uid else m.seq for m in ordered]
    if c.return_options is None:
        s.send(respond.untagged("SORT" + "".join(f" {n}" for n in numbers)
                                + _modseq_suffix(c, found)))
        return None
    opts = c.return_options or frozenset({"ALL"})
    parts = [f'(TAG "{c.tag}")'] + (["UID"] if c.uid else [])
    if "MIN" in opts and numbers:
        parts.append(f"MIN {numbers[0]}")
    if "MAX" in opts and numbers:
        parts.append(f"MAX {numbers[-1]}")
    if "ALL" in opts and numbers:
        parts.append(f"ALL {_ordered_set(numbers)}")
    if "COUNT" in opts:
        parts.append(f"COUNT {len(numbers)}")
    if k.modseq_required(c.key) and found:
        parts.append(f"MODSEQ {max(ms for _, ms in found)}")
    s.send(respond.untagged("ESEARCH " + " ".join(parts)))
    return None


async def thread(s: Session, c: t.Thread) -> str | None:
    view = s.require_view()
    found = await evaluate(s, c.key)
    keys = await _keys(s, found)
    algo = sorting.references if c.algorithm == "REFERENCES" else sorting.ordered_subject
    roots = await asyncio.to_thread(algo, keys)
    number = {m.uid: (m.uid if c.uid else view.seq_of(m.uid) or 0) for m in keys}
    text = await asyncio.to_thread(sorting.render, roots, number)
    s.send(respond.untagged(("THREAD " + text).rstrip()))
    return None

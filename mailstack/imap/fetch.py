"""FETCH (RFC 9051 §6.4.5, §7.5.2; RFC 3516 BINARY) over the shared store.

Implementation notes (invariants):
- Message structure (ENVELOPE, BODYSTRUCTURE, section byte ranges) comes from
  :mod:`mailstack.mime`; it is parsed once per message row and cached in the store
  (JSON form). Cached structures of a batch are read in one query, and the structures
  a command had to parse are written back in ONE transaction at its end (never one
  write per message). Big batches are parsed off the event loop.
- Messages are processed in batches (at most ``BATCH`` messages / ``BATCH_BYTES``
  bytes): one query for the structures and one thread hop for the blob reads per batch.
- BODY[HEADER.FIELDS (...)] (and .NOT) of the message itself needs only its header
  block: no structure, and only the file's head is read.
- A FETCH of metadata only (FLAGS, UID, INTERNALDATE, RFC822.SIZE, MODSEQ, EMAILID...)
  renders straight from the store's metadata rows, without blobs or structures.
- ``\\Seen`` is set (in one store transaction, before the responses) by BODY[...],
  BINARY[...], RFC822 and RFC822.TEXT, never by the .PEEK forms or RFC822.HEADER, and
  never in a read-only (EXAMINE) session; the new FLAGS go out with the same FETCH.
- Section data always goes out as a literal (literal8 for BINARY data holding NUL).
- Responses are written one batch at a time and the socket is drained between
  batches, so memory stays at about one batch.
"""

from __future__ import annotations

import asyncio
import json
import operator
from collections.abc import Iterable

from mailstack import mime
from mailstack.imap import respond, structure
from mailstack.imap import types as t
from mailstack.imap.fetch_items import Binary, BodySection, FetchAtt, Simple
from mailstack.imap.sequence import SequenceSet
from mailstack.imap.session import Session
from mailstack.store import Message, MsgRow, Store
from mailstack.store.base import flags_from_db

PARSE_OFF_LOOP = 256 * 1024
CACHE_VERSION = "mime-v1"
BATCH = 64
BATCH_BYTES = 4 * 1024 * 1024
# Metadata items ``_row_item`` renders from a row or a message record.
META_ITEMS = frozenset({"UID", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "EMAILID",
                        "SAVEDATE", "THREADID"})
# A FETCH asking only for these is answered from the metadata rows (``fetch_rows``).
ROW_ITEMS = META_ITEMS | {"FLAGS"}


def decode_cached(marker: str | None, cached: str | None) -> mime.Message | None:
    """A cached structure, or None when absent, stale or damaged (then re-parsed)."""
    if marker != CACHE_VERSION or not cached:
        return None
    try:
        return mime.from_json(json.loads(cached))
    except (ValueError, KeyError, TypeError):
        return None


async def parse_all(datas: list[bytes]) -> list[mime.Message]:
    """Parse many messages; off the event loop (one thread hop) when they are big."""
    if sum(len(d) for d in datas) > PARSE_OFF_LOOP:
        return await asyncio.to_thread(lambda: [mime.parse_message(d) for d in datas])
    return [mime.parse_message(d) for d in datas]


def cache_entry(msg_id: int, parsed: mime.Message) -> tuple[int, str, str]:
    return msg_id, CACHE_VERSION, json.dumps(mime.to_json(parsed))


async def structures(items: list[tuple[int, tuple[str | None, str | None], bytes]],
                     writeback: list[tuple[int, str, str]]) -> list[mime.Message]:
    """Structures of messages ((id, cached (marker, JSON), bytes) each): cached ones
    decoded, the others parsed (and queued in ``writeback`` for the store)."""
    out: list[mime.Message | None] = [decode_cached(*c) for _, c, _ in items]
    missing = [i for i, st in enumerate(out) if st is None]
    if missing:
        parsed = await parse_all([items[i][2] for i in missing])
        for i, st in zip(missing, parsed, strict=True):
            out[i] = st
            writeback.append(cache_entry(items[i][0], st))
    return [st for st in out if st is not None]


def _needs_data(a: FetchAtt) -> bool:
    return isinstance(a, BodySection | Binary) or (
        isinstance(a, Simple) and a.name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"))


def _top_header_fields(a: FetchAtt) -> bool:
    """BODY[HEADER.FIELDS (...)] / .NOT of the message itself: the header block alone
    answers it (same bytes as ``mime.section_bytes``), no structure needed."""
    return isinstance(a, BodySection) and not a.part and a.text in (
        "HEADER.FIELDS", "HEADER.FIELDS.NOT")


def _needs_structure(a: FetchAtt) -> bool:
    if isinstance(a, Simple):
        return a.name in ("ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.HEADER", "RFC822.TEXT")
    if isinstance(a, BodySection):
        return bool(a.part) or (a.text is not None and not _top_header_fields(a))
    if isinstance(a, Binary):
        return bool(a.part)
    return False


def _partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    origin, length = partial
    return data[origin:origin + length]


async def fetch(s: Session, c: t.Fetch) -> str | None:
    view = s.require_view()
    uids = view.resolve(c.sequence, c.uid)
    items = list(c.items)
    names = {a.name for a in items if isinstance(a, Simple)}
    if c.uid and "UID" not in names:
        items.insert(0, Simple("UID"))  # RFC 9051 §6.4.9: UID FETCH always returns UID
    if c.changedsince is not None and "MODSEQ" not in names:
        items.append(Simple("MODSEQ"))  # RFC 7162 §3.1.4.1
    if c.vanished and not s.qresync:
        raise respond.Bad("ENABLE QRESYNC first")  # RFC 7162 §3.2.6
    if c.changedsince is not None or "MODSEQ" in names:
        s.enable_condstore()  # RFC 7162 §3.1: CONDSTORE-enabling
    if c.vanished:
        assert c.changedsince is not None  # the parser insists
        await _vanished(s, c.sequence, c.changedsince)
    if not uids:
        return None
    simple = [a.name for a in items if isinstance(a, Simple) and a.name in ROW_ITEMS]
    if len(simple) == len(items):
        await fetch_rows(s, c, uids, simple)
        return None
    msgs = await s.store.get_messages(view.folder_id, uids)
    if c.changedsince is not None:
        msgs = [m for m in msgs if m.modseq > c.changedsince]
    seen_set: set[int] = set()
    if not view.readonly and any(a.marks_seen for a in items):
        unseen = [m.uid for m in msgs if "\\Seen" not in m.flags]
        if unseen:
            changed, _ = await s.store.store_flags(view.folder_id, unseen, ["\\Seen"], "add")
            view.own_modseqs.update(m.modseq for m in changed)
            fresh = {m.uid: m for m in changed}
            msgs = [fresh.get(m.uid, m) for m in msgs]
            seen_set = set(fresh)
    have = {a.name for a in items if isinstance(a, Simple)}
    want_data = any(_needs_data(a) for a in items)
    want_struct = any(_needs_structure(a) for a in items)
    # only the header block is read when nothing else needs the bytes (nor a parse)
    header_only = not want_struct and all(_top_header_fields(a) for a in items
                                          if _needs_data(a))
    writeback: list[tuple[int, str, str]] = []
    try:
        for batch in _batches([m for m in msgs if view.seq_of(m.uid) is not None]):
            datas: list[bytes | None] = [None] * len(batch)
            if want_data:
                datas = list(await s.store.read_messages(
                    [(m.blob_id, m.prefix) for m in batch], header_only=header_only,
                    size=sum(m.size for m in batch)))
            sts: list[mime.Message | None] = [None] * len(batch)
            if want_struct:
                sts = await _batch_structures(s.store, batch, datas, writeback)
            out: list[bytes] = []
            try:
                for m, data, st in zip(batch, datas, sts, strict=True):
                    out += view.announce(m.flags)  # RFC 3501 §7.2.6
                    parts = [render_item(s, a, m, data, st) for a in items]
                    if m.uid in seen_set:
                        parts += _seen_extra(s, m, have)
                    out.append(b"* %d FETCH (" % (view.seq_of(m.uid) or 0)
                               + b" ".join(parts) + b")\r\n")
            finally:
                s.send(b"".join(out))  # what was rendered goes out even if one fails
            await s.conn.drain()
    finally:
        if writeback:
            await s.store.set_cached_structures(writeback)
    return None


def _seen_extra(s: Session, m: Message, have: set[str]) -> list[bytes]:
    """What a FETCH that set \\Seen adds: the new FLAGS, and with CONDSTORE on also UID
    and MODSEQ (RFC 7162 §3.1)."""
    view = s.require_view()
    out = [] if "FLAGS" in have else [b"FLAGS " + view.flags_text(m.uid, m.flags).encode()]
    if s.condstore:
        if "UID" not in have:
            out.append(b"UID %d" % m.uid)
        if "MODSEQ" not in have:
            out.append(b"MODSEQ (%d)" % m.modseq)
    return out


async def _vanished(s: Session, uid_set: SequenceSet, changedsince: int) -> None:
    """UID FETCH ... (CHANGEDSINCE n VANISHED), RFC 7162 §3.2.6: the UIDs of ``uid_set``
    expunged since ``n``, as VANISHED (EARLIER), before the FETCH responses. UIDs still
    in the view (their removal not yet told) are left for the later VANISHED. ``*``
    counts as unbounded, so expunged UIDs above the highest remaining one are reported."""
    view = s.require_view()
    saved = set(view.saved or ())
    spans = [] if uid_set.saved else uid_set.intervals(0xFFFFFFFF)
    in_view = set(view.uids)
    gone = [u for u in await s.store.expunged_since(view.folder_id, changedsince)
            if u not in in_view and (u in saved if uid_set.saved
                                     else any(a <= u <= b for a, b in spans))]
    if gone:
        s.send(respond.untagged(f"VANISHED (EARLIER) {respond.seq_set(gone)}"))


def _batches(msgs: list[Message]) -> list[list[Message]]:
    out: list[list[Message]] = []
    cur: list[Message] = []
    size = 0
    for m in msgs:
        if cur and (len(cur) >= BATCH or size + m.size > BATCH_BYTES):
            out.append(cur)
            cur, size = [], 0
        cur.append(m)
        size += m.size
    if cur:
        out.append(cur)
    return out


async def _batch_structures(store: Store, batch: list[Message], datas: list[bytes | None],
                            writeback: list[tuple[int, str, str]]
                            ) -> list[mime.Message | None]:
    cached = await store.cached_structures([m.id for m in batch])
    sts = [decode_cached(*cached.get(m.id, (None, None))) for m in batch]
    missing = [i for i, st in enumerate(sts) if st is None]
    if missing:
        unread = [i for i in missing if datas[i] is None]
        if unread:
            got = await store.read_messages([(batch[i].blob_id, batch[i].prefix)
                                             for i in unread],
                                            size=sum(batch[i].size for i in unread))
            for i, d in zip(unread, got, strict=True):
                datas[i] = d
        parsed = await parse_all([datas[i] or b"" for i in missing])
        for i, st in zip(missing, parsed, strict=True):
            sts[i] = st
            writeback.append(cache_entry(batch[i].id, st))
        for i in unread:
            datas[i] = None  # only the structure was asked for
    return sts


# FETCH items answered from ``Store.flag_rows`` (uid, modseq, flags, keywords) alone,
# and where each one's value sits in the tuple ``_flag_lines`` formats per message
_FLAG_ITEMS = {"UID": (b"UID %d", 1), "MODSEQ": (b"MODSEQ (%d)", 2), "FLAGS": (b"FLAGS %s", 3)}


async def _flag_lines(s: Session, c: t.Fetch, uids: list[int], names: list[str]) -> None:
    """FETCH of UID / FLAGS / MODSEQ only (what clients ask for on every sync): narrow
    rows of four columns and one format per message into ``bytes.join``, no record
    objects (bench/README.md "Narrow flag rows")."""
    view = s.require_view()
    rows = await s.store.flag_rows(view.folder_id, uids)
    if c.changedsince is not None:
        rows = [r for r in rows if r[1] > c.changedsince]
    fmt = b"* %d FETCH (" + b" ".join(_FLAG_ITEMS[n][0] for n in names) + b")\r\n"
    pick = operator.itemgetter(0, *(_FLAG_ITEMS[n][1] for n in names))
    # the flag list of each (flags, keywords, recent) once; recent: RFC 3501 §2.3.2
    # (IMAP4rev1 sessions; every message of a mailbox nobody has opened yet)
    flag_text: dict[tuple[int, str, bool], bytes] = {}
    recent = view.recent
    # rows and the view are both ascending by UID: a full view numbers them in order
    seqs: Iterable[int | None] = (range(1, len(rows) + 1) if len(rows) == view.exists
                                  else map(view.seq_of, (r[0] for r in rows)))
    out: list[bytes] = []
    for (uid, modseq, flags, keywords), seq in zip(rows, seqs, strict=True):
        if seq is None:
            continue
        key = (flags, keywords, uid in recent)
        text = flag_text.get(key)
        if text is None:
            current = flags_from_db(flags, keywords)
            out += view.announce(current)  # RFC 3501 §7.2.6
            text = flag_text[key] = view.flags_text(uid, current).encode()
        out.append(fmt % pick((seq, uid, modseq, text)))
        if len(out) >= 4096:
            out = await _sent(s, out)
    await _sent(s, out)


async def _sent(s: Session, lines: list[bytes]) -> list[bytes]:
    """Send ``lines`` in one write and wait for the socket to drain (memory stays at
    one batch of responses); returns the empty list to go on with."""
    if lines:
        s.send(b"".join(lines))
        await s.conn.drain()
    return []


async def fetch_rows(s: Session, c: t.Fetch, uids: list[int], names: list[str]) -> None:
    """FETCH of metadata items only: straight from the rows, no Message records."""
    if all(n in _FLAG_ITEMS for n in names):
        return await _flag_lines(s, c, uids, names)
    view = s.require_view()
    rows = await s.store.message_rows(view.folder_id, uids)
    if c.changedsince is not None:
        rows = [r for r in rows if r.modseq > c.changedsince]
    flag_text: dict[tuple[int, str], bytes] = {}
    out: list[bytes] = []
    for r in rows:
        seq = view.seq_of(r.uid)
        if seq is None:
            continue
        parts: list[bytes] = []
        for n in names:
            if n == "FLAGS":
                key = (r.flags, r.keywords)
                text = flag_text.get(key)
                if text is None:
                    current = flags_from_db(r.flags, r.keywords)
                    out += view.announce(current)  # RFC 3501 §7.2.6
                    text = flag_text[key] = b"FLAGS " + respond.flag_list(current).encode()
                if r.uid in view.recent:  # RFC 3501 §2.3.2, IMAP4rev1 sessions
                    text = b"FLAGS " + view.flags_text(
                        r.uid, flags_from_db(r.flags, r.keywords)).encode()
                parts.append(text)
            else:
                parts.append(_row_item(n, r))
        out.append(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
        if len(out) >= 1024:
            out = await _sent(s, out)
    await _sent(s, out)


def _row_item(n: str, r: MsgRow | Message) -> bytes:
    """A metadata item from a row or a message record (both carry these fields)."""
    if n == "UID":
        return b"UID %d" % r.uid
    if n == "INTERNALDATE":
        return b"INTERNALDATE " + respond.internal_date(r.internal_date).encode()
    if n == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % r.size
    if n == "MODSEQ":
        return b"MODSEQ (%d)" % r.modseq
    if n == "EMAILID":
        return b"EMAILID (M%d)" % r.id
    return n.encode() + b" NIL"  # SAVEDATE, THREADID


def render_item(s: Session, a: FetchAtt, m: Message, data: bytes | None,
                st: mime.Message | None) -> bytes:
    utf8 = s.utf8
    if isinstance(a, Simple):
        n = a.name
        if n == "FLAGS":
            return b"FLAGS " + s.require_view().flags_text(m.uid, m.flags).encode()
        if n in META_ITEMS:
            return _row_item(n, m)
        assert st is not None or n == "RFC822"
        if n == "ENVELOPE":
            assert st is not None
            return b"ENVELOPE " + structure.render_envelope(st.envelope, utf8)
        if n in ("BODY", "BODYSTRUCTURE"):
            assert st is not None
            return n.encode() + b" " + structure.render_body(st.root, n == "BODYSTRUCTURE", utf8)
        assert data is not None
        if n == "RFC822":
            return b"RFC822 " + respond.literal(data)
        assert st is not None
        text = "HEADER" if n == "RFC822.HEADER" else "TEXT"
        return n.encode() + b" " + respond.literal(
            mime.section_bytes(data, st, (), text) or b"")
    assert data is not None
    if isinstance(a, BodySection):
        if _top_header_fields(a):
            section: bytes | None = mime.header_fields(data, a.fields,
                                                       negate=a.text == "HEADER.FIELDS.NOT")
        elif st is None:
            section = data
        else:
            section = mime.section_bytes(data, st, a.part, a.text, a.fields)
        body = _partial(section or b"", a.partial)
        return a.response_name().encode() + b" " + respond.literal(body)
    if isinstance(a, Binary):
        if st is None:
            decoded: bytes | None = data
        else:
            decoded = mime.binary_section(data, st, a.part)
        if decoded is None:
            raise respond.No("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE")  # RFC 3516
        if a.size_only:
            return a.response_name().encode() + b" %d" % len(decoded)
        return a.response_name().encode() + b" " + respond.literal(_partial(decoded, a.partial),
                                                                   binary=True)
    raise respond.Bad("unsupported fetch attribute")

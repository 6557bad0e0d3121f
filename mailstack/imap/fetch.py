"""FETCH (RFC 9051 §6.4.5, §7.5.2; RFC 3516 BINARY) over the shared store.

Implementation notes (invariants):
- Message structure (ENVELOPE, BODYSTRUCTURE, section byte ranges) comes from
  :mod:`mailstack.mime`; it is parsed once per message row and cached in the store
  (``get/set_cached_structure``, JSON form). Big messages are parsed off the event loop.
- ``\\Seen`` is set (in one store transaction, before the responses) by BODY[...],
  BINARY[...], RFC822 and RFC822.TEXT, never by the .PEEK forms or RFC822.HEADER, and
  never in a read-only (EXAMINE) session; the new FLAGS go out with the same FETCH.
- Section data always goes out as a literal (literal8 for BINARY data holding NUL).
- Responses are written one message at a time and the socket is drained between
  messages, so memory stays at about one message.
"""

from __future__ import annotations

import asyncio
import json

from mailstack import mime
from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.fetch_items import Binary, BodySection, FetchAtt, Simple
from mailstack.imap.session import Session
from mailstack.store import Message, Store

PARSE_OFF_LOOP = 256 * 1024
CACHE_VERSION = "mime-v1"


async def structure(store: Store, msg: Message, data: bytes | None) -> mime.Message:
    """The parsed structure of one message, from the cache when possible."""
    marker, cached = await store.get_cached_structure(msg.id)
    if marker == CACHE_VERSION and cached:
        try:
            return mime.from_json(json.loads(cached))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is re-parsed below
    if data is None:
        data = await store.message_bytes(msg)
    if len(data) > PARSE_OFF_LOOP:
        parsed = await asyncio.to_thread(mime.parse_message, data)
    else:
        parsed = mime.parse_message(data)
    await store.set_cached_structure(msg.id, CACHE_VERSION, json.dumps(mime.to_json(parsed)))
    return parsed


def _needs_data(a: FetchAtt) -> bool:
    return isinstance(a, BodySection | Binary) or (
        isinstance(a, Simple) and a.name in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"))


def _needs_structure(a: FetchAtt) -> bool:
    if isinstance(a, Simple):
        return a.name in ("ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.HEADER", "RFC822.TEXT")
    if isinstance(a, BodySection):
        return bool(a.part) or a.text is not None
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
    msgs = await s.store.get_messages(view.folder_id, uids) if uids else []
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
    want_data = any(_needs_data(a) for a in items)
    want_struct = any(_needs_structure(a) for a in items)
    for m in msgs:
        seq = view.seq_of(m.uid)
        if seq is None:
            continue
        data = await s.store.message_bytes(m) if want_data else None
        st = await structure(s.store, m, data) if want_struct else None
        parts: list[bytes] = []
        for a in items:
            parts.append(render_item(s, a, m, data, st))
        if m.uid in seen_set and "FLAGS" not in names:
            parts.append(b"FLAGS " + respond.flag_list(m.flags).encode())
        s.send(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
        await s.conn.drain()
    return None


def render_item(s: Session, a: FetchAtt, m: Message, data: bytes | None,
                st: mime.Message | None) -> bytes:
    utf8 = s.utf8
    if isinstance(a, Simple):
        n = a.name
        if n == "FLAGS":
            return b"FLAGS " + respond.flag_list(m.flags).encode()
        if n == "UID":
            return b"UID %d" % m.uid
        if n == "INTERNALDATE":
            return b"INTERNALDATE " + respond.internal_date(m.internal_date).encode()
        if n == "RFC822.SIZE":
            return b"RFC822.SIZE %d" % m.size
        if n == "MODSEQ":
            return b"MODSEQ (%d)" % m.modseq
        if n == "EMAILID":
            return b"EMAILID (M%d)" % m.id
        if n in ("SAVEDATE", "THREADID"):
            return n.encode() + b" NIL"
        assert st is not None or n == "RFC822"
        if n == "ENVELOPE":
            assert st is not None
            return b"ENVELOPE " + mime.render_envelope(st.envelope, utf8)
        if n in ("BODY", "BODYSTRUCTURE"):
            assert st is not None
            return n.encode() + b" " + mime.render_body(st.root, n == "BODYSTRUCTURE", utf8)
        assert data is not None
        if n == "RFC822":
            return b"RFC822 " + respond.literal(data)
        assert st is not None
        text = "HEADER" if n == "RFC822.HEADER" else "TEXT"
        return n.encode() + b" " + respond.literal(
            mime.section_bytes(data, st, (), text) or b"")
    assert data is not None
    if isinstance(a, BodySection):
        if st is None:
            section: bytes | None = data
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
        return a.response_name().encode() + b" " + respond.literal(_partial(decoded, a.partial))
    raise respond.Bad("unsupported fetch attribute")

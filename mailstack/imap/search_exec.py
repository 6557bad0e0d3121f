"""SEARCH evaluation (RFC 9051 §6.4.4), ESEARCH replies (RFC 4731, RFC 9051 §7.3.4) and
the saved result "$" (RFC 5182 SEARCHRES).

Implementation notes (invariants):
- The search tree from :mod:`mailstack.imap.search` is evaluated here in Python over the
  session's view; client strings never reach SQL, so "%", "_" and quotes are plain
  characters (HOSTILE.md "names as paths or SQL").
- Message content is loaded only when a key needs it (HEADER/BODY/TEXT/SENT*), one
  message at a time.
- String matching is case-insensitive substring matching on decoded text: RFC 2047
  encoded words in headers and transfer encodings / charsets of text parts are decoded.
- ``$`` is kept as UIDs; a failed SEARCH ... SAVE leaves it empty (RFC 5182 §2.1).
"""

from __future__ import annotations

import datetime
import email.header
import email.utils
from dataclasses import dataclass

from mailstack import mime
from mailstack.imap import respond
from mailstack.imap import search as k
from mailstack.imap import types as t
from mailstack.imap.session import Session
from mailstack.store import Message


@dataclass
class _Ctx:
    msg: Message
    seq: int
    data: bytes | None
    parsed: mime.Message | None
    largest_uid: int
    exists: int
    saved: frozenset[int]
    now: float


def _needs_content(key: k.SearchKey) -> bool:
    match key:
        case k.Header() | k.Body() | k.Text():
            return True
        case k.Date(which="sent"):
            return True
        case k.Not(key=inner):
            return _needs_content(inner)
        case k.Or(left=a, right=b):
            return _needs_content(a) or _needs_content(b)
        case k.And(keys=keys):
            return any(_needs_content(x) for x in keys)
    return False


def _decode_header(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # malformed encoded words: match on the raw text
        return value


def _header_values(ctx: _Ctx, field: str) -> list[str]:
    assert ctx.data is not None
    block = mime.header_fields(ctx.data, (field,))
    text = block.decode("utf-8", "replace").replace("\r\n ", " ").replace("\r\n\t", " ")
    out = []
    for line in text.split("\r\n"):
        if ":" in line:
            out.append(_decode_header(line.split(":", 1)[1].strip()))
    return out


def _body_text(ctx: _Ctx) -> str:
    assert ctx.data is not None and ctx.parsed is not None
    chunks: list[str] = []

    def walk(part: mime.BodyPart) -> None:
        if part.children:
            for child in part.children:
                walk(child)
            return
        if part.message is not None:
            walk(part.message.root)
            return
        raw = ctx.data[part.body_start:part.body_end] if ctx.data else b""
        if part.type == "text":
            decoded = mime.decode_transfer_encoding(raw, part.encoding) or raw
            charset = dict(part.params).get("charset", "utf-8")
            try:
                chunks.append(decoded.decode(charset, "replace"))
            except LookupError:
                chunks.append(decoded.decode("utf-8", "replace"))
    walk(ctx.parsed.root)
    return "\n".join(chunks)


def _date_of(ts: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).date()


def _compare(op: str, d: datetime.date, ref: datetime.date) -> bool:
    return d < ref if op == "before" else d == ref if op == "on" else d >= ref


def matches(key: k.SearchKey, ctx: _Ctx) -> bool:
    m = ctx.msg
    match key:
        case k.All():
            return True
        case k.Flag(flag=flag, present=present):
            if flag == "\\Recent":
                return not present  # we never report \Recent (gone in IMAP4rev2)
            have = flag.lower() in {f.lower() for f in m.flags}
            return have == present
        case k.Size(op=op, size=size):
            return m.size > size if op == "larger" else m.size < size
        case k.Within(op=op, seconds=secs):
            age = ctx.now - m.internal_date
            return age > secs if op == "older" else age <= secs
        case k.Sequence(set=seqset, uid=uid):
            if seqset.saved:
                return m.uid in ctx.saved
            if uid:
                return seqset.contains(m.uid, ctx.largest_uid)
            return seqset.contains(ctx.seq, ctx.exists)
        case k.ModSeq(modseq=modseq):
            return m.modseq >= modseq
        case k.Date(which="internal", op=op, date=ref):
            return _compare(op, _date_of(m.internal_date), ref)
        case k.Date(which="sent", op=op, date=ref):
            values = _header_values(ctx, "Date")
            if not values:
                return False
            try:
                sent = email.utils.parsedate_to_datetime(values[0]).date()
            except (TypeError, ValueError, IndexError):
                return False
            return _compare(op, sent, ref)
        case k.Header(field=field, value=value):
            values = _header_values(ctx, field)
            needle = value.casefold()
            return any(needle in v.casefold() for v in values)
        case k.Body(value=value):
            return value.casefold() in _body_text(ctx).casefold()
        case k.Text(value=value):
            assert ctx.data is not None and ctx.parsed is not None
            header = ctx.data[:ctx.parsed.root.body_start].decode("utf-8", "replace")
            needle = value.casefold()
            return needle in _decode_header(header).casefold() or \
                needle in _body_text(ctx).casefold()
        case k.Not(key=inner):
            return not matches(inner, ctx)
        case k.Or(left=a, right=b):
            return matches(a, ctx) or matches(b, ctx)
        case k.And(keys=keys):
            return all(matches(x, ctx) for x in keys)
    raise respond.Bad("unsupported search key")


async def search(s: Session, c: t.Search) -> str | None:
    from mailstack.imap.fetch import structure
    view = s.require_view()
    opts = c.return_options
    if opts is not None and "SAVE" in opts:
        view.saved = []  # RFC 5182 §2.1: a failing SEARCH leaves "$" empty
    in_view = set(view.uids)
    msgs = [m for m in await s.store.list_messages(view.folder_id) if m.uid in in_view]
    content = _needs_content(c.key)
    largest = view.uids[-1] if view.uids else 0
    saved = frozenset(view.saved or ())
    now = s.services.clock()
    found: list[Message] = []
    for m in msgs:
        seq = view.seq_of(m.uid) or 0
        data = parsed = None
        if content:
            data = await s.store.message_bytes(m)
            parsed = await structure(s.store, m, data)
        ctx = _Ctx(m, seq, data, parsed, largest, view.exists, saved, now)
        if matches(c.key, ctx):
            found.append(m)
    numbers = [m.uid if c.uid else view.seq_of(m.uid) or 0 for m in found]
    modseq = k.modseq_required(c.key)
    top = max((m.modseq for m in found), default=0)
    if opts is not None and "SAVE" in opts:
        chosen = found
        if opts & {"MIN", "MAX"}:  # RFC 5182 §2.4: only MIN/MAX are saved then
            chosen = ([found[0]] if "MIN" in opts and found else []) + \
                ([found[-1]] if "MAX" in opts and found else [])
        view.saved = sorted({m.uid for m in chosen})
        if opts == {"SAVE"}:
            return None
    if opts is None and not s.rev2:
        line = "SEARCH" + "".join(f" {n}" for n in numbers)
        if modseq and found:
            line += f" (MODSEQ {top})"
        s.send(respond.untagged(line))
        return None
    effective = (opts or frozenset()) - {"SAVE"} or frozenset({"ALL"})
    parts = [f'(TAG "{c.tag}")'] + (["UID"] if c.uid else [])
    if "MIN" in effective and numbers:
        parts.append(f"MIN {min(numbers)}")
    if "MAX" in effective and numbers:
        parts.append(f"MAX {max(numbers)}")
    if "ALL" in effective and numbers:
        parts.append(f"ALL {respond.seq_set(numbers)}")
    if "COUNT" in effective:
        parts.append(f"COUNT {len(numbers)}")
    if modseq and found:
        parts.append(f"MODSEQ {top}")
    s.send(respond.untagged("ESEARCH " + " ".join(parts)))
    return None

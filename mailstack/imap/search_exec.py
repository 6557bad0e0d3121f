"""SEARCH evaluation (RFC 9051 §6.4.4), ESEARCH replies (RFC 4731, RFC 9051 §7.3.4) and
the saved result "$" (RFC 5182 SEARCHRES).

Implementation notes (invariants):
- The search tree from :mod:`mailstack.imap.search` is evaluated here in Python over the
  session's view; client strings never reach SQL, so "%", "_" and quotes are plain
  characters (docs/behaviour.md §12 "names as paths or SQL").
- A key made only of system-flag tests (UNSEEN, DELETED, NOT FLAGGED, ALL, ...) is
  answered by one SQL query over the flag bitmask (only bit masks reach SQL).
- Otherwise evaluation is two-phase with ONE evaluator (:func:`matches`, three-valued):
  first over the metadata rows of the folder (flags, UID, size, dates, MODSEQ; one
  query, which also says where each message's bytes are when content may be needed),
  where a key that needs content yields "unknown"; only the still-undecided messages
  have their content loaded, in batches (one thread hop per batch, plus one query for
  cached structures when BODY/TEXT need them; only the header block when every content
  key is a header key), and are evaluated again, now to a definite answer.
  Structures parsed on the way are cached in one write per command.
- String matching is case-insensitive substring matching on decoded text: RFC 2047
  encoded words in headers and transfer encodings / charsets of text parts are decoded.
- ``$`` is kept as UIDs; a failed SEARCH ... SAVE leaves it empty (RFC 5182 §2.1).
- RETURN (PARTIAL low:high) answers that window of the ascending result; RETURN
  (UPDATE) keeps the result live (``mailstack.imap.contexts``, RFC 5267 §4).
"""

from __future__ import annotations

import datetime
import email.header
import email.utils
from dataclasses import dataclass, field

from mailstack import mime
from mailstack.imap import respond
from mailstack.imap import search as k
from mailstack.imap import types as t
from mailstack.imap.session import Session
from mailstack.store import SYSTEM_FLAGS, MsgRow

_BITS = {name.lower(): 1 << i for i, name in enumerate(SYSTEM_FLAGS)}
_BATCH = 128  # messages whose content is loaded per query / thread hop
_HEADER_BATCH = 1024  # the same when only header blocks are read

NO_CONTENT, HEADER_ONLY, FULL = 0, 1, 2


@dataclass
class _Ctx:
    row: MsgRow
    seq: int
    data: bytes | None  # the message, or (HEADER_ONLY) a prefix holding its whole header
    parsed: mime.Message | None
    largest_uid: int
    exists: int
    saved: frozenset[int]
    now: float
    recent: set[int]
    spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict)


def content_need(key: k.SearchKey) -> int:
    """What a key needs beyond the metadata row: nothing, the header block, or all."""
    match key:
        case k.Header() | k.Date(which="sent"):
            return HEADER_ONLY
        case k.Body() | k.Text():
            return FULL
        case k.Not(key=inner):
            return content_need(inner)
        case k.Or(left=a, right=b):
            return max(content_need(a), content_need(b))
        case k.And(keys=keys):
            return max((content_need(x) for x in keys), default=NO_CONTENT)
    return NO_CONTENT


def flag_masks(key: k.SearchKey) -> tuple[int, int] | None:
    """(must-have bits, must-lack bits) when ``key`` is a conjunction of system-flag
    tests, else None."""
    match key:
        case k.All():
            return 0, 0
        case k.Flag(flag=flag, present=present) if flag.lower() in _BITS:
            bit = _BITS[flag.lower()]
            return (bit, 0) if present else (0, bit)
        case k.Not(key=k.Flag(flag=flag, present=present)) if flag.lower() in _BITS:
            bit = _BITS[flag.lower()]
            return (0, bit) if present else (bit, 0)
        case k.And(keys=keys):
            set_bits = clear_bits = 0
            for x in keys:
                got = flag_masks(x)
                if got is None:
                    return None
                set_bits, clear_bits = set_bits | got[0], clear_bits | got[1]
            return set_bits, clear_bits
    return None


def has_flag(row: MsgRow, flag: str) -> bool:
    low = flag.lower()
    bit = _BITS.get(low)
    if bit is not None:
        return bool(row.flags & bit)
    return low in {kw.lower() for kw in row.keywords.split(" ") if kw}


def _decode_header(value: str) -> str:
    if "=?" not in value:  # no encoded word (RFC 2047 §2): the text as it is
        return value
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


_ADDRESS_FIELDS = frozenset({"from", "to", "cc", "bcc", "sender", "reply-to"})


def _address_forms(values: list[str]) -> list[str]:
    """RFC 3501 §6.4.4 FROM/TO/CC/BCC: the addresses as parsed (comments and white
    space gone, as in the ENVELOPE), "name <mailbox@host>" each."""
    out = []
    for v in values:
        for a in mime.parse_addresses(v):
            if a.mailbox is None or a.host is None:
                continue  # group markers
            name = _decode_header(a.name) + " " if a.name else ""
            out.append(f"{name}<{a.mailbox}@{a.host}>")
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


def _in_set(ctx: _Ctx, seqset: k.SequenceSet, n: int, largest: int) -> bool:
    spans = ctx.spans.get(id(seqset))
    if spans is None:
        spans = ctx.spans[id(seqset)] = seqset.intervals(largest)
    return any(a <= n <= b for a, b in spans)


def matches(key: k.SearchKey, ctx: _Ctx) -> bool | None:
    """Does the message match? None ("unknown") only when the key needs content that
    ``ctx`` does not hold (``data`` None, or ``parsed`` None for BODY/TEXT)."""
    m = ctx.row
    match key:
        case k.All():
            return True
        case k.Flag(flag=flag, present=present):
            if flag == "\\Recent":  # RFC 3501 §2.3.2: recent in this session
                return (m.uid in ctx.recent) == present
            return has_flag(m, flag) == present
        case k.Size(op=op, size=size):
            return m.size > size if op == "larger" else m.size < size
        case k.Within(op=op, seconds=secs):
            age = ctx.now - m.internal_date
            return age > secs if op == "older" else age <= secs
        case k.Sequence(set=seqset, uid=uid):
            if seqset.saved:
                return m.uid in ctx.saved
            if uid:
                return _in_set(ctx, seqset, m.uid, ctx.largest_uid)
            return _in_set(ctx, seqset, ctx.seq, ctx.exists)
        case k.ModSeq(modseq=modseq):
            return m.modseq >= modseq
        case k.Date(which="internal", op=op, date=ref):
            return _compare(op, _date_of(m.internal_date), ref)
        case k.Date(which="sent", op=op, date=ref):
            if ctx.data is None:
                return None
            values = _header_values(ctx, "Date")
            if not values:
                return False
            try:
                sent = email.utils.parsedate_to_datetime(values[0]).date()
            except (TypeError, ValueError, IndexError):
                return False
            return _compare(op, sent, ref)
        case k.Header(field=field, value=value):
            if ctx.data is None:
                return None
            values = _header_values(ctx, field)
            if field.lower() in _ADDRESS_FIELDS:
                values += _address_forms(values)
            needle = value.casefold()
            return any(needle in v.casefold() for v in values)
        case k.Body(value=value):
            if ctx.data is None or ctx.parsed is None:
                return None
            return value.casefold() in _body_text(ctx).casefold()
        case k.Text(value=value):
            if ctx.data is None or ctx.parsed is None:
                return None
            header = ctx.data[:ctx.parsed.root.body_start].decode("utf-8", "replace")
            needle = value.casefold()
            return needle in _decode_header(header).casefold() or \
                needle in _body_text(ctx).casefold()
        case k.Not(key=inner):
            got = matches(inner, ctx)
            return None if got is None else not got
        case k.Or(left=a, right=b):
            left = matches(a, ctx)
            if left:
                return True
            right = matches(b, ctx)
            if right:
                return True
            return None if left is None or right is None else False
        case k.And(keys=keys):
            unknown = False
            for x in keys:
                got = matches(x, ctx)
                if got is False:
                    return False
                unknown = unknown or got is None
            return None if unknown else True
    raise respond.Bad("unsupported search key")


async def evaluate(s: Session, key: k.SearchKey) -> list[tuple[int, int]]:
    """(uid, modseq) of the messages of the session's view matching ``key``, ascending."""
    from mailstack.imap.fetch import structures

    view = s.require_view()
    in_view = set(view.uids)
    masks = flag_masks(key)
    if masks is not None:
        hits = await s.store.uids_by_flags(view.folder_id, *masks)
        return [h for h in hits if h[0] in in_view]
    need = content_need(key)
    rows = [r for r in await s.store.message_rows(view.folder_id, with_blob=need != NO_CONTENT)
            if r.uid in in_view]
    largest = view.uids[-1] if view.uids else 0
    saved = frozenset(view.saved or ())
    now = s.services.clock()
    spans: dict[int, list[tuple[int, int]]] = {}
    found: list[MsgRow] = []
    undecided: list[_Ctx] = []
    for r in rows:
        ctx = _Ctx(r, view.seq_of(r.uid) or 0, None, None, largest, view.exists, saved, now,
                   view.recent, spans)
        got = matches(key, ctx)
        if got:
            found.append(r)
        elif got is None:
            undecided.append(ctx)
    writeback: list[tuple[int, str, str]] = []
    size = _HEADER_BATCH if need == HEADER_ONLY else _BATCH
    try:
        for i in range(0, len(undecided), size):
            batch = undecided[i:i + size]
            datas = await s.store.read_messages([(c.row.blob_id, c.row.prefix) for c in batch],
                                                header_only=need == HEADER_ONLY,
                                                size=sum(c.row.size for c in batch))
            parsed = None
            if need == FULL:
                cached = await s.store.cached_structures([c.row.id for c in batch])
                parsed = await structures(
                    [(c.row.id, cached.get(c.row.id, (None, None)), d)
                     for c, d in zip(batch, datas, strict=True)], writeback)
            for n, c in enumerate(batch):
                c.data = datas[n]
                c.parsed = parsed[n] if parsed is not None else None
                if matches(key, c):
                    found.append(c.row)
                c.data = c.parsed = None
    finally:
        if writeback:
            await s.store.set_cached_structures(writeback)
    found.sort(key=lambda r: r.uid)
    return [(r.uid, r.modseq) for r in found]


async def search(s: Session, c: t.Search) -> str | None:
    from mailstack.imap import contexts

    view = s.require_view()
    opts = c.return_options
    update = opts is not None and "UPDATE" in opts  # RFC 5267 §4 (CONTEXT=SEARCH)
    if update:
        contexts.check_tag(s, c.tag)
    if opts is not None and "SAVE" in opts:
        view.saved = []  # RFC 5182 §2.1: a failing SEARCH leaves "$" empty
    found = await evaluate(s, c.key)
    numbers = [uid if c.uid else view.seq_of(uid) or 0 for uid, _ in found]
    modseq = k.modseq_required(c.key)
    if modseq:
        s.enable_condstore()  # RFC 7162 §3.1: SEARCH MODSEQ is CONDSTORE-enabling
    top = max((ms for _, ms in found), default=0)
    chosen = found
    if opts is not None and opts & {"MIN", "MAX"}:
        chosen = ([found[0]] if "MIN" in opts and found else []) + \
            ([found[-1]] if "MAX" in opts and found else [])
        if not opts & {"ALL", "COUNT"}:
            # RFC 4731 §3.2 with RFC 7162 §3.1.5: the MODSEQ of what is returned
            top = max((ms for _, ms in chosen), default=0)
    if opts is not None and "SAVE" in opts:
        # RFC 5182 §2.4: only MIN/MAX are saved when given
        view.saved = sorted({uid for uid, _ in chosen})
        if opts == {"SAVE"}:
            return None
    if update:
        contexts.start(s, c.tag, c.uid, c.key, None, [uid for uid, _ in found])
    if opts is None and not s.rev2:
        line = "SEARCH" + "".join(f" {n}" for n in numbers)
        if modseq and found:
            line += f" (MODSEQ {top})"
        s.send(respond.untagged(line))
        return None
    effective = (opts or frozenset()) - {"SAVE", "CONTEXT", "UPDATE"}
    if not effective:
        effective = frozenset({"ALL"})
    parts = [f'(TAG "{c.tag}")'] + (["UID"] if c.uid else [])
    if "MIN" in effective and numbers:
        parts.append(f"MIN {min(numbers)}")
    if "MAX" in effective and numbers:
        parts.append(f"MAX {max(numbers)}")
    if "ALL" in effective and numbers:
        parts.append(f"ALL {respond.seq_set(numbers)}")
    if c.partial is not None:  # RFC 5267 §4.4: positions low..high of the result
        window = numbers[c.partial[0] - 1:c.partial[1]]
        parts.append(f"PARTIAL ({c.partial[0]}:{c.partial[1]} "
                     f"{respond.seq_set(window) if window else 'NIL'})")
    if "COUNT" in effective:
        parts.append(f"COUNT {len(numbers)}")
    if modseq and found:
        parts.append(f"MODSEQ {top}")
    s.send(respond.untagged("ESEARCH " + " ".join(parts)))
    return None

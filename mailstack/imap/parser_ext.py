"""Parsers of the IMAP extension commands (no I/O): SORT and THREAD (RFC 5256, ESORT
RFC 5267), METADATA (RFC 5464), NOTIFY (RFC 5465), QUOTA (RFC 9208), COMPRESS
(RFC 4978) and CATENATE parts (RFC 4469). Registered in ``parser.COMMANDS``; same rules
as :mod:`mailstack.imap.parser` (linear, bounded lists, ParseError for bad input).
"""

from __future__ import annotations

import re

from mailstack.imap import types as t
from mailstack.imap.fetch_items import FetchAtt, parse_fetch_atts
from mailstack.imap.lexer import MAX_NUMBER, Lexer
from mailstack.imap.search import SearchParser


def parse_cat_parts(lx: Lexer) -> tuple[tuple[str, bytes | str], ...]:
    """RFC 4469 §5: SP "(" cat-part *(SP cat-part) ")"; cat-part = "TEXT" SP literal /
    "URL" SP astring."""
    lx.sp()
    lx.char(b"(")
    parts: list[tuple[str, bytes | str]] = []
    while True:
        if lx.maybe_word(b"TEXT"):
            lx.sp()
            if not lx.is_literal():
                raise lx.error("CATENATE TEXT needs a literal")
            parts.append(("TEXT", lx.literal(allow8=True).data))
        elif lx.maybe_word(b"URL"):
            lx.sp()
            parts.append(("URL", lx.utf8_text(lx.astring())))
        else:
            raise lx.error("expected TEXT or URL")
        if len(parts) > 64:
            raise lx.error("too many CATENATE parts")
        if lx.maybe_char(b")"):
            return tuple(parts)
        lx.sp()


ESORT_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "CONTEXT", "UPDATE", "PARTIAL"})
_RANGE = re.compile(r"([0-9]{1,10}):([0-9]{1,10})\Z")


def return_options(lx: Lexer, allowed: frozenset[str]
                   ) -> tuple[frozenset[str], tuple[int, int] | None]:
    """``RETURN (...)`` of SEARCH/SORT (RFC 4731 §3, RFC 5267 §3, §4): the option names
    and the PARTIAL range (RFC 5267 §4.4: ``PARTIAL nz-number:nz-number``, low first)."""
    opts = lx.paren_list()
    names: set[str] = set()
    partial: tuple[int, int] | None = None
    i = 0
    while i < len(opts):
        opt = opts[i]
        if opt not in allowed:
            raise lx.error(f"unknown return option {opt}")
        if opt in names:
            raise lx.error(f"return option {opt} given twice")
        names.add(opt)
        if opt == "PARTIAL":
            m = _RANGE.match(opts[i + 1]) if i + 1 < len(opts) else None
            if m is None:
                raise lx.error("PARTIAL needs a range low:high")
            a, b = int(m.group(1)), int(m.group(2))
            if not (0 < a <= MAX_NUMBER and 0 < b <= MAX_NUMBER):
                raise lx.error("PARTIAL range out of bounds")
            partial = (min(a, b), max(a, b))
            i += 1
        i += 1
    if "PARTIAL" in names and "ALL" in names:
        raise lx.error("PARTIAL conflicts with ALL")  # one or the other (RFC 5267 §4.4)
    return frozenset(names), partial


def parse_cancelupdate(lx: Lexer, tag: str) -> t.Command:
    """RFC 5267 §4.3.5: CANCELUPDATE 1*(SP quoted)."""
    tags: list[str] = []
    while lx.maybe_sp():
        tags.append(lx.quoted().decode("ascii", "replace"))
        if len(tags) > 100:
            raise lx.error("too many tags")
    if not tags:
        raise lx.error("CANCELUPDATE needs a tag")
    return t.CancelUpdate(tag=tag, tags=tuple(tags))
THREAD_ALGORITHMS = frozenset({"ORDEREDSUBJECT", "REFERENCES"})


def _charset(lx: Lexer) -> str:
    raw = lx.quoted() if lx.peek() == 0x22 else lx.atom().encode("ascii")
    return lx.utf8_text(raw).upper()


def parse_sort(lx: Lexer, tag: str, uid: bool = False) -> t.Command:
    """RFC 5256 §5: SORT [RETURN (...)] (criteria) charset search-key (RFC 5267 §3)."""
    from mailstack.imap.sorting import SORT_KEYS

    lx.sp()
    returns: frozenset[str] | None = None
    partial: tuple[int, int] | None = None
    if lx.maybe_word(b"RETURN"):
        lx.sp()
        returns, partial = return_options(lx, ESORT_RETURN)
        lx.sp()
    lx.char(b"(")
    criteria: list[tuple[str, bool]] = []
    while True:
        reverse = lx.maybe_word(b"REVERSE")
        if reverse:
            lx.sp()
        name = lx.keyword()
        if name not in SORT_KEYS:
            raise lx.error(f"unknown sort key {name}")
        criteria.append((name, reverse))
        if len(criteria) > 16:
            raise lx.error("too many sort criteria")
        if lx.maybe_char(b")"):
            break
        lx.sp()
    lx.sp()
    charset = _charset(lx)
    lx.sp()
    key = SearchParser(lx, charset).program()
    return t.Sort(tag=tag, uid=uid, criteria=tuple(criteria), charset=charset, key=key,
                  return_options=returns, partial=partial)


def parse_thread(lx: Lexer, tag: str, uid: bool = False) -> t.Command:
    """RFC 5256 §5: THREAD algorithm charset search-key."""
    lx.sp()
    algorithm = lx.keyword()
    if algorithm not in THREAD_ALGORITHMS:
        raise lx.error(f"unsupported threading algorithm {algorithm}")
    lx.sp()
    charset = _charset(lx)
    lx.sp()
    key = SearchParser(lx, charset).program()
    return t.Thread(tag=tag, uid=uid, algorithm=algorithm, charset=charset, key=key)


_ENTRY = re.compile(r"/(private|shared)(/[\x21-\x2e\x30-\x7e]+)+", re.IGNORECASE)


def _entry(lx: Lexer) -> str:
    """RFC 5464 §3.2: "/private/..." or "/shared/...", no "*", "%", "//" or trailing "/"."""
    name = lx.utf8_text(lx.astring())
    if _ENTRY.fullmatch(name) is None or "*" in name or "%" in name:
        raise lx.error(f"invalid metadata entry name {name!r}")
    return name


def parse_getmetadata(lx: Lexer, tag: str) -> t.Command:
    """RFC 5464 §5: GETMETADATA [SP "(" options ")"] SP mailbox SP entries."""
    lx.sp()
    maxsize: int | None = None
    depth = "0"
    if lx.maybe_char(b"("):
        while True:
            if lx.maybe_word(b"MAXSIZE"):
                lx.sp()
                maxsize = lx.number()
            elif lx.maybe_word(b"DEPTH"):
                lx.sp()
                depth = lx.keyword().lower()
                if depth not in ("0", "1", "infinity"):
                    raise lx.error("DEPTH is 0, 1 or infinity")
            else:
                raise lx.error("unknown GETMETADATA option")
            if lx.maybe_char(b")"):
                break
            lx.sp()
        lx.sp()
    mailbox = lx.mailbox()
    lx.sp()
    entries: list[str] = []
    if lx.maybe_char(b"("):
        while True:
            entries.append(_entry(lx))
            if len(entries) > 256:
                raise lx.error("too many entries")
            if lx.maybe_char(b")"):
                break
            lx.sp()
    else:
        entries.append(_entry(lx))
    return t.GetMetadata(tag=tag, mailbox=mailbox, entries=tuple(entries), maxsize=maxsize,
                         depth=depth)


def parse_setmetadata(lx: Lexer, tag: str) -> t.Command:
    """RFC 5464 §5: SETMETADATA SP mailbox SP "(" entry SP value *(...) ")"."""
    lx.sp()
    mailbox = lx.mailbox()
    lx.sp()
    lx.char(b"(")
    items: list[tuple[str, bytes | None]] = []
    while True:
        name = _entry(lx)
        lx.sp()
        value = lx.literal(allow8=True).data if lx.peek() == 0x7E else lx.nstring()
        items.append((name, value))
        if len(items) > 256:
            raise lx.error("too many entries")
        if lx.maybe_char(b")"):
            break
        lx.sp()
    return t.SetMetadata(tag=tag, mailbox=mailbox, items=tuple(items))


NOTIFY_EVENTS = {e.upper(): e for e in (
    "MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange", "MailboxName",
    "SubscriptionChange", "MailboxMetadataChange", "ServerMetadataChange")}
NOTIFY_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL",
                            "SUBSCRIBED", "SUBTREE", "MAILBOXES"})


def parse_notify(lx: Lexer, tag: str) -> t.Command:
    """RFC 5465 §8: NOTIFY NONE / NOTIFY SET [STATUS] event-group *(SP event-group)."""
    lx.sp()
    if lx.maybe_word(b"NONE"):
        return t.Notify(tag=tag, groups=None)
    if not lx.maybe_word(b"SET"):
        raise lx.error("expected NOTIFY SET or NOTIFY NONE")
    lx.sp()
    status = lx.maybe_word(b"STATUS")
    if status:
        lx.sp()
    groups: list[t.NotifyGroup] = []
    while True:
        groups.append(_notify_group(lx))
        if len(groups) > 32:
            raise lx.error("too many event groups")
        if not lx.maybe_sp():
            break
    return t.Notify(tag=tag, groups=tuple(groups), status=status)


def _notify_group(lx: Lexer) -> t.NotifyGroup:
    lx.char(b"(")
    filt = lx.keyword()
    if filt not in NOTIFY_FILTERS:
        raise lx.error(f"unknown NOTIFY filter {filt}")
    mailboxes: list[str] = []
    if filt in ("SUBTREE", "MAILBOXES"):
        lx.sp()
        if lx.maybe_char(b"("):
            while True:
                mailboxes.append(lx.mailbox())
                if len(mailboxes) > 256:
                    raise lx.error("too many mailboxes")
                if lx.maybe_char(b")"):
                    break
                lx.sp()
        else:
            mailboxes.append(lx.mailbox())
    lx.sp()
    events: list[str] = []
    fetch: tuple[FetchAtt, ...] = ()
    if not lx.maybe_word(b"NONE"):
        lx.char(b"(")
        while True:
            word = lx.keyword()
            events.append(NOTIFY_EVENTS.get(word, word))
            if word == "MESSAGENEW" and lx.peek() == 0x20 and lx.line[lx.pos + 1:lx.pos + 2] \
                    == b"(":
                lx.sp()
                fetch = parse_fetch_atts(lx)
            if len(events) > 16:
                raise lx.error("too many events")
            if lx.maybe_char(b")"):
                break
            lx.sp()
    lx.char(b")")
    return t.NotifyGroup(filter=filt.lower(), mailboxes=tuple(mailboxes),
                         events=tuple(events), fetch=fetch)


def parse_getquota(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    return t.GetQuota(tag=tag, root=lx.utf8_text(lx.astring()))


def parse_getquotaroot(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    return t.GetQuotaRoot(tag=tag, mailbox=lx.mailbox())


def parse_setquota(lx: Lexer, tag: str) -> t.Command:
    """RFC 9208 §4.1: SETQUOTA root (resource limit ...); checked for syntax only."""
    lx.sp()
    root = lx.utf8_text(lx.astring())
    lx.sp()
    lx.char(b"(")
    while not lx.maybe_char(b")"):
        lx.atom()
        lx.sp()
        lx.number64()
        lx.maybe_sp()
    return t.SetQuota(tag=tag, root=root)


def parse_compress(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    return t.Compress(tag=tag, mechanism=lx.keyword())

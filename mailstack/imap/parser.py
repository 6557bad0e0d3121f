"""IMAP command parser: bytes → typed command objects (RFC 9051 §6, §9). No I/O.

The network layer drives a :class:`CommandReader` one line at a time::

    reader = CommandReader(Limits(max_literal=1024))          # before login
    result = reader.feed_line(line)                            # line incl. CRLF
    while isinstance(result, NeedLiteral):
        if result.synchronizing:
            send(b"+ Ready\\r\\n")                               # RFC 9051 §7.5
        reader.feed_literal(await read_exactly(result.size))
        result = reader.feed_line(await read_line())
    command = result                                           # a types.Command

Invariants:
- Limits are checked on the *announcement* ``{n}`` — before the caller reads or
  allocates the literal data (docs/behaviour.md §12 "literal and line bombs").
- Only :class:`ParseError` (→ ``tag BAD``, or NO when ``err.no``) and :class:`TooBig`
  escape ``feed_line`` / ``feed_literal`` for any client input; after either, the reader
  is reset and ready for the next command.
- The reader holds at most one command: lines ≤ ``max_line`` each, at most
  ``max_literals`` literals whose sizes sum to at most ``max_total_literal``.
- Parsing is linear in the command size; nesting is bounded by ``max_depth``.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from mailstack.imap import types as t
from mailstack.imap.fetch_items import parse_fetch_atts
from mailstack.imap.lexer import Lexer, LiteralData, ParseError, TooBig
from mailstack.imap.parser_ext import (
    parse_cancelupdate,
    parse_cat_parts,
    parse_compress,
    parse_getmetadata,
    parse_getquota,
    parse_getquotaroot,
    parse_notify,
    parse_setmetadata,
    parse_setquota,
    parse_sort,
    parse_thread,
    return_options,
)
from mailstack.imap.search import SearchParser
from mailstack.imap.sequence import SequenceSet

__all__ = [
    "COMMANDS",
    "UID_COMMANDS",
    "CommandReader",
    "Limits",
    "NeedLiteral",
    "ParseError",
    "TooBig",
    "is_idle_done",
    "parse_command",
    "parse_sasl_response",
]

LITERAL_MINUS_MAX = 4096  # RFC 7888 §5: LITERAL- non-synchronizing literals ≤ 4096 octets


@dataclass(frozen=True)
class Limits:
    """Per-session parser limits. Swap ``reader.limits`` after login to raise them."""

    max_line: int = 8192  # octets per line, CRLF excluded
    max_literal: int = 8192  # any literal outside APPEND
    max_append_literal: int = 8192  # APPEND message literals: set to max message size
    max_total_literal: int = 64 * 1024 * 1024  # sum of literal sizes in one command
    max_literals: int = 64  # literals per command (MULTIAPPEND needs one per message)
    max_depth: int = 32  # SEARCH parentheses / NOT / OR nesting
    literal_plus: bool = True  # LITERAL+; False means LITERAL- (RFC 7888 §5)


@dataclass(frozen=True)
class NeedLiteral:
    """The line ended in a literal announcement that passed the limits."""

    size: int
    synchronizing: bool  # True: send "+ Ready" before reading (RFC 9051 §7.5)
    binary: bool  # literal8 ~{n} (RFC 3516)
    tag: str | None
    command: str  # upper-case command name ("UID" prefix dropped), "" if not yet known


_LINE_LITERAL = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")
_HEAD = re.compile(rb'([^\x00-\x20\x7f-\xff(){%*"\\+]+)(?: (?:[Uu][Ii][Dd] )?([A-Za-z]+))?')


class CommandReader:
    """Assembles one command from lines and literals, then parses it."""

    def __init__(self, limits: Limits | None = None, *, utf8: bool = False) -> None:
        self.limits = limits or Limits()
        self.utf8 = utf8  # set after ENABLE UTF8=ACCEPT (RFC 6855 §3)
        self.reset()

    def reset(self) -> None:
        self._lines: list[bytes] = []
        self._literals: list[LiteralData] = []
        self._pending: NeedLiteral | None = None
        self._total = 0
        self._tag: str | None = None
        self._command = ""

    @property
    def pending(self) -> NeedLiteral | None:
        """The literal the reader is waiting for, if any."""
        return self._pending

    def feed_line(self, line: bytes) -> t.Command | NeedLiteral:
        if self._pending is not None:
            raise RuntimeError("feed_literal() expected")
        try:
            return self._feed_line(line)
        except (ParseError, TooBig) as exc:
            if exc.tag is None:
                exc.tag = self._tag
            self.reset()
            raise

    def feed_literal(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            raise RuntimeError("no literal was announced")
        if len(data) != pending.size:
            raise RuntimeError("literal length differs from the announcement")
        self._literals.append(LiteralData(bytes(data), pending.binary))
        self._pending = None

    # ------------------------------------------------------------------ internals

    def _feed_line(self, line: bytes) -> t.Command | NeedLiteral:
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif line.endswith(b"\n"):
            line = line[:-1]  # tolerate bare LF line ends from sloppy clients
        if not self._lines:
            m = _HEAD.match(line)
            if m is not None:
                self._tag = m.group(1).decode("ascii")
                self._command = (m.group(2) or b"").upper().decode("ascii")
        lim = self.limits
        if len(line) > lim.max_line:
            raise TooBig("command line too long", kind="line")
        if b"\r" in line or b"\n" in line:
            raise ParseError("bare CR or LF in command line")
        m = _LINE_LITERAL.search(line)
        if m is None:
            self._lines.append(line)
            lx = Lexer(self._lines, self._literals, max_depth=lim.max_depth, utf8=self.utf8)
            self._lines, self._literals = [], []
            command = parse(lx)
            self.reset()
            return command
        binary = bool(m.group(1))
        sync = not m.group(3)
        digits = m.group(2)
        limit = lim.max_append_literal if self._command == "APPEND" else lim.max_literal
        if len(digits) > 19 or int(digits) > limit:
            raise TooBig("literal too big", kind="literal", synchronizing=sync)
        size = int(digits)
        if not sync and not lim.literal_plus and size > LITERAL_MINUS_MAX:
            raise TooBig("non-synchronizing literal over 4096", kind="literal", synchronizing=False)
        if len(self._literals) + 1 > lim.max_literals:
            raise TooBig("too many literals", kind="literals", synchronizing=sync)
        if self._total + size > lim.max_total_literal:
            raise TooBig("command too big", kind="total", synchronizing=sync)
        self._total += size
        self._lines.append(line)
        self._pending = NeedLiteral(size, sync, binary, self._tag, self._command)
        return self._pending


def parse(lx: Lexer) -> t.Command:
    """Parse a whole command from a lexer at its start."""
    tag: str | None = None
    try:
        tag = lx.tag()
        lx.sp()
        name = lx.keyword()
        if name == "UID":
            lx.sp()
            sub = lx.keyword()
            uid_handler = UID_COMMANDS.get(sub)
            if uid_handler is None:
                raise lx.error(f"unknown UID command {sub}")
            command = uid_handler(lx, tag, True)
        else:
            handler = COMMANDS.get(name)
            if handler is None:
                raise lx.error(f"unknown command {name}")
            command = handler(lx, tag)
        lx.end()
        return command
    except ParseError as exc:
        if exc.tag is None:
            exc.tag = tag
        raise


def parse_command(data: bytes, limits: Limits | None = None, *, utf8: bool = False) -> t.Command:
    """Parse a complete command given as one byte string (wire format, literals inline).

    Convenience for tests and tools; the server uses :class:`CommandReader`.
    """
    reader = CommandReader(limits, utf8=utf8)
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos : nl + 1]
        pos = len(data) if nl < 0 else nl + 1
        result = reader.feed_line(line)
        if isinstance(result, t.Command):
            if pos < len(data):
                raise ParseError("data after the end of the command", tag=result.tag)
            return result
        chunk = data[pos : pos + result.size]
        if len(chunk) != result.size:
            raise ParseError("truncated literal", tag=result.tag)
        reader.feed_literal(chunk)
        pos += result.size


def is_idle_done(line: bytes) -> bool:
    """RFC 9051 §6.3.13: the client ends IDLE with "DONE" (case-insensitive)."""
    return line.rstrip(b"\r\n").upper() == b"DONE"


_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")


def parse_sasl_response(line: bytes) -> bytes | None:
    """A client line during AUTHENTICATE: base64 data, or None for "*" (cancel,
    RFC 9051 §6.2.2). Raises ParseError on malformed base64."""
    line = line.rstrip(b"\r\n")
    if line == b"*":
        return None
    return _b64(line)


def _b64(raw: bytes) -> bytes:
    if _BASE64.fullmatch(raw) is None or len(raw) % 4:
        raise ParseError("malformed base64")
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        raise ParseError("malformed base64") from None


# ---------------------------------------------------------------------- handlers

Handler = Callable[[Lexer, str], t.Command]
UidHandler = Callable[[Lexer, str, bool], t.Command]


def _simple(cls: type[t.Command]) -> Handler:
    return lambda lx, tag: cls(tag=tag)


def _login(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    user = lx.text_astring()
    lx.sp()
    return t.Login(tag=tag, userid=user, password=lx.text_astring())


def _authenticate(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    mech = lx.keyword()
    initial: bytes | None = None
    if lx.maybe_sp():  # RFC 4959 SASL-IR: "=" is an empty initial response
        m = _BASE64.match(lx.line, lx.pos)
        raw = m.group() if m else b""
        if not raw:
            raise lx.error("expected base64 initial response")
        lx.pos += len(raw)
        initial = b"" if raw == b"=" else _b64(raw)
    return t.Authenticate(tag=tag, mechanism=mech, initial_response=initial)


def _enable(lx: Lexer, tag: str) -> t.Command:
    caps = []
    lx.sp()
    caps.append(lx.keyword())
    while lx.maybe_sp():
        caps.append(lx.keyword())
    return t.Enable(tag=tag, capabilities=tuple(caps))


def _id(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    if lx.maybe_word(b"NIL"):
        return t.Id(tag=tag, params=None)
    lx.char(b"(")
    pairs: list[tuple[str, str | None]] = []
    if not lx.maybe_char(b")"):
        while True:
            key = lx.utf8_text(lx.string())
            lx.sp()
            value = lx.nstring()
            pairs.append((key, None if value is None else lx.utf8_text(value)))
            if len(pairs) > 30:  # RFC 2971 §3.3: at most 30 field-value pairs
                raise lx.error("too many ID fields")
            if lx.maybe_char(b")"):
                break
            lx.sp()
    return t.Id(tag=tag, params=tuple(pairs))


def _select(readonly: bool) -> Handler:
    def handler(lx: Lexer, tag: str) -> t.Command:
        lx.sp()
        mailbox = lx.mailbox()
        condstore = False
        qresync: t.QResync | None = None
        if lx.maybe_sp():
            # RFC 4466 §2.1 select-params; RFC 7162 §3.1.8 CONDSTORE, §3.2.5 QRESYNC.
            # Unknown or repeated parameters: BAD.
            lx.char(b"(")
            while True:
                if not condstore and lx.maybe_word(b"CONDSTORE"):
                    condstore = True
                elif qresync is None and lx.maybe_word(b"QRESYNC"):
                    lx.sp()
                    qresync = _qresync_param(lx)
                else:
                    raise lx.error("unsupported or repeated select parameter")
                if lx.maybe_char(b")"):
                    break
                lx.sp()
        return t.Select(tag=tag, mailbox=mailbox, readonly=readonly, condstore=condstore,
                        qresync=qresync)

    return handler


def _uid_set(lx: Lexer) -> SequenceSet:
    seq = lx.sequence_set()
    if seq.saved:
        raise lx.error("'$' is not allowed here")
    return seq


def _seq_match(lx: Lexer) -> tuple[SequenceSet, SequenceSet]:
    """The rest of seq-match-data after its "(" (RFC 7162 §7)."""
    seqs = _uid_set(lx)
    lx.sp()
    uids = _uid_set(lx)
    lx.char(b")")
    return seqs, uids


def _qresync_param(lx: Lexer) -> t.QResync:
    """RFC 7162 §7: "(" uidvalidity SP mod-sequence-value [SP known-uids]
    [SP seq-match-data] ")"; seq-match-data = "(" sequence-set SP uid-set ")"."""
    lx.char(b"(")
    uidvalidity = lx.nz_number()
    lx.sp()
    modseq = lx.number64()
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if lx.maybe_sp():
        if lx.maybe_char(b"("):
            match = _seq_match(lx)
        else:
            known = _uid_set(lx)
            if lx.maybe_sp():
                lx.char(b"(")
                match = _seq_match(lx)
    lx.char(b")")
    return t.QResync(uidvalidity=uidvalidity, modseq=modseq, known_uids=known, seq_match=match)


def _create(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    mailbox = lx.mailbox()
    use: list[str] = []
    if lx.maybe_sp():
        lx.char(b"(")  # RFC 4466 create-params; RFC 6154 §3 USE
        while True:
            if not lx.maybe_word(b"USE"):
                raise lx.error("unsupported CREATE parameter")
            lx.sp()
            use.extend(lx.flag_list())
            if lx.maybe_char(b")"):
                break
            lx.sp()
        if any(not u.startswith("\\") for u in use):
            raise lx.error("special-use attributes start with a backslash")
    return t.Create(tag=tag, mailbox=mailbox, special_use=tuple(use))


def _one_mailbox(cls: type[t.Delete] | type[t.Subscribe] | type[t.Unsubscribe]) -> Handler:
    def handler(lx: Lexer, tag: str) -> t.Command:
        lx.sp()
        return cls(tag=tag, mailbox=lx.mailbox())

    return handler


def _rename(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    old = lx.mailbox()
    lx.sp()
    return t.Rename(tag=tag, mailbox=old, new_name=lx.mailbox())


STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",
        "SIZE",
        "RECENT",
        "HIGHESTMODSEQ",
        "APPENDLIMIT",
        "MAILBOXID",
        "DELETED-STORAGE",
    }
)


def _status_items(lx: Lexer) -> tuple[str, ...]:
    items = lx.paren_list()
    if not items:
        raise lx.error("empty status item list")
    for item in items:
        if item not in STATUS_ITEMS:
            raise lx.error(f"unknown status item {item}")
    return tuple(items)


def _status(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    mailbox = lx.mailbox()
    lx.sp()
    return t.Status(tag=tag, mailbox=mailbox, items=_status_items(lx))


LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS", "MYRIGHTS"})


def _list(lx: Lexer, tag: str) -> t.Command:
    """RFC 9051 §6.3.9 / RFC 5258 §6: LIST [select-opts] ref pattern(s) [RETURN (...)]."""
    lx.sp()
    extended = False
    selection: list[str] = []
    if lx.peek() == 0x28:
        extended = True
        selection = lx.paren_list()
        for opt in selection:
            if opt not in LIST_SELECT:
                raise lx.error(f"unknown LIST selection option {opt}")
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH",
                                                                  "REMOTE"}:
            # RFC 5258 §3.1: RECURSIVEMATCH alone or with only REMOTE is a syntax error.
            raise lx.error("RECURSIVEMATCH needs another selection option")
        lx.sp()
    reference = lx.mailbox()
    lx.sp()
    patterns: list[str] = []
    if lx.maybe_char(b"("):
        extended = True
        while True:
            patterns.append(lx.list_mailbox())
            if lx.maybe_char(b")"):
                break
            lx.sp()
    else:
        patterns.append(lx.list_mailbox())
    returns: list[str] = []
    status: tuple[str, ...] | None = None
    if lx.maybe_sp():
        extended = True
        if not lx.maybe_word(b"RETURN"):
            raise lx.error("expected RETURN")
        lx.sp()
        lx.char(b"(")
        if not lx.maybe_char(b")"):
            while True:
                opt = lx.keyword()
                if opt not in LIST_RETURN:
                    raise lx.error(f"unknown LIST return option {opt}")
                if opt == "STATUS":  # RFC 5819 §2
                    lx.sp()
                    status = _status_items(lx)
                returns.append(opt)
                if lx.maybe_char(b")"):
                    break
                lx.sp()
    return t.List(
        tag=tag,
        reference=reference,
        patterns=tuple(patterns),
        selection=frozenset(selection),
        return_options=frozenset(returns),
        status_items=status,
        extended=extended,
    )


def _lsub(lx: Lexer, tag: str) -> t.Command:
    lx.sp()
    reference = lx.mailbox()
    lx.sp()
    return t.Lsub(tag=tag, reference=reference, pattern=lx.list_mailbox())


def _append(lx: Lexer, tag: str) -> t.Command:
    """RFC 9051 §6.3.12, RFC 3502 MULTIAPPEND, RFC 3516 literal8."""
    lx.sp()
    mailbox = lx.mailbox()
    messages: list[t.AppendMessage] = []
    while lx.maybe_sp():
        flags: tuple[str, ...] = ()
        date = None
        if lx.peek() == 0x28:
            flags = lx.flag_list()
            lx.sp()
        if lx.peek() == 0x22:
            date = lx.date_time()
            lx.sp()
        if lx.maybe_word(b"CATENATE"):
            messages.append(t.AppendMessage(flags=flags, internal_date=date, data=b"",
                                            catenate=parse_cat_parts(lx)))
            continue
        utf8 = lx.maybe_word(b"UTF8")
        if utf8:
            # RFC 6855 §4: append-data =/ "UTF8" SP "(" literal8 ")", only after
            # ENABLE UTF8=ACCEPT
            if not lx.utf8:
                raise lx.error("UTF8 APPEND data needs ENABLE UTF8=ACCEPT")
            lx.sp()
            lx.char(b"(")
            if lx.peek() != 0x7E:
                raise lx.error("UTF8 APPEND data must be a literal8")
        elif not lx.is_literal():
            raise lx.error("expected message literal")
        lit = lx.literal(allow8=True)
        if utf8:
            lx.char(b")")
        messages.append(
            t.AppendMessage(flags=flags, internal_date=date, data=lit.data, binary=lit.binary)
        )
    if not messages:
        raise lx.error("APPEND needs a message")
    return t.Append(tag=tag, mailbox=mailbox, messages=tuple(messages))


SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "UPDATE",
                           "PARTIAL"})


def _search(lx: Lexer, tag: str, uid: bool = False) -> t.Command:
    lx.sp()
    returns: frozenset[str] | None = None
    partial: tuple[int, int] | None = None
    if lx.maybe_word(b"RETURN"):  # RFC 4731 §3 / RFC 9051 §6.4.4.1 / RFC 5267 §4
        lx.sp()
        returns, partial = return_options(lx, SEARCH_RETURN)
        lx.sp()
    charset: str | None = None
    if lx.maybe_word(b"CHARSET"):
        lx.sp()
        raw = lx.quoted() if lx.peek() == 0x22 else lx.atom().encode("ascii")
        charset = lx.utf8_text(raw).upper()
        lx.sp()
    key = SearchParser(lx, charset).program()
    return t.Search(tag=tag, uid=uid, return_options=returns, charset=charset, key=key,
                    partial=partial)


def _fetch(lx: Lexer, tag: str, uid: bool = False) -> t.Command:
    lx.sp()
    seq = lx.sequence_set()
    lx.sp()
    items = parse_fetch_atts(lx)
    changedsince: int | None = None
    vanished = False
    if lx.maybe_sp():
        lx.char(b"(")  # RFC 4466 fetch-modifiers
        while True:
            if lx.maybe_word(b"CHANGEDSINCE"):  # RFC 7162 §3.1.4.1
                lx.sp()
                changedsince = lx.number64()
            elif lx.maybe_word(b"VANISHED"):  # RFC 7162 §3.2.6
                vanished = True
            else:
                raise lx.error("unknown FETCH modifier")
            if lx.maybe_char(b")"):
                break
            lx.sp()
        if vanished and (not uid or changedsince is None):
            raise lx.error("VANISHED needs UID FETCH with CHANGEDSINCE")
    return t.Fetch(
        tag=tag, uid=uid, sequence=seq, items=items, changedsince=changedsince, vanished=vanished
    )


_STORE_ATT = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE)


def _store(lx: Lexer, tag: str, uid: bool = False) -> t.Command:
    lx.sp()
    seq = lx.sequence_set()
    lx.sp()
    unchanged: int | None = None
    if lx.maybe_char(b"("):  # RFC 7162 §3.1.3 store-modifiers
        if not lx.maybe_word(b"UNCHANGEDSINCE"):
            raise lx.error("unknown STORE modifier")
        lx.sp()
        unchanged = lx.number64()
        lx.char(b")")
        lx.sp()
    m = _STORE_ATT.match(lx.line, lx.pos)
    if m is None:
        raise lx.error("expected [+-]FLAGS[.SILENT]")
    lx.pos = m.end()
    lx.sp()
    if lx.peek() == 0x28:
        flags = lx.flag_list()
    else:
        flag_seq = [lx.flag()]
        while lx.maybe_sp():
            flag_seq.append(lx.flag())
        flags = tuple(flag_seq)
    return t.Store(
        tag=tag,
        uid=uid,
        sequence=seq,
        mode=m.group(1).decode("ascii"),
        silent=m.group(2) is not None,
        flags=flags,
        unchangedsince=unchanged,
    )


def _copy_move(cls: type[t.Copy] | type[t.Move]) -> UidHandler:
    def handler(lx: Lexer, tag: str, uid: bool = False) -> t.Command:
        lx.sp()
        seq = lx.sequence_set()
        lx.sp()
        return cls(tag=tag, uid=uid, sequence=seq, mailbox=lx.mailbox())

    return handler


def _expunge(lx: Lexer, tag: str) -> t.Command:
    return t.Expunge(tag=tag)


def _uid_expunge(lx: Lexer, tag: str, uid: bool = True) -> t.Command:
    lx.sp()  # RFC 4315 §2.1 / RFC 9051 §6.4.9
    return t.Expunge(tag=tag, uids=lx.sequence_set())


def _plain(handler: UidHandler) -> Handler:
    return lambda lx, tag: handler(lx, tag, False)


COPY = _copy_move(t.Copy)
MOVE = _copy_move(t.Move)

COMMANDS: dict[str, Handler] = {
    "CAPABILITY": _simple(t.Capability),
    "NOOP": _simple(t.Noop),
    "LOGOUT": _simple(t.Logout),
    "STARTTLS": _simple(t.StartTLS),
    "NAMESPACE": _simple(t.Namespace),
    "IDLE": _simple(t.Idle),
    "CHECK": _simple(t.Check),
    "CLOSE": _simple(t.Close),
    "UNSELECT": _simple(t.Unselect),
    "EXPUNGE": _expunge,
    "COMPRESS": parse_compress,
    "GETMETADATA": parse_getmetadata,
    "NOTIFY": parse_notify,
    "CANCELUPDATE": parse_cancelupdate,
    "GETQUOTA": parse_getquota,
    "GETQUOTAROOT": parse_getquotaroot,
    "SETQUOTA": parse_setquota,
    "SETMETADATA": parse_setmetadata,
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "ENABLE": _enable,
    "ID": _id,
    "SELECT": _select(readonly=False),
    "EXAMINE": _select(readonly=True),
    "CREATE": _create,
    "DELETE": _one_mailbox(t.Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(t.Subscribe),
    "UNSUBSCRIBE": _one_mailbox(t.Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "SEARCH": _plain(_search),
    "SORT": _plain(parse_sort),
    "THREAD": _plain(parse_thread),
    "FETCH": _plain(_fetch),
    "STORE": _plain(_store),
    "COPY": _plain(COPY),
    "MOVE": _plain(MOVE),
}

UID_COMMANDS: dict[str, UidHandler] = {
    "COPY": COPY,
    "MOVE": MOVE,
    "FETCH": _fetch,
    "STORE": _store,
    "SEARCH": _search,
    "SORT": parse_sort,
    "THREAD": parse_thread,
    "EXPUNGE": _uid_expunge,
}

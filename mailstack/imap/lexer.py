"""Token-level reader for IMAP command syntax (RFC 9051 §9, RFC 3501 §9). No I/O.

A command arrives as lines; every line but the last ends with a literal announcement
(``{n}``, ``{n+}`` or ``~{n}``) whose data is held separately. The lexer walks the
current line with a position and, when it reads a literal, jumps to the literal data
and then to the start of the next line, so literal data is never copied or rescanned.

Invariants:
- Every failure raises :class:`ParseError` (→ tagged BAD); no other exception escapes
  for any input.
- Integers are range-checked on their digit count before ``int()`` is called.
- Nesting (parentheses, NOT, OR) is bounded by ``max_depth``; the recursive parsers call
  :meth:`Lexer.enter` / :meth:`Lexer.leave`.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

from mailstack.imap import mutf7
from mailstack.imap.sequence import SeqRange, SequenceSet

MAX_NUMBER = 4294967295
MAX_NUMBER64 = 9223372036854775807


class ParseError(ValueError):
    """A syntax error: the session answers ``<tag> BAD <message>`` (or ``* BAD`` if no tag).

    ``code`` is an optional response code (e.g. "BADCHARSET"); when ``no`` is True the
    RFC asks for a tagged NO rather than BAD (e.g. unsupported SEARCH charset,
    RFC 9051 §6.4.4).
    """

    def __init__(
        self, message: str, tag: str | None = None, code: str | None = None, no: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag
        self.code = code
        self.no = no


class TooBig(Exception):
    """A limit was exceeded before data was read or allocated.

    ``kind`` is "line", "literal", "literals" (count) or "total". If ``synchronizing``
    is False the client will send the literal data anyway (RFC 7888 §4): the session
    must then close the connection after its BAD reply.
    """

    def __init__(
        self,
        message: str,
        tag: str | None = None,
        kind: str = "literal",
        synchronizing: bool = True,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag
        self.kind = kind
        self.synchronizing = synchronizing


@dataclass(frozen=True)
class LiteralData:
    data: bytes = field(repr=False)
    binary: bool = False  # literal8 ~{n}


# RFC 9051 §9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards /
# quoted-specials / resp-specials. 8-bit octets are not CHAR and never atom chars.
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')  # ASTRING-CHAR adds "]"
_LISTCHARS = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')  # list-char adds % * ]
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')  # tag: ASTRING-CHAR except "+"
_DIGITS = re.compile(rb"[0-9]+")
_LITERAL = re.compile(rb"(~?)\{([0-9]+)(\+?)\}")
_QUOTED_BODY = re.compile(rb'[^"\\\x00\r\n]*')

MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}

SYSTEM_FLAGS = {
    f.lower(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}


def parse_int(digits: bytes, maximum: int, what: str = "number") -> int:
    """Digits → int, refusing values above ``maximum`` without a huge ``int()``."""
    if len(digits) > len(str(maximum)):
        raise ParseError(f"{what} too large")
    value = int(digits)
    if value > maximum:
        raise ParseError(f"{what} too large")
    return value


class Lexer:
    """Cursor over the lines and literals of one command."""

    def __init__(
        self,
        lines: list[bytes],
        literals: list[LiteralData],
        *,
        max_depth: int = 64,
        utf8: bool = False,
    ) -> None:
        if len(lines) != len(literals) + 1:
            raise ParseError("internal: lines and literals do not match")
        self.lines = lines
        self.literals = literals
        self.li = 0
        self.line = lines[0]
        self.pos = 0
        self.depth = 0
        self.max_depth = max_depth
        self.utf8 = utf8

    # ---------------------------------------------------------------- basics

    def error(self, message: str) -> ParseError:
        return ParseError(f"{message} at octet {self.pos}")

    def peek(self) -> int:
        """Next octet on the current line, or -1 at its end."""
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self.li == len(self.lines) - 1

    def end(self) -> None:
        if not self.at_end():
            raise self.error("unexpected trailing characters")

    def sp(self) -> None:
        if self.peek() != 0x20:
            raise self.error("expected SP")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == 0x20:
            self.pos += 1
            return True
        return False

    def char(self, c: bytes) -> None:
        if self.line[self.pos : self.pos + 1] != c:
            raise self.error(f"expected {c.decode()!r}")
        self.pos += 1

    def maybe_char(self, c: bytes) -> bool:
        if self.line[self.pos : self.pos + 1] == c:
            self.pos += 1
            return True
        return False

    def maybe_word(self, word: bytes) -> bool:
        """Case-insensitive keyword followed by a delimiter (not more atom chars)."""
        end = self.pos + len(word)
        if self.line[self.pos : end].upper() != word:
            return False
        nxt = self.line[end : end + 1]
        if nxt and _ATOM.match(nxt) is not None:
            return False
        self.pos = end
        return True

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise self.error("nesting too deep")

    def leave(self) -> None:
        self.depth -= 1

    # ---------------------------------------------------------------- tokens

    def _match(self, rx: re.Pattern[bytes], what: str) -> bytes:
        m = rx.match(self.line, self.pos)
        if m is None:
            raise self.error(f"expected {what}")
        self.pos = m.end()
        return m.group()

    def tag(self) -> str:
        return self._match(_TAG, "tag").decode("ascii")

    def atom(self) -> str:
        return self._match(_ATOM, "atom").decode("ascii")

    def keyword(self) -> str:
        return self.atom().upper()

    def number(self) -> int:
        return parse_int(self._match(_DIGITS, "number"), MAX_NUMBER)

    def nz_number(self) -> int:
        n = self.number()
        if n == 0:
            raise self.error("zero is not a valid nz-number")
        return n

    def number64(self) -> int:
        return parse_int(self._match(_DIGITS, "number"), MAX_NUMBER64)

    def quoted(self) -> bytes:
        """RFC 9051 §9 quoted: backslash escapes only '"' and '\\'; NUL, CR, LF refused."""
        self.char(b'"')
        out = bytearray()
        while True:
            m = _QUOTED_BODY.match(self.line, self.pos)
            assert m is not None  # the pattern matches the empty string
            out += m.group()
            self.pos = m.end()
            c = self.peek()
            if c == 0x22:
                self.pos += 1
                return bytes(out)
            if c == 0x5C:
                nxt = self.line[self.pos + 1 : self.pos + 2]
                if nxt not in (b'"', b"\\"):
                    raise self.error("invalid escape in quoted string")
                out += nxt
                self.pos += 2
                continue
            if c == -1:
                raise self.error("unterminated quoted string")
            raise self.error("NUL, CR or LF in quoted string")

    def is_literal(self) -> bool:
        c = self.peek()
        return c == 0x7B or c == 0x7E

    def literal(self, allow8: bool = False) -> LiteralData:
        m = _LITERAL.match(self.line, self.pos)
        if m is None or m.end() != len(self.line) or self.li >= len(self.literals):
            raise self.error("malformed literal")
        lit = self.literals[self.li]
        if m.group(1) and not allow8:
            raise self.error("literal8 not allowed here")
        if len(lit.data) != parse_int(m.group(2), MAX_NUMBER64, "literal size"):
            raise self.error("internal: literal size mismatch")
        if not lit.binary and b"\x00" in lit.data:
            # RFC 9051 §9: literal is *CHAR8 (no NUL); RFC 3516 literal8 may carry NUL.
            raise self.error("NUL in literal")
        self.li += 1
        self.line = self.lines[self.li]
        self.pos = 0
        return lit

    def string(self) -> bytes:
        if self.peek() == 0x22:
            return self.quoted()
        if self.peek() == 0x7B:
            return self.literal().data
        raise self.error("expected string")

    def astring(self) -> bytes:
        c = self.peek()
        if c == 0x22 or c == 0x7B:
            return self.string()
        return self._match(_ASTRING, "astring")

    def nstring(self) -> bytes | None:
        if self.maybe_word(b"NIL"):
            return None
        return self.string()

    def text_astring(self) -> str:
        return self.utf8_text(self.astring())

    def utf8_text(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("invalid UTF-8") from None

    # ---------------------------------------------------------------- mailboxes

    def decode_mailbox(self, raw: bytes) -> str:
        """RFC 9051 §5.1.3: modified UTF-7 unless UTF8=ACCEPT is enabled (RFC 6855 §3)."""
        if self.utf8:
            name = self.utf8_text(raw)
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
                raise self.error("control character in mailbox name")
        else:
            try:
                name = mutf7.decode(raw)
            except mutf7.MUTF7Error as exc:
                # RFC 3501 §7.1.3: BAD is for protocol errors; a well-formed name
                # that is not valid modified UTF-7 (§5.1.3) gets NO.
                raise ParseError(f"Mailbox name is not valid modified UTF-7: {exc}",
                                 no=True, code="CANNOT") from None
        # RFC 9051 §5.1: INBOX is case-insensitive.
        return "INBOX" if name.upper() == "INBOX" else name

    def mailbox(self) -> str:
        return self.decode_mailbox(self.astring())

    def list_mailbox(self) -> str:
        c = self.peek()
        raw = self.string() if c == 0x22 or c == 0x7B else self._match(_LISTCHARS, "pattern")
        return self.decode_mailbox(raw)

    # ---------------------------------------------------------------- sets

    def seq_number(self) -> int | None:
        if self.maybe_char(b"*"):
            return None
        return self.nz_number()

    def sequence_set(self) -> SequenceSet:
        if self.maybe_char(b"$"):
            return SequenceSet(saved=True)  # RFC 5182 §2.1
        ranges: list[SeqRange] = []
        while True:
            a = self.seq_number()
            b = self.seq_number() if self.maybe_char(b":") else a
            ranges.append(SeqRange(a, b))
            if not self.maybe_char(b","):
                return SequenceSet(tuple(ranges))

    # ---------------------------------------------------------------- flags, dates

    def flag(self) -> str:
        if self.maybe_char(b"\\"):
            if self.maybe_char(b"*"):
                return "\\*"
            name = "\\" + self.atom()
            return SYSTEM_FLAGS.get(name.lower(), name)
        return self.atom()

    def flag_list(self) -> tuple[str, ...]:
        self.char(b"(")
        flags: list[str] = []
        if not self.maybe_char(b")"):
            while True:
                flags.append(self.flag())
                if self.maybe_char(b")"):
                    break
                self.sp()
        return tuple(flags)

    def date(self) -> datetime.date:
        """RFC 9051 §9 date: date-text or DQUOTE date-text DQUOTE (e.g. 1-Feb-2024)."""
        quoted = self.maybe_char(b'"')
        day = self._match(re.compile(rb"[0-9]{1,2}"), "day")
        self.char(b"-")
        mon = self.line[self.pos : self.pos + 3].upper().decode("latin-1")
        if mon not in MONTHS:
            raise self.error("bad month")
        self.pos += 3
        self.char(b"-")
        year = self._match(re.compile(rb"[0-9]{4}"), "year")
        if quoted:
            self.char(b'"')
        try:
            return datetime.date(int(year), MONTHS[mon], int(day))
        except ValueError:
            raise self.error("invalid date") from None

    _DATE_TIME = re.compile(
        rb'"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) '
        rb'([+-])([0-9]{2})([0-9]{2})"'
    )

    def date_time(self) -> datetime.datetime:
        """RFC 9051 §9 date-time: "dd-Mon-yyyy hh:mm:ss +zzzz" (day may be SP-padded)."""
        m = self._DATE_TIME.match(self.line, self.pos)
        if m is None:
            raise self.error("bad date-time")
        d, mon, y, hh, mm, ss, sign, zh, zm = m.groups()
        month = MONTHS.get(mon.upper().decode("ascii"))
        if month is None:
            raise self.error("bad month")
        try:
            offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
            tz = datetime.timezone(-offset if sign == b"-" else offset)
            value = datetime.datetime(int(y), month, int(d), int(hh), int(mm), int(ss), tzinfo=tz)
        except ValueError:
            raise self.error("invalid date-time") from None
        self.pos = m.end()
        return value

    # ---------------------------------------------------------------- lists

    def paren_list(self) -> list[str]:
        """``"(" [atom *(SP atom)] ")"`` returning upper-cased atoms."""
        self.char(b"(")
        out: list[str] = []
        if self.maybe_char(b")"):
            return out
        while True:
            out.append(self.keyword())
            if self.maybe_char(b")"):
                return out
            self.sp()

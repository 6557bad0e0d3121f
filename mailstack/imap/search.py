"""SEARCH keys (RFC 9051 §6.4.4, RFC 3501 §6.4.4) as a typed tree. No I/O.

Invariants:
- The tree is made of frozen dataclasses; the executor evaluates it by ``match`` on type.
- Shorthands are desugared at parse time so the executor sees few node types:
  FROM/TO/CC/BCC/SUBJECT → :class:`Header`; ANSWERED/UNSEEN/KEYWORD/... → :class:`Flag`;
  NEW → RECENT and UNSEEN; OLD → NOT RECENT; several keys in sequence → :class:`And`.
- Strings are decoded with the command's CHARSET (US-ASCII/UTF-8 by default); an
  unknown charset raises ParseError(no=True, code="BADCHARSET") (RFC 9051 §6.4.4).
- Recursion (parentheses, NOT, OR) is bounded by the lexer's max_depth.
"""

from __future__ import annotations

import codecs
import datetime
from collections.abc import Callable
from dataclasses import dataclass

from mailstack.imap.lexer import Lexer, ParseError
from mailstack.imap.sequence import SequenceSet

# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class SearchKey:
    """Base class of all search-key nodes."""


@dataclass(frozen=True)
class All(SearchKey):
    pass


@dataclass(frozen=True)
class Flag(SearchKey):
    """Message has (``present``) or lacks the flag; system flags are canonical."""

    flag: str
    present: bool = True


@dataclass(frozen=True)
class Header(SearchKey):
    """Header ``field`` contains ``value`` (case-insensitive substring, RFC 9051 §6.4.4).
    An empty value matches every message that has the field."""

    field: str
    value: str


@dataclass(frozen=True)
class Body(SearchKey):
    value: str


@dataclass(frozen=True)
class Text(SearchKey):
    value: str


@dataclass(frozen=True)
class Date(SearchKey):
    """``which`` is "internal" (BEFORE/ON/SINCE) or "sent" (SENTBEFORE/...);
    ``op`` is "before", "on" or "since". Dates disregard time and timezone."""

    which: str
    op: str
    date: datetime.date


@dataclass(frozen=True)
class Size(SearchKey):
    """``op`` is "larger" or "smaller" (RFC822.SIZE strictly greater / less)."""

    op: str
    size: int


@dataclass(frozen=True)
class Within(SearchKey):
    """RFC 5032 OLDER/YOUNGER: ``op`` "older" or "younger", interval in seconds."""

    op: str
    seconds: int


@dataclass(frozen=True)
class Sequence(SearchKey):
    """Message numbers (``uid`` False) or UIDs (``UID`` key) in the set."""

    set: SequenceSet
    uid: bool = False


@dataclass(frozen=True)
class ModSeq(SearchKey):
    """RFC 7162 §3.1.5: MODSEQ [entry-name entry-type] value (mod-sequence >= value)."""

    modseq: int
    entry_name: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True)
class Not(SearchKey):
    key: SearchKey


@dataclass(frozen=True)
class Or(SearchKey):
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True)
class And(SearchKey):
    keys: tuple[SearchKey, ...]


# --------------------------------------------------------------------------- parser

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "RECENT": ("\\Recent", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS = {"FROM": "From", "TO": "To", "CC": "Cc", "BCC": "Bcc", "SUBJECT": "Subject"}
_DATE_KEYS = {
    "BEFORE": ("internal", "before"),
    "ON": ("internal", "on"),
    "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"),
    "SENTON": ("sent", "on"),
    "SENTSINCE": ("sent", "since"),
}

SUPPORTED_CHARSETS = ("UTF-8", "US-ASCII")


class SearchParser:
    """Parses search keys from a lexer positioned at the first key."""

    def __init__(self, lx: Lexer, charset: str | None = None) -> None:
        self.lx = lx
        self.decode = _decoder(charset)

    def string(self) -> str:
        raw = self.lx.astring()
        try:
            return self.decode(raw)
        except (UnicodeDecodeError, ValueError, LookupError):
            raise self.lx.error("string not valid in the given charset") from None

    def program(self) -> SearchKey:
        """``search-key *(SP search-key)`` to end of command."""
        keys = [self.key()]
        while self.lx.maybe_sp():
            keys.append(self.key())
        return keys[0] if len(keys) == 1 else And(tuple(keys))

    def key(self) -> SearchKey:
        lx = self.lx
        c = lx.peek()
        if c == 0x28:  # "("
            lx.enter()
            lx.pos += 1
            keys = [self.key()]
            while not lx.maybe_char(b")"):
                lx.sp()
                keys.append(self.key())
            lx.leave()
            return keys[0] if len(keys) == 1 else And(tuple(keys))
        if c == 0x2A or c == 0x24 or 0x30 <= c <= 0x39:  # "*", "$", digit
            return Sequence(lx.sequence_set())
        word = lx.keyword()
        handler = KEYS.get(word)
        if handler is None:
            raise lx.error(f"unknown search key {word}")
        return handler(self, word)

    # handlers ------------------------------------------------------------

    def _flag(self, word: str) -> SearchKey:
        flag, present = _FLAG_KEYS[word]
        return Flag(flag, present)

    def _keyword(self, word: str) -> SearchKey:
        self.lx.sp()
        return Flag(self.lx.atom(), word == "KEYWORD")

    def _header_short(self, word: str) -> SearchKey:
        self.lx.sp()
        return Header(_HEADER_KEYS[word], self.string())

    def _header(self, word: str) -> SearchKey:
        self.lx.sp()
        name = self.lx.astring()
        self.lx.sp()
        return Header(self.lx.utf8_text(name), self.string())

    def _body(self, word: str) -> SearchKey:
        self.lx.sp()
        return Body(self.string()) if word == "BODY" else Text(self.string())

    def _date(self, word: str) -> SearchKey:
        self.lx.sp()
        which, op = _DATE_KEYS[word]
        return Date(which, op, self.lx.date())

    def _size(self, word: str) -> SearchKey:
        self.lx.sp()
        return Size(word.lower(), self.lx.number64())  # RFC 9051 §6.4.4: number64

    def _within(self, word: str) -> SearchKey:
        self.lx.sp()
        return Within(word.lower(), self.lx.nz_number())

    def _all(self, word: str) -> SearchKey:
        return All()

    def _new(self, word: str) -> SearchKey:
        # RFC 3501 §6.4.4: NEW is functionally equivalent to "(RECENT UNSEEN)".
        return And((Flag("\\Recent"), Flag("\\Seen", False)))

    def _old(self, word: str) -> SearchKey:
        return Flag("\\Recent", False)  # NOT RECENT

    def _not(self, word: str) -> SearchKey:
        self.lx.sp()
        self.lx.enter()
        key = self.key()
        self.lx.leave()
        return Not(key)

    def _or(self, word: str) -> SearchKey:
        self.lx.sp()
        self.lx.enter()
        left = self.key()
        self.lx.sp()
        right = self.key()
        self.lx.leave()
        return Or(left, right)

    def _uid(self, word: str) -> SearchKey:
        self.lx.sp()
        return Sequence(self.lx.sequence_set(), uid=True)

    def _modseq(self, word: str) -> SearchKey:
        # RFC 7162 §3.1.5: "MODSEQ" [SP entry-name SP entry-type-req] SP mod-sequence-valzer
        lx = self.lx
        lx.sp()
        if lx.peek() == 0x22:
            entry = lx.utf8_text(lx.quoted())
            lx.sp()
            etype = lx.keyword()
            if etype not in ("PRIV", "SHARED", "ALL"):
                raise lx.error("bad MODSEQ entry type")
            lx.sp()
            return ModSeq(lx.number64(), entry, etype.lower())
        return ModSeq(lx.number64())


KEYS: dict[str, Callable[[SearchParser, str], SearchKey]] = {
    **{k: SearchParser._flag for k in _FLAG_KEYS},
    **{k: SearchParser._header_short for k in _HEADER_KEYS},
    **{k: SearchParser._date for k in _DATE_KEYS},
    "ALL": SearchParser._all,
    "NEW": SearchParser._new,
    "OLD": SearchParser._old,
    "KEYWORD": SearchParser._keyword,
    "UNKEYWORD": SearchParser._keyword,
    "HEADER": SearchParser._header,
    "BODY": SearchParser._body,
    "TEXT": SearchParser._body,
    "LARGER": SearchParser._size,
    "SMALLER": SearchParser._size,
    "OLDER": SearchParser._within,
    "YOUNGER": SearchParser._within,
    "NOT": SearchParser._not,
    "OR": SearchParser._or,
    "UID": SearchParser._uid,
    "MODSEQ": SearchParser._modseq,
}


def _decoder(charset: str | None) -> Callable[[bytes], str]:
    if charset is None or charset.upper() in SUPPORTED_CHARSETS:
        # RFC 9051 §6.4.4: US-ASCII and UTF-8 MUST be supported; ASCII ⊂ UTF-8.
        return lambda raw: raw.decode("utf-8")
    name: str | None
    try:
        name = codecs.lookup(charset).name
        b"a".decode(name)  # bytes-to-bytes codecs (base64, zlib...) fail here
    except (LookupError, ValueError, TypeError):
        name = None
    if name is None or "utf-7" in name or "escape" in name or "idna" in name:
        raise ParseError(
            f"unsupported charset {charset}",
            code="BADCHARSET (" + " ".join(SUPPORTED_CHARSETS) + ")",
            no=True,
        )
    codec = name
    return lambda raw: raw.decode(codec)


def modseq_required(key: SearchKey) -> bool:
    """True if the tree uses MODSEQ (RFC 7162 §3.1.5: the reply then carries (MODSEQ n))."""
    match key:
        case ModSeq():
            return True
        case Not(key=k):
            return modseq_required(k)
        case Or(left=a, right=b):
            return modseq_required(a) or modseq_required(b)
        case And(keys=ks):
            return any(modseq_required(k) for k in ks)
    return False

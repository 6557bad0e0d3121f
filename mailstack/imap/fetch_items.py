"""FETCH attributes (RFC 9051 §6.4.5, RFC 3501 §6.4.5, RFC 3516 BINARY). No I/O.

Invariants:
- Macros ALL / FAST / FULL are expanded at parse time (RFC 9051 §6.4.5).
- Every attribute knows the name it is echoed under in the FETCH response
  (:meth:`FetchAtt.response_name`): a partial fetch echoes only its origin octet
  ``BODY[]<0>`` and a ``.PEEK`` is never echoed (RFC 9051 §7.5.2).
- ``marks_seen`` tells the executor which attributes set ``\\Seen`` (BODY[...], BINARY[...],
  RFC822, RFC822.TEXT; never the .PEEK forms or RFC822.HEADER).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailstack.imap.lexer import Lexer


@dataclass(frozen=True)
class FetchAtt:
    """Base class of fetch attributes."""

    def response_name(self) -> str:
        raise NotImplementedError

    @property
    def marks_seen(self) -> bool:
        return False


# Simple attributes: the response carries the name as requested.
SIMPLE = frozenset(
    {
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "UID",
        "ENVELOPE",
        "BODY",  # non-extensible BODYSTRUCTURE
        "BODYSTRUCTURE",
        "RFC822",  # ≡ BODY[] (RFC 3501 §6.4.5), sets \Seen
        "RFC822.HEADER",  # ≡ BODY.PEEK[HEADER]
        "RFC822.TEXT",  # ≡ BODY[TEXT], sets \Seen
        "MODSEQ",  # RFC 7162 §3.1.4
        "SAVEDATE",  # RFC 8514
        "EMAILID",  # RFC 8474
        "THREADID",
    }
)

MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


@dataclass(frozen=True)
class Simple(FetchAtt):
    name: str

    def response_name(self) -> str:
        return self.name

    @property
    def marks_seen(self) -> bool:
        return self.name in ("RFC822", "RFC822.TEXT")


def _partial_suffix(partial: tuple[int, int] | None) -> str:
    return "" if partial is None else f"<{partial[0]}>"


def _quote_field(name: str) -> str:
    if name and re.fullmatch(r'[^\x00-\x20\x7f(){%*"\\]+', name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class BodySection(FetchAtt):
    """BODY[section]<partial> / BODY.PEEK[...].

    ``part`` is the part path (``(1, 2)`` for "1.2", empty for the whole message);
    ``text`` is None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME";
    ``fields`` are the header names for HEADER.FIELDS(.NOT); ``partial`` is
    ``(origin, length)``.
    """

    peek: bool = False
    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None

    def section_spec(self) -> str:
        spec = ".".join(str(p) for p in self.part)
        if self.text is not None:
            spec = f"{spec}.{self.text}" if spec else self.text
            if self.fields:
                spec += " (" + " ".join(_quote_field(f) for f in self.fields) + ")"
        return spec

    def response_name(self) -> str:
        return f"BODY[{self.section_spec()}]{_partial_suffix(self.partial)}"

    @property
    def marks_seen(self) -> bool:
        return not self.peek


@dataclass(frozen=True)
class Binary(FetchAtt):
    """BINARY[part]<partial> / BINARY.PEEK / BINARY.SIZE[part] (RFC 3516 §4.2, RFC 9051)."""

    peek: bool = False
    part: tuple[int, ...] = ()
    partial: tuple[int, int] | None = None
    size_only: bool = False

    def response_name(self) -> str:
        spec = ".".join(str(p) for p in self.part)
        if self.size_only:
            return f"BINARY.SIZE[{spec}]"
        return f"BINARY[{spec}]{_partial_suffix(self.partial)}"

    @property
    def marks_seen(self) -> bool:
        return not (self.peek or self.size_only)


_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TEXT = re.compile(rb"[A-Za-z.]+")


def parse_fetch_atts(lx: Lexer) -> tuple[FetchAtt, ...]:
    """``"ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")"``."""
    if lx.maybe_char(b"("):
        atts: list[FetchAtt] = []
        while True:
            atts.append(parse_fetch_att(lx, allow_macro=False))
            if lx.maybe_char(b")"):
                return tuple(atts)
            lx.sp()
    return expand((parse_fetch_att(lx, allow_macro=True),))


def _macro(name: str) -> tuple[FetchAtt, ...]:
    return tuple(Simple(n) for n in MACROS[name])


def parse_fetch_att(lx: Lexer, allow_macro: bool) -> FetchAtt:
    m = _NAME.match(lx.line, lx.pos)
    if m is None:
        raise lx.error("expected fetch attribute")
    name = m.group().upper().decode("ascii")
    lx.pos = m.end()
    if name in MACROS:
        if not allow_macro:
            # RFC 9051 §6.4.5: macros cannot be combined with other items.
            raise lx.error("fetch macro inside a list")
        return _MacroMarker(name)
    if lx.peek() != 0x5B:  # "["
        if name not in SIMPLE:
            raise lx.error(f"unknown fetch attribute {name}")
        return Simple(name)
    if name in ("BODY", "BODY.PEEK"):
        part, text, fields = _section(lx)
        return BodySection(
            peek=name == "BODY.PEEK",
            part=part,
            text=text,
            fields=fields,
            partial=_partial(lx),
        )
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        lx.char(b"[")
        part = _part(lx) if lx.peek() != 0x5D else ()
        lx.char(b"]")
        if name == "BINARY.SIZE":
            return Binary(part=part, size_only=True)
        return Binary(peek=name == "BINARY.PEEK", part=part, partial=_partial(lx))
    raise lx.error(f"unknown fetch attribute {name}")


@dataclass(frozen=True)
class _MacroMarker(FetchAtt):
    name: str


def expand(atts: tuple[FetchAtt, ...]) -> tuple[FetchAtt, ...]:
    out: list[FetchAtt] = []
    for a in atts:
        out.extend(_macro(a.name) if isinstance(a, _MacroMarker) else (a,))
    return tuple(out)


def _part(lx: Lexer) -> tuple[int, ...]:
    parts = [lx.nz_number()]
    while lx.peek() == 0x2E and 0x30 <= _at(lx, 1) <= 0x39:  # "." digit
        lx.pos += 1
        parts.append(lx.nz_number())
    return tuple(parts)


def _at(lx: Lexer, offset: int) -> int:
    i = lx.pos + offset
    return lx.line[i] if i < len(lx.line) else -1


def _section(lx: Lexer) -> tuple[tuple[int, ...], str | None, tuple[str, ...]]:
    """RFC 9051 §9 section = "[" [section-spec] "]"."""
    lx.char(b"[")
    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()
    if lx.peek() != 0x5D:
        if 0x30 <= lx.peek() <= 0x39:
            part = _part(lx)
            if lx.maybe_char(b"."):
                text = _section_text(lx, allow_mime=True)
        else:
            text = _section_text(lx, allow_mime=False)
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            lx.sp()
            fields = _header_list(lx)
    lx.char(b"]")
    return part, text, fields


def _section_text(lx: Lexer, allow_mime: bool) -> str:
    m = _SECTION_TEXT.match(lx.line, lx.pos)
    if m is None:
        raise lx.error("expected section text")
    text = m.group().upper().decode("ascii")
    allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
    if allow_mime:
        allowed.add("MIME")  # RFC 9051 §6.4.5: MIME only after a part number
    if text not in allowed:
        raise lx.error(f"bad section text {text}")
    lx.pos = m.end()
    return text


def _header_list(lx: Lexer) -> tuple[str, ...]:
    """header-list = "(" header-fld-name *(SP header-fld-name) ")" (RFC 9051 §9)."""
    lx.char(b"(")
    names: list[str] = []
    while True:
        raw = lx.astring()
        if not raw or any(c <= 0x20 or c >= 0x7F or c == 0x3A for c in raw):
            # RFC 5322 §3.6.8: field names are printable ASCII except ":".
            raise lx.error("bad header field name")
        names.append(raw.decode("ascii"))
        if lx.maybe_char(b")"):
            return tuple(names)
        lx.sp()


def _partial(lx: Lexer) -> tuple[int, int] | None:
    """partial = "<" number "." nz-number ">" (RFC 3501 §9)."""
    if not lx.maybe_char(b"<"):
        return None
    origin = lx.number()
    lx.char(b".")
    length = lx.nz_number()
    lx.char(b">")
    return origin, length

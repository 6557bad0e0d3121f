"""Message structure: envelope fields, the MIME part tree and section byte ranges.

Protocol-neutral (IMAP uses it most, SMTP checks the nesting depth; the store caches
:func:`to_json`). No I/O. The IMAP wire forms (ENVELOPE, BODYSTRUCTURE) are rendered by
``mailstack.imap.structure``.

Invariants:
- Parsing works on the original bytes and records byte ranges, so every BODY[section]
  is a slice of the stored message; nothing is re-serialised.
- Parsing is linear per nesting level and never recurses deeper than ``max_depth``
  (RFC 2046 sets no limit; docs/behaviour.md §12 "header and MIME bombs"): past ``max_depth``
  levels or ``max_parts`` parts the remaining content is an opaque leaf / ignored.
  Header fields beyond ``max_header_lines`` lines per header block are ignored.
- Header values are kept raw (RFC 2047 encoded-words untouched), unfolded, as ``str``
  decoded UTF-8 with ``surrogateescape`` so arbitrary octets round-trip to bytes.
- Ranges: a part's header is ``[header_start, body_start)`` including the blank line,
  its body ``[body_start, body_end)`` (RFC 3501 §6.4.5 BODY[n.MIME] / BODY[n]).
"""

from __future__ import annotations

import binascii
import functools
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Address",
    "BodyPart",
    "Envelope",
    "Message",
    "binary_section",
    "decode_qp",
    "decode_transfer_encoding",
    "exceeds_depth",
    "find_part",
    "first_fields",
    "from_json",
    "header_fields",
    "parse_message",
    "section_bytes",
    "to_json",
]

MAX_DEPTH = 50
MAX_PARTS = 10000
MAX_HEADER_LINES = 10000


@dataclass(frozen=True)
class Address:
    """RFC 3501 §7.4.2 address: group start is (NIL NIL name NIL), group end all NIL."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass(frozen=True)
class Envelope:
    date: str | None = None
    subject: str | None = None
    from_: tuple[Address, ...] | None = None
    sender: tuple[Address, ...] | None = None
    reply_to: tuple[Address, ...] | None = None
    to: tuple[Address, ...] | None = None
    cc: tuple[Address, ...] | None = None
    bcc: tuple[Address, ...] | None = None
    in_reply_to: str | None = None
    message_id: str | None = None


@dataclass(frozen=True)
class BodyPart:
    type: str  # lower-case, e.g. "text"
    subtype: str  # lower-case, e.g. "plain"
    params: tuple[tuple[str, str], ...] = ()
    id: str | None = None
    description: str | None = None
    encoding: str = "7BIT"
    md5: str | None = None
    disposition: str | None = None
    disposition_params: tuple[tuple[str, str], ...] = ()
    language: tuple[str, ...] | None = None
    location: str | None = None
    header_start: int = 0
    body_start: int = 0
    body_end: int = 0
    lines: int | None = None  # text/* and message/rfc822 only
    children: tuple[BodyPart, ...] = ()
    message: Message | None = None  # message/rfc822 (and message/global) contents

    @property
    def size(self) -> int:
        return self.body_end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.type == "multipart"


@dataclass(frozen=True)
class Message:
    envelope: Envelope
    root: BodyPart
    size: int = 0
    truncated: bool = field(default=False, compare=False)  # a cap was hit somewhere


# --------------------------------------------------------------------------- headers

_BLANK = re.compile(rb"\n\r?\n")


def _split_header(data: bytes, start: int, end: int) -> int:
    """Return body_start: the header block [start, body_start) ends with the blank line."""
    if data.startswith(b"\r\n", start) and start + 2 <= end:
        return start + 2
    if data.startswith(b"\n", start) and start + 1 <= end:
        return start + 1
    m = _BLANK.search(data, start, end)
    return end if m is None else m.end()


def _fields(data: bytes, start: int, end: int, max_lines: int) -> list[tuple[str, str]]:
    """Unfolded header fields (lower-case name, raw value) of the block [start, end)."""
    out: list[tuple[str, str]] = []
    name: str | None = None
    value: list[bytes] = []
    pos = start
    count = 0
    while pos < end and count < max_lines:
        nl = data.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        line = data[pos:line_end].rstrip(b"\r\n")
        pos = line_end
        count += 1
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if name is not None:
                value.append(line)
            continue
        if name is not None:
            out.append((name, _text(b"".join(value).strip())))
        colon = line.find(b":")
        if colon <= 0:
            name = None  # not a header field (RFC 5322 §2.2); skip it
            continue
        name = line[:colon].strip().decode("latin-1").lower()
        value = [line[colon + 1 :]]
    if name is not None:
        out.append((name, _text(b"".join(value).strip())))
    return out


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def first_fields(msg: bytes, max_lines: int = MAX_HEADER_LINES) -> dict[str, str]:
    """The first value of each header field of a message (or of its header block),
    by lower-case name, unfolded and raw (encoded words untouched)."""
    out: dict[str, str] = {}
    for name, value in _fields(msg, 0, _split_header(msg, 0, len(msg)), max_lines):
        out.setdefault(name, value)
    return out


def header_fields(msg: bytes, names: tuple[str, ...] | list[str], negate: bool = False) -> bytes:
    """BODY[HEADER.FIELDS (names)] / HEADER.FIELDS.NOT of a message or header block.

    Returns the matching fields byte-for-byte (with their folding) followed by the
    blank line (RFC 3501 §6.4.5). Names compare case-insensitively. HEADER.FIELDS of
    plain names is one regular-expression scan (SEARCH HEADER and FETCH of a few fields
    on every message: the line-by-line walk below cost ~15 us a message); the same
    bytes as the walk, which ``tests/test_mime.py`` checks on random headers.
    """
    pattern = None if negate else _fields_pattern(frozenset(n.lower() for n in names))
    if pattern is not None:
        hend = _split_header(msg, 0, len(msg))
        out = [m.group() for m in pattern.finditer(msg, 0, hend)]
        if out and not out[-1].endswith(b"\n"):
            out[-1] += b"\r\n"
        out.append(b"\r\n")
        return b"".join(out)
    return header_fields_walk(msg, names, negate)


@functools.lru_cache(maxsize=256)
def _fields_pattern(names: frozenset[str]) -> re.Pattern[bytes] | None:
    """A field line of one of ``names`` with its continuation lines; None for a name a
    pattern cannot stand for exactly (non-ASCII, empty, white space or colon in it)."""
    if not names or any(not n or not n.isascii() or n != n.strip() or ":" in n
                        or "\n" in n or "\r" in n for n in names):
        return None
    alternatives = b"|".join(re.escape(n.encode()) for n in sorted(names))
    # before the colon: what str.strip() takes off a latin-1 name, as the walk does
    return re.compile(rb"^(?:" + alternatives + rb")[ \t\r\x0b\x0c\x1c-\x1f\x85\xa0]*:"
                      rb"[^\n]*\n?(?:[ \t][^\n]*\n?)*", re.IGNORECASE | re.MULTILINE)


def header_fields_walk(msg: bytes, names: tuple[str, ...] | list[str] | frozenset[str],
                       negate: bool = False) -> bytes:
    """``header_fields`` line by line (HEADER.FIELDS.NOT, and names no pattern fits)."""
    wanted = {n.lower() for n in names}
    hend = _split_header(msg, 0, len(msg))
    out: list[bytes] = []
    keep = False
    pos = 0
    while pos < hend:
        nl = msg.find(b"\n", pos, hend)
        line_end = hend if nl < 0 else nl + 1
        line = msg[pos:line_end]
        pos = line_end
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] not in (b" ", b"\t"):
            colon = line.find(b":")
            fname = line[:colon].strip().decode("latin-1").lower() if colon > 0 else None
            keep = fname is not None and ((fname in wanted) != negate)
        if keep:
            out.append(line if line.endswith(b"\n") else line + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


# --------------------------------------------------------------------------- values

_TSPECIALS = set('()<>@,;:\\"/[]?=')


def _strip_comments(value: str) -> str:
    """Remove RFC 5322 comments outside quoted strings (linear, nesting counted)."""
    if "(" not in value:
        return value
    out: list[str] = []
    depth = 0
    quoted = False
    escape = False
    for ch in value:
        if escape:
            escape = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escape = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            out.append(ch)
            if ch == '"':
                quoted = False
            continue
        if ch == '"' and depth == 0:
            quoted = True
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _split_params(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``token; a=b; c="d"`` → ("token", (("a","b"), ("c","d"))) (RFC 2045 §5.1)."""
    value = _strip_comments(value)
    pieces: list[str] = []
    cur: list[str] = []
    quoted = False
    escape = False
    for ch in value:
        if escape:
            cur.append(ch)
            escape = False
        elif quoted and ch == "\\":
            escape = True
        elif ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch == ";" and not quoted:
            pieces.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    pieces.append("".join(cur))
    params: list[tuple[str, str]] = []
    for piece in pieces[1:]:
        name, eq, val = piece.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == '"' and val[-1] == '"':
            val = val[1:-1]
        params.append((name, val))
    return pieces[0].strip(), tuple(params)


def _param(params: tuple[tuple[str, str], ...], name: str) -> str | None:
    for k, v in params:
        if k == name:
            return v
    return None


# --------------------------------------------------------------------------- addresses

_ADDR_TOKEN = re.compile(
    r"\((?:[^()\\]|\\.)*\)"  # comment (non-nested; nested ones are stripped first)
    r'|"(?:[^"\\]|\\.)*"?'  # quoted string (unterminated runs to the end)
    r"|\[[^\]]*\]?"  # domain literal
    r"|[<>@,;:]"
    r'|[^\s"<>@,;:()\[\]]+'
    r"|\s+"
)


def _unquote(tok: str) -> str:
    if tok.startswith('"'):
        body = tok[1:-1] if len(tok) >= 2 and tok.endswith('"') else tok[1:]
        return re.sub(r"\\(.)", r"\1", body)
    return tok


def _mk_address(tokens: list[str]) -> Address | None:
    comments = [x[1:-1].strip() for x in tokens if x.startswith("(")]
    comment = comments[0] if comments else None
    words = [x for x in tokens if not x.isspace() and not x.startswith("(")]
    if not words:
        return None
    if "<" in words:
        lt = words.index("<")
        phrase = " ".join(_unquote(w) for w in words[:lt]) or None
        inner = words[lt + 1 :]
        if ">" in inner:
            inner = inner[: inner.index(">")]
        adl = None
        if ":" in inner:  # obsolete source route: <@a,@b:user@host> (RFC 5322 §4.4)
            colon = inner.index(":")
            adl = "".join(inner[:colon]) or None
            inner = inner[colon + 1 :]
        return _addr_spec(phrase, adl, inner)
    return _addr_spec(comment, None, words)


def _addr_spec(name: str | None, adl: str | None, words: list[str]) -> Address:
    if "@" in words:
        at = len(words) - 1 - words[::-1].index("@")
        local, host = "".join(words[:at]), "".join(words[at + 1 :])
    else:
        local, host = "".join(words), ""
    # Dovecot's convention for broken addresses; NIL host would mean "group" here.
    return Address(name, adl, local or "MISSING_MAILBOX", host or "MISSING_DOMAIN")


def parse_addresses(value: str) -> tuple[Address, ...]:
    """Parse an address-list header value into RFC 3501 §7.4.2 address structures."""
    if re.search(r"\([^()]*\(", value):
        value = _strip_comments(value)  # nested comments: drop them all
    out: list[Address] = []
    cur: list[str] = []
    angle = 0
    in_group = False

    def flush() -> None:
        addr = _mk_address(cur)
        if addr is not None:
            out.append(addr)
        cur.clear()

    for m in _ADDR_TOKEN.finditer(value):
        tok = m.group()
        if tok == "<":
            angle += 1
        elif tok == ">":
            angle = max(0, angle - 1)
        elif angle == 0 and tok == ":" and not in_group and "@" not in cur:
            name = " ".join(_unquote(w) for w in cur if not w.isspace())
            out.append(Address(None, None, name, None))  # group start
            cur.clear()
            in_group = True
            continue
        elif angle == 0 and tok == ";" and in_group:
            flush()
            out.append(Address(None, None, None, None))  # group end
            in_group = False
            continue
        elif angle == 0 and tok == ",":
            flush()
            continue
        cur.append(tok)
    flush()
    if in_group:
        out.append(Address(None, None, None, None))
    return tuple(out)


# --------------------------------------------------------------------------- parsing


class _Budget:
    def __init__(self, max_parts: int, max_header_lines: int, max_depth: int) -> None:
        self.parts = max_parts
        self.header_lines = max_header_lines
        self.max_depth = max_depth
        self.truncated = False
        self.too_deep = False  # the nesting cap (not the part/line caps) was hit


def parse_message(
    data: bytes,
    *,
    max_depth: int = MAX_DEPTH,
    max_parts: int = MAX_PARTS,
    max_header_lines: int = MAX_HEADER_LINES,
) -> Message:
    """Parse a whole message (RFC 5322 + MIME) into envelope and part tree."""
    budget = _Budget(max_parts, max_header_lines, max_depth)
    msg = _message(data, 0, len(data), 0, budget)
    if budget.truncated:
        msg = Message(msg.envelope, msg.root, msg.size, truncated=True)
    return msg


def exceeds_depth(data: bytes, max_depth: int) -> bool:
    """True if MIME parts (multipart or message/rfc822) nest deeper than ``max_depth``
    (SMTP refuses such messages: docs/behaviour.md §12 "MIME bombs"). Linear in the message size."""
    budget = _Budget(MAX_PARTS, MAX_HEADER_LINES, max_depth)
    _message(data, 0, len(data), 0, budget)
    return budget.too_deep


_ENVELOPE_FIELDS = (
    "date",
    "subject",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "in-reply-to",
    "message-id",
)


def _message(data: bytes, start: int, end: int, depth: int, budget: _Budget) -> Message:
    body_start = _split_header(data, start, end)
    fields = _fields(data, start, body_start, budget.header_lines)
    first: dict[str, str] = {}
    for name, value in fields:
        first.setdefault(name, value)

    def addrs(name: str) -> tuple[Address, ...] | None:
        v = first.get(name)
        if v is None or not v.strip():
            return None
        return parse_addresses(v) or None

    from_ = addrs("from")
    env = Envelope(
        date=first.get("date"),
        subject=first.get("subject"),
        from_=from_,
        # RFC 3501 §7.4.2: absent or empty Sender / Reply-To default to From.
        sender=addrs("sender") or from_,
        reply_to=addrs("reply-to") or from_,
        to=addrs("to"),
        cc=addrs("cc"),
        bcc=addrs("bcc"),
        in_reply_to=first.get("in-reply-to"),
        message_id=first.get("message-id"),
    )
    root = _part(data, start, body_start, end, first, ("text", "plain"), depth, budget)
    return Message(env, root, end - start)


def _part(
    data: bytes,
    start: int,
    body_start: int,
    end: int,
    fields: dict[str, str],
    default: tuple[str, str],
    depth: int,
    budget: _Budget,
) -> BodyPart:
    budget.parts -= 1
    ctype, params = _split_params(fields.get("content-type", ""))
    mtype, slash, sub = ctype.lower().partition("/")
    if not slash or not mtype.strip() or not sub.strip():
        # RFC 2045 §5.2: missing or invalid Content-Type means text/plain; us-ascii.
        mtype, sub = default
        params = (("charset", "us-ascii"),) if default[0] == "text" else ()
    mtype, sub = mtype.strip(), sub.strip()
    encoding = fields.get("content-transfer-encoding", "7BIT").strip().upper() or "7BIT"
    disp_raw = fields.get("content-disposition")
    disposition = None
    disp_params: tuple[tuple[str, str], ...] = ()
    if disp_raw:
        disposition, disp_params = _split_params(disp_raw)
        disposition = disposition or None
    lang_raw = fields.get("content-language")
    language = (
        tuple(x.strip() for x in _strip_comments(lang_raw).split(",") if x.strip()) or None
        if lang_raw
        else None
    )
    common: dict[str, Any] = dict(
        params=params,
        id=fields.get("content-id"),
        description=fields.get("content-description"),
        encoding=encoding,
        md5=fields.get("content-md5"),
        disposition=disposition,
        disposition_params=disp_params,
        language=language,
        location=fields.get("content-location"),
        header_start=start,
        body_start=body_start,
        body_end=end,
    )
    deep = depth >= budget.max_depth or budget.parts <= 0
    if mtype == "multipart":
        boundary = _param(params, "boundary")
        if boundary and not deep:
            child_default = ("message", "rfc822") if sub == "digest" else ("text", "plain")
            children = _children(data, body_start, end, boundary, child_default, depth, budget)
            return BodyPart("multipart", sub, children=children, **common)
        if deep:
            budget.truncated = True
            budget.too_deep |= boundary is not None and depth >= budget.max_depth
        # No boundary, or too deep: an opaque leaf (RFC 2046 §5.1.1 needs a boundary).
        return BodyPart("application", "octet-stream", **common)
    lines = None
    message = None
    if mtype == "text":
        lines = _count_lines(data, body_start, end)
    elif mtype == "message" and sub in ("rfc822", "global"):
        lines = _count_lines(data, body_start, end)
        if encoding in ("7BIT", "8BIT", "BINARY") and not deep:
            message = _message(data, body_start, end, depth + 1, budget)
        elif deep:
            budget.truncated = True
            budget.too_deep |= depth >= budget.max_depth
    return BodyPart(mtype, sub, lines=lines, message=message, **common)


def _count_lines(data: bytes, start: int, end: int) -> int:
    n = data.count(b"\n", start, end)
    if end > start and data[end - 1] != 0x0A:
        n += 1
    return n


def _children(
    data: bytes,
    start: int,
    end: int,
    boundary: str,
    default: tuple[str, str],
    depth: int,
    budget: _Budget,
) -> tuple[BodyPart, ...]:
    """Split a multipart body at its delimiter lines (RFC 2046 §5.1.1)."""
    delim = b"--" + _bytes(boundary)
    spans: list[tuple[int, int]] = []  # (part start, part end)
    part_start: int | None = None
    pos = start
    while True:
        i = data.find(delim, pos, end)
        if i < 0:
            break
        if i != start and data[i - 1] != 0x0A:
            pos = i + 1
            continue
        j = i + len(delim)
        close = data.startswith(b"--", j) and j + 2 <= end
        k = j + 2 if close else j
        nl = data.find(b"\n", k, end)
        line_end = end if nl < 0 else nl + 1
        if data[k:line_end].strip(b" \t\r\n"):
            pos = i + 1  # "--boundaryX": a different boundary, not ours
            continue
        if part_start is not None:
            # The CRLF before the delimiter belongs to the delimiter (RFC 2046 §5.1.1).
            pe = i
            if pe > start and data[pe - 1] == 0x0A:
                pe -= 1
                if pe > start and data[pe - 1] == 0x0D:
                    pe -= 1
            spans.append((part_start, max(pe, part_start)))
            if len(spans) >= budget.parts:
                budget.truncated = True
                part_start = None
                break
        if close:
            part_start = None
            break
        part_start = line_end
        pos = line_end
    if part_start is not None:
        spans.append((part_start, end))  # no close delimiter: the part runs to the end
    children: list[BodyPart] = []
    for ps, pe in spans:
        if budget.parts <= 0:
            budget.truncated = True
            break
        bs = _split_header(data, ps, pe)
        fields: dict[str, str] = {}
        for name, value in _fields(data, ps, bs, budget.header_lines):
            fields.setdefault(name, value)
        children.append(_part(data, ps, bs, pe, fields, default, depth + 1, budget))
    if not children:
        # IMAP needs at least one part in a multipart (RFC 9051 §9 body-type-mpart).
        children.append(
            BodyPart(
                "text",
                "plain",
                (("charset", "us-ascii"),),
                header_start=end,
                body_start=end,
                body_end=end,
                lines=0,
            )
        )
    return tuple(children)


# --------------------------------------------------------------------------- sections


def find_part(msg: Message, path: tuple[int, ...] | list[int]) -> BodyPart | None:
    """Resolve an IMAP part specifier like (1, 2, 3) (RFC 3501 §6.4.5).

    A non-multipart message has only part 1 (itself); the parts of a message/rfc822
    part are those of the encapsulated message.
    """
    cur = msg.root
    message_level = True
    for n in path:
        if not message_level and not cur.is_multipart:
            if cur.message is None:
                return None
            cur = cur.message.root
            message_level = True
        if cur.is_multipart:
            if not 1 <= n <= len(cur.children):
                return None
            cur = cur.children[n - 1]
        elif n != 1:
            return None
        message_level = False
    return cur


def section_bytes(
    data: bytes,
    msg: Message,
    path: tuple[int, ...] = (),
    text: str | None = None,
    fields: tuple[str, ...] = (),
) -> bytes | None:
    """Bytes of BODY[path.text] before any <partial> (RFC 9051 §6.4.5).

    ``text`` is None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME".
    Returns None when the section does not exist (the server then returns NIL or "").
    """
    if not path:
        target: Message | None = msg
        part = msg.root
    else:
        found = find_part(msg, path)
        if found is None:
            return None
        part = found
        target = part.message
    if text is None:
        if not path:
            return data[msg.root.header_start : msg.root.body_end]
        return data[part.body_start : part.body_end]
    if text == "MIME":
        return data[part.header_start : part.body_start] if path else None
    if target is None:
        return None  # HEADER/TEXT only apply to a message/rfc822 part (RFC 3501 §6.4.5)
    root = target.root
    if text == "TEXT":
        return data[root.body_start : root.body_end]
    header = data[root.header_start : root.body_start]
    if text == "HEADER":
        return header
    if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return header_fields(header, fields, negate=text == "HEADER.FIELDS.NOT")
    return None


def decode_transfer_encoding(body: bytes, encoding: str | None) -> bytes | None:
    """Undo Content-Transfer-Encoding for BINARY[] (RFC 3516 §4.2).

    Returns None for an unknown encoding (the server answers NO [UNKNOWN-CTE]).
    """
    enc = (encoding or "7BIT").strip().upper()
    if enc in ("7BIT", "8BIT", "BINARY"):
        return body
    if enc == "BASE64":
        try:
            return binascii.a2b_base64(body)  # non-strict: skips line breaks and junk
        except binascii.Error:
            # Truncated input: decode the complete quads only.
            clean = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
            clean = clean[: len(clean) - len(clean) % 4]
            return binascii.a2b_base64(clean) if clean else b""
    if enc == "QUOTED-PRINTABLE":
        return decode_qp(body)
    return None


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_qp(body: bytes) -> bytes:
    """Quoted-printable per RFC 2045 §6.7 (``binascii.a2b_qp`` gets rules 3 and 5 wrong):
    trailing white space on a line is removed, "=" followed by optional white space
    and the line end is a soft line break; other line ends become CRLF; "=" not
    followed by two hex digits stays as it is. Linear in the input."""
    lines = body.split(b"\n")
    out: list[bytes] = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        line = line.rstrip(b" \t\r")
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        out.append(_QP_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), line))
        if not soft and i != last:
            out.append(b"\r\n")
    return b"".join(out)


def binary_section(data: bytes, msg: Message, path: tuple[int, ...] = ()) -> bytes | None:
    """Decoded BINARY[path] content; None if the part is missing or its CTE unknown."""
    if not path:
        return data[msg.root.header_start : msg.root.body_end]
    part = find_part(msg, path)
    if part is None:
        return None
    body = data[part.body_start : part.body_end]
    if part.is_multipart or part.message is not None:
        return body
    return decode_transfer_encoding(body, part.encoding)


# --------------------------------------------------------------------------- JSON

_ENV_ADDR_FIELDS = ("from_", "sender", "reply_to", "to", "cc", "bcc")
_PART_SCALARS = (
    "type",
    "subtype",
    "id",
    "description",
    "encoding",
    "md5",
    "disposition",
    "location",
    "header_start",
    "body_start",
    "body_end",
    "lines",
)


def to_json(msg: Message) -> dict[str, Any]:
    """JSON-serialisable form (``json.dumps`` keeps surrogate escapes as \\udcXX)."""
    env = msg.envelope
    e: dict[str, Any] = {
        "date": env.date,
        "subject": env.subject,
        "in_reply_to": env.in_reply_to,
        "message_id": env.message_id,
    }
    for name in _ENV_ADDR_FIELDS:
        addrs = getattr(env, name)
        e[name] = None if addrs is None else [[a.name, a.adl, a.mailbox, a.host] for a in addrs]
    return {
        "v": 1,
        "size": msg.size,
        "truncated": msg.truncated,
        "envelope": e,
        "root": _part_json(msg.root),
    }


def _part_json(part: BodyPart) -> dict[str, Any]:
    d: dict[str, Any] = {k: getattr(part, k) for k in _PART_SCALARS}
    d["params"] = [list(p) for p in part.params]
    d["disposition_params"] = [list(p) for p in part.disposition_params]
    d["language"] = None if part.language is None else list(part.language)
    if part.children:
        d["children"] = [_part_json(c) for c in part.children]
    if part.message is not None:
        d["message"] = to_json(part.message)
    return d


def from_json(obj: dict[str, Any]) -> Message:
    e = obj["envelope"]
    addrs: dict[str, tuple[Address, ...] | None] = {}
    for name in _ENV_ADDR_FIELDS:
        v = e.get(name)
        addrs[name] = None if v is None else tuple(Address(*a) for a in v)
    env = Envelope(
        date=e.get("date"),
        subject=e.get("subject"),
        in_reply_to=e.get("in_reply_to"),
        message_id=e.get("message_id"),
        **addrs,
    )
    return Message(
        env,
        _part_from_json(obj["root"]),
        obj.get("size", 0),
        truncated=bool(obj.get("truncated", False)),
    )


def _part_from_json(d: dict[str, Any]) -> BodyPart:
    kw: dict[str, Any] = {k: d.get(k) for k in _PART_SCALARS}
    kw["params"] = tuple((k, v) for k, v in d.get("params", []))
    kw["disposition_params"] = tuple((k, v) for k, v in d.get("disposition_params", []))
    lang = d.get("language")
    kw["language"] = None if lang is None else tuple(lang)
    kw["children"] = tuple(_part_from_json(c) for c in d.get("children", []))
    kw["message"] = from_json(d["message"]) if d.get("message") else None
    return BodyPart(**kw)

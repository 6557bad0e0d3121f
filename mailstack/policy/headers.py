"""Operations on a message's header block (bytes): checks, Bcc removal, From:
extraction, trace headers. Pure: bytes and facts in, bytes and verdicts out.

Invariants:
- The header block ends at the first empty line, or at the first line that is neither
  a field (``name:``) nor a continuation line; that line starts the body. This is how
  MUAs (and Python's ``email`` parser) see it, so what we strip or check is exactly
  what a recipient's client would display as headers.
- ``strip_bcc`` removes every ``Bcc:`` and ``Resent-Bcc:`` field (any case, obsolete
  ``Bcc :`` spelling, all continuation lines); all other bytes are untouched.
- ``extract_from_addresses`` uses its own RFC 5322 §3.4 parser (no reliance on
  ``email.utils.getaddresses``, which mis-parsed crafted display names before the
  CVE-2023-27043 fix): an address is only ever taken from an addr-spec, never from a
  display name, comment or encoded word (RFC 2047 §5: no encoded words in addr-specs).
- Trace headers never contain CR, LF, NUL or other controls: every client- or
  DNS-supplied piece (EHLO name, reverse DNS name, addresses, TLS strings, ids) is
  sanitised; ``for <rcpt>`` appears only when there is exactly one recipient
  (RFC 5321 §4.4 allows one; more would disclose Bcc recipients).

Reply codes (RFC 3463):
- bare CR or bare LF (SMTP smuggling, CVE-2023-51764): 554 5.6.0; RFC 5321 §2.3.8
  says CR and LF only occur together as CRLF.
- NUL anywhere: 554 5.6.0 (RFC 5322 §3.5 ``text`` excludes NUL).
- a line over 1000 octets incl. CRLF: 554 5.6.0 (RFC 5321 §4.5.3.1.6).
- too many header fields, one field too long, header block too large: 552 5.3.4
  (RFC 5321 §4.2.2 552 exceeded storage allocation; RFC 3463 X.3.4 too big).
- more ``Received:`` fields than ``max_received``: 554 5.4.6 (RFC 5321 §6.3 loop).
- unparseable ``From:``: 550 5.6.0.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.utils import format_datetime

from .envelope import EnvelopeAddress
from .replies import HasReply, SmtpRefusal

__all__ = [
    "HeaderError",
    "MailboxAddress",
    "MessageLimits",
    "MessageVerdict",
    "TlsInfo",
    "check_message",
    "delivered_to_header",
    "extract_from_addresses",
    "header_fields",
    "parse_address_list",
    "received_header",
    "received_protocol",
    "return_path_header",
    "sanitize_trace_text",
    "split_header",
    "strip_bcc",
]

_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")  # RFC 5322 §3.6.8 ftext, obs WSP before ":"
_LONG_LINE = re.compile(rb"(?m)^[^\r\n]{999}")  # 998 + CRLF = 1000 (RFC 5321 §4.5.3.1.6)
_BCC_NAMES = frozenset({b"bcc", b"resent-bcc"})


@dataclass(frozen=True)
class MessageLimits:
    max_line: int = 1000  # octets including CRLF, RFC 5321 §4.5.3.1.6
    max_header_fields: int = 1000
    max_field_bytes: int = 64 * 1024  # one field with its continuation lines
    max_header_bytes: int = 512 * 1024
    max_received: int = 100  # RFC 5321 §6.3 suggests 100


@dataclass(frozen=True)
class MessageVerdict(HasReply):
    ok: bool
    code: int
    enhanced: str
    text: str


_MSG_OK = MessageVerdict(True, 250, "2.6.0", "OK")


class HeaderError(SmtpRefusal):
    """A message header the SMTP layer refuses, with the reply to send."""


# --- header block --------------------------------------------------------------------


def _scan_header(data: bytes, limit: int | None = None) -> tuple[int, int]:
    """(end of header block, start of body). Stops early past ``limit`` octets."""
    pos = 0
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        line = data[pos:end].rstrip(b"\r\n")
        if not line:
            return pos, end
        if line[:1] in (b" ", b"\t"):
            if pos == 0:
                return 0, 0
        elif not _FIELD.match(line):
            return pos, pos
        pos = end
        if limit is not None and pos > limit:
            return pos, pos
    return n, n


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header block without the separator line, body)."""
    hend, bstart = _scan_header(data)
    return data[:hend], data[bstart:]


def header_fields(header: bytes) -> list[tuple[bytes, bytes]]:
    """``[(lowercased name, raw field bytes incl. continuation lines and EOLs)]``."""
    fields: list[tuple[bytes, bytes]] = []
    pos = 0
    n = len(header)
    start = -1
    name = b""
    while pos < n:
        nl = header.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        if header[pos : pos + 1] in (b" ", b"\t") and start >= 0:
            pos = end
            continue
        if start >= 0:
            fields.append((name, header[start:pos]))
        start = pos
        name = header[pos:end].split(b":", 1)[0].strip(b" \t").lower()
        pos = end
    if start >= 0:
        fields.append((name, header[start:n]))
    return fields


def strip_bcc(message: bytes) -> bytes:
    """Remove every Bcc:/Resent-Bcc: field (RFC 5322 §3.6.3, docs/behaviour.md §4) from
    the header."""
    hend, _ = _scan_header(message)
    header = message[:hend]
    fields = header_fields(header)
    if not any(name in _BCC_NAMES for name, _ in fields):
        return message
    kept = b"".join(raw for name, raw in fields if name not in _BCC_NAMES)
    return kept + message[hend:]


# --- message checks ------------------------------------------------------------------


def check_message(data: bytes, limits: MessageLimits | None = None) -> MessageVerdict:
    """Check DATA content (dot-unstuffed or not, without the final ``.CRLF``)."""
    lim = limits or MessageLimits()
    crlf = data.count(b"\r\n")
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        return MessageVerdict(
            False,
            554,
            "5.6.0",
            "Message contains a bare CR or LF; lines must end with CRLF (RFC 5321 §2.3.8)",
        )
    if b"\x00" in data:
        return MessageVerdict(False, 554, "5.6.0", "Message contains a NUL character")
    pattern = (
        _LONG_LINE
        if lim.max_line == 1000
        else re.compile(rb"(?m)^[^\r\n]{%d}" % (lim.max_line - 1))
    )
    m = pattern.search(data)
    if m:
        line_no = data.count(b"\n", 0, m.start()) + 1
        return MessageVerdict(
            False,
            554,
            "5.6.0",
            f"Line {line_no} longer than {lim.max_line} octets (RFC 5321 §4.5.3.1.6)",
        )
    hend, _ = _scan_header(data, lim.max_header_bytes)
    if hend > lim.max_header_bytes:
        return MessageVerdict(
            False, 552, "5.3.4", f"Message header larger than {lim.max_header_bytes} octets"
        )
    fields = header_fields(data[:hend])
    if len(fields) > lim.max_header_fields:
        return MessageVerdict(
            False, 552, "5.3.4", f"Too many header fields (at most {lim.max_header_fields})"
        )
    received = 0
    for name, raw in fields:
        if len(raw) > lim.max_field_bytes:
            return MessageVerdict(
                False, 552, "5.3.4", f"Header field larger than {lim.max_field_bytes} octets"
            )
        if name == b"received":
            received += 1
    if received > lim.max_received:
        return MessageVerdict(
            False,
            554,
            "5.4.6",
            f"Too many Received: headers ({received}): mail loop (RFC 5321 §6.3)",
        )
    return _MSG_OK


# --- From: addresses -----------------------------------------------------------------


@dataclass(frozen=True)
class MailboxAddress:
    name: str  # display name, encoded words decoded; "" if none
    address: str  # addr-spec as written, e.g. 'anna@example.com' or '"a b"@x'


_SPECIALS = '()<>[]:;@\\,."'


_Token = tuple[str, str, bool]  # (kind, text, whitespace or comment before it)


def _tokenize(s: str) -> list[_Token]:
    """RFC 5322 §3.2 lexical tokens: atom, qs (content), dlit, or a special char."""
    toks: list[_Token] = []
    i, n = 0, len(s)
    space = False
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            i += 1
            space = True
            continue
        if c == "(":
            depth = 0
            while i < n:
                ch = s[i]
                if ch == "\\":
                    i += 2
                    continue
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            if i >= n:
                raise HeaderError(550, "5.6.0", "Unterminated comment in address header")
            i += 1
            space = True
            continue
        elif c == '"':
            i += 1
            buf: list[str] = []
            while i < n and s[i] != '"':
                if s[i] == "\\" and i + 1 < n:
                    i += 1
                if s[i] not in "\r\n":
                    buf.append(s[i])
                i += 1
            if i >= n:
                raise HeaderError(550, "5.6.0", "Unterminated quoted string in address header")
            toks.append(("qs", "".join(buf), space))
            i += 1
        elif c == "[":
            j = s.find("]", i)
            if j < 0 or "[" in s[i + 1 : j] or "\\" in s[i:j]:
                raise HeaderError(550, "5.6.0", "Malformed domain literal in address header")
            toks.append(("dlit", s[i : j + 1], space))
            i = j + 1
        elif c in "<>:;@,.":
            toks.append((c, c, space))
            i += 1
        elif c in ")]\\":
            raise HeaderError(550, "5.6.0", f"Unexpected {c!r} in address header")
        else:
            j = i
            while j < n and s[j] not in _SPECIALS and s[j] not in " \t\r\n":
                j += 1
            toks.append(("atom", s[i:j], space))
            i = j
        space = False
    return toks


def _quote_local(text: str) -> str:
    if text and all(
        p and all(c.isalnum() or c in "!#$%&'*+-/=?^_`{|}~" for c in p) for p in text.split(".")
    ):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _display(words: list[_Token]) -> str:
    raw = ""
    for _, text, space in words:
        raw += (" " if space and raw else "") + text
    if "=?" in raw:
        try:
            return str(make_header(decode_header(raw)))
        except (ValueError, LookupError, UnicodeError):
            return raw
    return raw


class _AddrParser:
    def __init__(self, toks: list[_Token]) -> None:
        self.t = toks
        self.i = 0

    def peek(self) -> str | None:
        return self.t[self.i][0] if self.i < len(self.t) else None

    def fail(self, what: str) -> HeaderError:
        return HeaderError(550, "5.6.0", f"Malformed address header: {what}")

    def words(self) -> list[_Token]:
        out: list[_Token] = []
        while self.peek() in ("atom", "qs", "."):
            out.append(self.t[self.i])
            self.i += 1
        return out

    @staticmethod
    def _dotted(words: list[_Token], kinds: tuple[str, ...]) -> bool:
        """``word *("." word)`` (RFC 5322 §3.4.1, obs-local-part / obs-domain)."""
        if len(words) % 2 == 0:
            return False
        return all((w[0] in kinds) if i % 2 == 0 else w[0] == "." for i, w in enumerate(words))

    def addr_spec(self, local_words: list[_Token]) -> str:
        if not local_words:
            raise self.fail("empty local part")
        if not self._dotted(local_words, ("atom", "qs")):
            raise self.fail("invalid local part")
        local = "".join(_quote_local(t) if k == "qs" else t for k, t, _ in local_words)
        if self.peek() != "@":
            raise self.fail("address without @domain")
        self.i += 1
        if self.peek() == "dlit":
            domain = self.t[self.i][1]
            self.i += 1
        else:
            dom = self.words()
            if not self._dotted(dom, ("atom",)):
                raise self.fail("invalid domain")
            domain = "".join(t for _, t, _ in dom)
        return f"{local}@{domain}"

    def angle(self, name: str) -> MailboxAddress:
        self.i += 1  # "<"
        if self.peek() == "@":  # obs-route (RFC 5322 §4.4): skip "@d,@d:"
            while self.peek() in ("@", ",", "atom", "."):
                self.i += 1
            if self.peek() != ":":
                raise self.fail("malformed route")
            self.i += 1
        addr = self.addr_spec(self.words())
        if self.peek() != ">":
            raise self.fail("missing >")
        self.i += 1
        return MailboxAddress(name, addr)

    def mailbox(self) -> MailboxAddress | list[MailboxAddress]:
        words = self.words()
        nxt = self.peek()
        if nxt == "<":
            return self.angle(_display(words))
        if nxt == "@":
            return MailboxAddress("", self.addr_spec(words))
        if nxt == ":":  # group (RFC 5322 §3.4; allowed in From: by RFC 6854)
            self.i += 1
            members: list[MailboxAddress] = []
            while self.peek() not in (";", None):
                if self.peek() == ",":
                    self.i += 1
                    continue
                got = self.mailbox()
                if isinstance(got, list):
                    raise self.fail("nested group")
                members.append(got)
            if self.peek() != ";":
                raise self.fail("unterminated group")
            self.i += 1
            return members
        raise self.fail("expected an address")

    def address_list(self) -> list[MailboxAddress]:
        out: list[MailboxAddress] = []
        while self.peek() is not None:
            if self.peek() == ",":
                self.i += 1
                continue
            got = self.mailbox()
            out.extend(got if isinstance(got, list) else [got])
            if self.peek() not in (",", None):
                raise self.fail("expected , between addresses")
        return out


def parse_address_list(value: str) -> list[MailboxAddress]:
    """Parse an RFC 5322 §3.4 address-list / mailbox-list (groups expanded)."""
    return _AddrParser(_tokenize(value)).address_list()


def _unfold(raw: bytes) -> str:
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    value = re.sub(rb"\r?\n(?=[ \t])", b"", value).rstrip(b"\r\n")
    return value.decode("utf-8", "replace")  # RFC 6532 allows UTF-8 in headers


def extract_from_addresses(message: bytes) -> tuple[MailboxAddress, ...]:
    """All addresses of all ``From:`` fields; raises ``HeaderError`` if one is malformed."""
    hend, _ = _scan_header(message)
    out: list[MailboxAddress] = []
    for name, raw in header_fields(message[:hend]):
        if name == b"from":
            out.extend(parse_address_list(_unfold(raw)))
    return tuple(out)


# --- trace headers (RFC 5321 §4.4) ---------------------------------------------------


@dataclass(frozen=True)
class TlsInfo:
    version: str  # e.g. "TLSv1.3" (ssl.SSLObject.version())
    cipher: str  # e.g. "TLS_AES_256_GCM_SHA384" (ssl.SSLObject.cipher()[0])
    bits: int | None = None


_HOST_SAFE = re.compile(r"[^A-Za-z0-9._:\[\]-]")
_TOKEN_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def sanitize_trace_text(
    text: str | None, *, max_len: int = 255, pattern: re.Pattern[str] = _HOST_SAFE
) -> str:
    """Make a host-name-like token safe to place in a header: every character that
    ``pattern`` matches (controls, spaces, parentheses, non-ASCII, ...) becomes ``?``;
    overlong text is cut. Empty or None becomes ``unknown``."""
    if not text:
        return "unknown"
    out = pattern.sub("?", text)
    return out if len(out) <= max_len else out[:max_len] + "..."


def _clean_addr(text: str, max_len: int = 320) -> str:
    out = "".join(c if c.isprintable() and c not in "\r\n<>" else "?" for c in text)
    return out[:max_len]


def received_protocol(
    *, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool = False
) -> str:
    """The ``with`` keyword: RFC 3848 (ESMTP[S][A]) and RFC 6531 §3.7.3 (UTF8SMTP*)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def _ip_literal(ip: str) -> str:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return "[" + sanitize_trace_text(ip, max_len=64) + "]"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return f"[{addr.ipv4_mapped}]"
        return f"[IPv6:{addr.compressed}]"  # RFC 5321 §4.1.3
    return f"[{addr}]"


def received_header(
    *,
    helo: str | None,
    client_ip: str,
    client_host: str | None,
    server_host: str,
    protocol: str,
    queue_id: str,
    recipients: Sequence[EnvelopeAddress | str],
    now: datetime,
    tls: TlsInfo | None = None,
    software: str = "mailstack",
) -> bytes:
    """One ``Received:`` field (RFC 5321 §4.4 Stamp), folded, CRLF-terminated.

    ``client_host`` is the verified reverse DNS name (None if unknown). The login name
    is never included. ``for <rcpt>`` only with exactly one recipient.
    """
    lines = [
        f"Received: from {sanitize_trace_text(helo)} "
        f"({sanitize_trace_text(client_host)} {_ip_literal(client_ip)})"
    ]
    if tls is not None:
        bits = f" ({tls.bits}/{tls.bits} bits)" if tls.bits else ""
        version = sanitize_trace_text(tls.version, max_len=32, pattern=_TOKEN_SAFE)
        cipher = sanitize_trace_text(tls.cipher, max_len=64, pattern=_TOKEN_SAFE)
        lines.append(f"\t(using {version} with cipher {cipher}{bits})")
    proto = sanitize_trace_text(protocol, max_len=16, pattern=_TOKEN_SAFE)
    qid = re.sub(r"[^A-Za-z0-9]", "", queue_id)[:64] or "unknown"
    lines.append(
        f"\tby {sanitize_trace_text(server_host)} "
        f"({sanitize_trace_text(software, max_len=64, pattern=_TOKEN_SAFE)}) "
        f"with {proto} id {qid}"
    )
    when = now.replace(tzinfo=UTC) if now.tzinfo is None else now
    date = format_datetime(when)
    if len(recipients) == 1:
        lines.append(f"\tfor <{_clean_addr(str(recipients[0]))}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def return_path_header(sender: EnvelopeAddress | str | None) -> bytes:
    """``Return-Path: <reverse-path>`` (RFC 5321 §4.4); ``<>`` for the null sender."""
    addr = "" if sender is None else _clean_addr(str(sender))
    return f"Return-Path: <{addr}>\r\n".encode()


def delivered_to_header(address: EnvelopeAddress | str) -> bytes:
    """``Delivered-To:`` (the final mailbox; also a loop marker, RFC 9228 style)."""
    return f"Delivered-To: {_clean_addr(str(address))}\r\n".encode()

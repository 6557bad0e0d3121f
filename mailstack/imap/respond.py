"""Response encoding for the IMAP server (RFC 9051 §4, §7). No I/O.

Invariants:
- Strings go out as quoted strings when they can (RFC 9051 §4.3), else as literals;
  NUL never goes out (CHAR8 excludes it).
- Mailbox names go out in modified UTF-7 (RFC 3501 §5.1.3) unless the client enabled
  UTF8=ACCEPT (RFC 6855 §3), then as UTF-8 quoted strings.
- The three kinds of error a command can end with are exceptions here: :class:`Bad`
  (syntax / protocol misuse -> tagged BAD), :class:`No` (the user's mistake, with an
  optional response code -> tagged NO [CODE]); anything else is a server fault the
  session logs and answers ``NO [SERVERBUG]``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from mailstack.imap import mutf7, structure


class Bad(Exception):
    """Tagged BAD: the command was malformed or not allowed now (RFC 9051 §7.1.5)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class No(Exception):
    """Tagged NO with an optional response code (RFC 9051 §7.1.2)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    code_part = f"[{code}] " if code else ""
    return f"{tag} {status} {code_part}{text}\r\n".encode("utf-8", "replace")


def untagged(text: str) -> bytes:
    return f"* {text}\r\n".encode("utf-8", "replace")


def string(value: str | bytes, utf8: bool = False) -> bytes:
    return structure.imap_string(value, utf8)


def nstring(value: str | bytes | None, utf8: bool = False) -> bytes:
    return structure.imap_nstring(value, utf8)


def literal(data: bytes, binary: bool = False) -> bytes:
    """A literal. Only BINARY[...] data (``binary``) may go out as literal8 when it holds
    NUL (RFC 3516 §4.2); anywhere else NUL never goes out (RFC 3501 §9 CHAR8): APPEND
    stores binary parts base64-encoded, and a NUL in older stored data is sent as
    0x80, as Dovecot does."""
    if b"\x00" in data:
        if binary:
            return b"~{%d}\r\n" % len(data) + data
        data = data.replace(b"\x00", b"\x80")
    return b"{%d}\r\n" % len(data) + data


def mailbox(name: str, utf8: bool = False) -> bytes:
    """A mailbox name as an IMAP string: modified UTF-7 unless UTF8=ACCEPT."""
    if name == "INBOX":
        return b'"INBOX"'
    if utf8:
        return structure.imap_string(name, True)
    return structure.imap_string(mutf7.encode(name).encode("ascii"))


def flag_list(flags: Iterable[str]) -> str:
    order = {"\\Seen": 0, "\\Answered": 1, "\\Flagged": 2, "\\Deleted": 3, "\\Draft": 4}
    return "(" + " ".join(sorted(flags, key=lambda f: (order.get(f, 9), f.lower()))) + ")"


def seq_set(numbers: Iterable[int]) -> str:
    """Compact a set of numbers into an IMAP sequence-set ("1:3,7,9:10")."""
    out: list[str] = []
    nums = sorted(set(numbers))
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}:{nums[j]}")
        i = j + 1
    return ",".join(out)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def internal_date(ts: float) -> str:
    """RFC 9051 §9 date-time: "dd-Mon-yyyy hh:mm:ss +0000" (we speak UTC)."""
    g = time.gmtime(ts)
    return (
        f'"{g.tm_mday:02d}-{_MONTHS[g.tm_mon - 1]}-{g.tm_year:04d} '
        f'{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000"'
    )

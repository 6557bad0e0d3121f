"""POP3 command lines -> typed commands, without I/O; and the three kinds of error.

- A command is a case-insensitive keyword of 3 or 4 printable characters, then
  arguments separated by spaces (RFC 1939 §3). PASS keeps the rest of the line as one
  argument, spaces included (RFC 1939 §7: "the server may treat spaces in the argument
  as part of the password").
- Numbers are decimal digits only; a message number beyond what exists is a user error
  (-ERR no such message), not a syntax error.
- Replies are one status line of at most 512 octets, CRLF included (RFC 1939 §3,
  RFC 2449 §4); ``status_line`` enforces it and never lets a CR or LF through.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

MAX_STATUS_LINE = 512
_KEYWORD = re.compile(rb"^[A-Za-z]{3,4}$")
_NUMBER = re.compile(rb"^[0-9]{1,10}$")


class Pop3Error(Exception):
    """A user error: ``-ERR [code] text``; the session goes on."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code

    def line(self) -> bytes:
        return status_line(False, self.text, self.code)


class SyntaxErr(Pop3Error):
    """The command line is malformed (counts toward the bad-command limit)."""


@dataclass(frozen=True)
class Command:
    keyword: bytes  # upper case
    args: tuple[bytes, ...]
    rest: bytes  # everything after the keyword and one space (for PASS)


def parse(line: bytes) -> Command:
    line = line.rstrip(b"\r\n")
    keyword, _, rest = line.partition(b" ")
    if not _KEYWORD.match(keyword):
        raise SyntaxErr("unknown command")
    args = tuple(a for a in rest.split(b" ") if a)
    return Command(keyword.upper(), args, rest)


def number(arg: bytes, what: str = "message number") -> int:
    if not _NUMBER.match(arg):
        raise SyntaxErr(f"{what} must be a decimal number")
    return int(arg)


def arity(cmd: Command, low: int, high: int) -> None:
    if not low <= len(cmd.args) <= high:
        name = cmd.keyword.decode()
        if low == high:
            raise SyntaxErr(f"{name} takes {low} argument{'s' if low != 1 else ''}")
        raise SyntaxErr(f"{name} takes {low} to {high} arguments")


def status_line(ok: bool, text: str, code: str | None = None) -> bytes:
    """``+OK text`` / ``-ERR [CODE] text``, CRLF, at most 512 octets."""
    head = b"+OK" if ok else b"-ERR"
    if code:
        head += b" [" + code.encode("ascii") + b"]"
    body = text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")
    line = head + (b" " + body if body else b"")
    return line[:MAX_STATUS_LINE - 2] + b"\r\n"


@dataclass(frozen=True)
class PlainCredentials:
    authzid: str
    authcid: str
    password: str


def decode_plain(b64: bytes) -> PlainCredentials:
    """SASL PLAIN (RFC 4616 §2): base64 of ``authzid NUL authcid NUL passwd``; an
    initial response of "=" is the empty string (RFC 5034 §4)."""
    raw = b64.strip()
    try:
        data = b"" if raw == b"=" else binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError):
        raise SyntaxErr("malformed base64 in AUTH PLAIN response") from None
    parts = data.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise SyntaxErr("AUTH PLAIN response is not authzid NUL authcid NUL password")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError:
        raise SyntaxErr("AUTH PLAIN response is not UTF-8") from None
    return PlainCredentials(authzid, authcid, password)

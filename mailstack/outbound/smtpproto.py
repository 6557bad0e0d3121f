"""The SMTP client protocol without I/O (RFC 5321 client side): bytes in, replies out;
envelopes in, command bytes out; message bytes in, DATA bytes out.

Nothing here touches a socket, a clock or a database, so every reply sequence a remote
server can produce is a unit test (tests/outbound/test_smtpproto.py).

Implementation notes (invariants):
- ``ReplyParser`` accepts only well-formed replies (RFC 5321 §4.2: three digits, then
  "-" or " " or the end of the line; one code across a multi-line reply) and bounded
  ones; anything else is a ``RemoteProtocolError`` carrying the offending bytes.
- ``DataEncoder`` turns any bare CR or bare LF into CRLF before dot-stuffing (our relay
  never passes on a line ending another server could read differently: SMTP smuggling,
  docs/behaviour.md §12), doubles a leading "." on every line (RFC 5321 §4.5.2) and ends
  with CRLF "." CRLF. It works chunk by chunk, whatever the chunk boundaries.
- ``Transaction`` is one mail transaction as a state machine: it hands out the commands
  to send (MAIL and every RCPT at once with PIPELINING, RFC 2920; one at a time
  without) and takes the replies in order; the result maps each recipient to the reply
  that decided it (its RCPT refusal, or the reply to the final dot).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_REPLY_LINE = 4096  # RFC 5321 §4.5.3.1.5 says 512; be generous, but bounded
MAX_REPLY_LINES = 200
_EOL = re.compile(rb"\r\n|\r|\n")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


class RemoteProtocolError(Exception):
    """The server sent something that is not SMTP; ``data`` holds the offending bytes."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(f"{message}: {data[:80]!r}" if data else message)
        self.data = data


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " / ".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 status code of the reply, or one derived from the basic code."""
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        if m and m.group(1) == str(self.code)[0]:
            return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        return f"{str(self.code)[0]}.0.0"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class ReplyParser:
    """Feed received bytes; get complete replies."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None

    def feed(self, data: bytes) -> list[Reply]:
        self._buf += data
        out: list[Reply] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise RemoteProtocolError("reply line too long", bytes(self._buf[:80]))
                return out
            raw = bytes(self._buf[:nl + 1])
            del self._buf[:nl + 1]
            reply = self._line(raw)
            if reply is not None:
                out.append(reply)

    def _line(self, raw: bytes) -> Reply | None:
        if len(raw) > MAX_REPLY_LINE:
            raise RemoteProtocolError("reply line too long", raw)
        line = raw.rstrip(b"\r\n")
        if len(line) < 3 or not line[:3].isdigit() or line[:1] not in b"2345" or (
                len(line) > 3 and line[3:4] not in (b" ", b"-")):
            raise RemoteProtocolError("not an SMTP reply", raw)
        if any(b < 0x20 and b != 0x09 for b in line):
            raise RemoteProtocolError("control character in reply", raw)
        code = int(line[:3])
        if self._code is not None and code != self._code:
            raise RemoteProtocolError("reply code changed within a multi-line reply", raw)
        self._code = code
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if len(self._lines) > MAX_REPLY_LINES:
            raise RemoteProtocolError("reply has too many lines", raw)
        if line[3:4] == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._lines, self._code = [], None
        return reply

    def discard(self) -> bool:
        """Throw away unread bytes (before a TLS handshake); True if there were any."""
        had = bool(self._buf) or bool(self._lines)
        self._buf.clear()
        self._lines, self._code = [], None
        return had


@dataclass(frozen=True)
class Capabilities:
    """What the server's EHLO reply offers (RFC 5321 §4.1.1.1)."""

    esmtp: bool = False
    pipelining: bool = False
    size: int | None = None  # None: no SIZE; 0: SIZE without a limit
    eightbitmime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    starttls: bool = False
    auth: frozenset[str] = frozenset()

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        kw: dict[str, object] = {"esmtp": True}
        auth: set[str] = set()
        for line in reply.lines[1:]:
            words = line.upper().split()
            if not words:
                continue
            name, args = words[0], words[1:]
            if name == "PIPELINING":
                kw["pipelining"] = True
            elif name == "SIZE":
                kw["size"] = int(args[0]) if args and args[0].isdigit() else 0
            elif name == "8BITMIME":
                kw["eightbitmime"] = True
            elif name == "SMTPUTF8":
                kw["smtputf8"] = True
            elif name == "DSN":
                kw["dsn"] = True
            elif name == "STARTTLS":
                kw["starttls"] = True
            elif name == "AUTH" or name.startswith("AUTH="):
                auth.update(args if name == "AUTH" else [name[5:], *args])
        return cls(auth=frozenset(auth), **kw)  # type: ignore[arg-type]


def xtext(value: str) -> str:
    """RFC 3461 §4: "+" and "=", controls, space and non-ASCII as +HH."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def has_controls(value: str) -> bool:
    """CR, LF, NUL or another control character: never sent in a command."""
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _clean(value: str) -> str:
    if has_controls(value):
        raise ValueError("control character in an envelope value")
    return value


@dataclass(frozen=True)
class Envelope:
    """One message to send: the return path, the recipients with their DSN wishes
    (RFC 3461 NOTIFY and ORCPT per recipient) and the message-wide DSN parameters."""

    sender: str
    recipients: tuple[str, ...]
    size: int
    eightbit: bool = False
    smtputf8: bool = False
    ret: str = ""
    envid: str = ""
    notify: tuple[str, ...] = ()  # per recipient, "" when not given
    orcpt: tuple[str, ...] = ()


def needs_smtputf8(addresses: Sequence[str]) -> bool:
    """An envelope address outside ASCII needs SMTPUTF8 at the next hop (RFC 6531 §3.4)."""
    return any(not a.isascii() for a in addresses)


def mail_command(env: Envelope, caps: Capabilities) -> bytes:
    params = []
    if caps.size is not None:
        params.append(f"SIZE={env.size}")
    if env.eightbit and caps.eightbitmime:
        params.append("BODY=8BITMIME")
    if env.smtputf8 and caps.smtputf8:
        params.append("SMTPUTF8")
    if caps.dsn:  # RFC 3461 §4.3/§4.4: relayed only to a server that offers DSN
        if env.ret:
            params.append(f"RET={env.ret}")
        if env.envid:
            params.append(f"ENVID={xtext(env.envid)}")
    tail = "".join(" " + p for p in params) if caps.esmtp else ""
    return f"MAIL FROM:<{_clean(env.sender)}>{tail}\r\n".encode()


def rcpt_command(env: Envelope, i: int, caps: Capabilities) -> bytes:
    params = []
    if caps.dsn:
        notify = env.notify[i] if i < len(env.notify) else ""
        orcpt = env.orcpt[i] if i < len(env.orcpt) else ""
        if notify:
            params.append(f"NOTIFY={notify}")
        if orcpt:
            kind, _, addr = orcpt.partition(";")
            params.append(f"ORCPT={kind};{xtext(addr)}")
    tail = "".join(" " + p for p in params)
    return f"RCPT TO:<{_clean(env.recipients[i])}>{tail}\r\n".encode()


class DataEncoder:
    """Message bytes -> DATA bytes: stray CR/LF normalized to CRLF, dot-stuffed, with the
    final CRLF "." CRLF. ``feed`` any chunks, then ``finish``."""

    def __init__(self) -> None:
        self._cr = False  # the previous chunk ended in CR
        self._bol = True  # at the beginning of a line
        self.eightbit = False

    def feed(self, chunk: bytes) -> bytes:
        if not self.eightbit and not chunk.isascii():
            self.eightbit = True
        if self._cr:  # a CR ended the previous chunk: is it part of a CRLF?
            chunk, self._cr = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            chunk, self._cr = chunk[:-1], True
        if not chunk:
            return b""
        out = _EOL.sub(b"\r\n", chunk)
        if self._bol and out.startswith(b"."):
            out = b"." + out
        out = out.replace(b"\r\n.", b"\r\n..")
        self._bol = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        if self._cr:
            self._cr, self._bol = False, True
            return b"\r\n.\r\n"
        return (b"" if self._bol else b"\r\n") + b".\r\n"


@dataclass
class Transaction:
    """One mail transaction on an open session (after EHLO/STARTTLS/AUTH).

    Use: ``first = tx.start()`` -> send; for each reply ``tx.on_reply(r)`` returns the
    next bytes to send (b"" for nothing yet); when ``tx.wants_data`` the caller streams
    the message through a ``DataEncoder`` and then waits for one more reply; ``tx.done``
    then holds ``results`` (recipient index -> deciding reply)."""

    env: Envelope
    caps: Capabilities
    results: dict[int, Reply] = field(default_factory=dict)
    wants_data: bool = False
    done: bool = False
    _expect: list[tuple[str, int]] = field(default_factory=list)
    _mail: Reply | None = None
    _accepted: list[int] = field(default_factory=list)
    _sent_rcpts: int = 0
    _stage: str = "new"

    def start(self) -> bytes:
        self._stage = "envelope"
        out = mail_command(self.env, self.caps)
        self._expect.append(("mail", -1))
        if self.caps.pipelining:
            for i in range(len(self.env.recipients)):
                out += rcpt_command(self.env, i, self.caps)
                self._expect.append(("rcpt", i))
            self._sent_rcpts = len(self.env.recipients)
        return out

    @property
    def expecting(self) -> int:
        return len(self._expect) + (1 if self._stage in ("data", "dot") else 0)

    def on_reply(self, reply: Reply) -> bytes:
        if self._stage == "data":
            if reply.code == 354:
                self.wants_data = True
                self._stage = "dot"
                return b""
            self._finish_all(reply)
            return b""
        if self._stage == "dot":
            self.wants_data = False
            self._finish_all(reply)
            return b""
        if not self._expect:
            raise RemoteProtocolError("unexpected reply", str(reply).encode())
        kind, i = self._expect.pop(0)
        if kind == "mail":
            self._mail = reply
        else:
            if self._mail is not None and not self._mail.positive:
                self.results[i] = self._mail  # the MAIL refusal decides
            elif reply.code in (250, 251):
                self._accepted.append(i)
            else:
                self.results[i] = reply
        if kind == "mail" and not reply.positive and not self.caps.pipelining:
            for j in range(len(self.env.recipients)):
                self.results[j] = reply
            self.done = True
            return b""
        if self._expect:
            return b""
        if self._sent_rcpts < len(self.env.recipients):
            i = self._sent_rcpts
            self._sent_rcpts += 1
            self._expect.append(("rcpt", i))
            return rcpt_command(self.env, i, self.caps)
        if not self._accepted:
            self.done = True
            return b""
        self._stage = "data"
        return b"DATA\r\n"

    def _finish_all(self, reply: Reply) -> None:
        for i in self._accepted:
            self.results[i] = reply
        self._stage = "done"
        self.done = True

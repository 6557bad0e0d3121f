"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3, kept by RFC 9051 §5.1.3).

Invariants:
- Python's ``utf-7`` codec is a different encoding (RFC 2152: '+' shift, '/' in base64,
  optional '-') and is never used here.
- ``encode`` always produces the one canonical form; ``decode`` accepts only canonical
  input, so ``encode(decode(x)) == x`` for every accepted ``x``.
- Every refusal raises :class:`MUTF7Error`, a ``ValueError`` subclass.
"""

from __future__ import annotations

import binascii

__all__ = ["MUTF7Error", "decode", "encode"]

# Modified base64: RFC 3501 §5.1.3 uses ',' instead of '/' and omits '=' padding.
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


class MUTF7Error(ValueError):
    """The input is not a valid modified UTF-7 mailbox name."""


def _printable(code: int) -> bool:
    # RFC 3501 §5.1.3: US-ASCII 0x20-0x7e represent themselves ('&' is escaped as "&-").
    return 0x20 <= code <= 0x7E


def _b64_encode(text: str) -> str:
    raw = text.encode("utf-16-be")
    enc = binascii.b2a_base64(raw, newline=False).rstrip(b"=")
    return enc.replace(b"/", b",").decode("ascii")


def encode(name: str) -> str:
    """Encode a Unicode mailbox name to modified UTF-7 (an ASCII ``str``)."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _printable(ord(ch)):
            if run:
                out.append("&" + _b64_encode("".join(run)) + "-")
                run = []
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append("&" + _b64_encode("".join(run)) + "-")
    return "".join(out)


def _b64_decode(chunk: bytes) -> str:
    if len(chunk) % 4 == 1:
        raise MUTF7Error("truncated base64 run")
    padded = chunk.replace(b",", b"/") + b"=" * (-len(chunk) % 4)
    try:
        raw = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as exc:
        raise MUTF7Error(f"bad base64: {exc}") from None
    if len(raw) % 2:
        raise MUTF7Error("odd number of octets in UTF-16 run")
    # Non-zero padding bits: a canonical encoder would not have produced this chunk.
    if binascii.b2a_base64(raw, newline=False).rstrip(b"=").replace(b"/", b",") != chunk:
        raise MUTF7Error("non-zero padding bits in base64 run")
    try:
        text = raw.decode("utf-16-be")  # strict: unpaired surrogates are refused
    except UnicodeDecodeError:
        raise MUTF7Error("invalid UTF-16 in base64 run") from None
    for ch in text:
        if _printable(ord(ch)):
            # RFC 3501 §5.1.3: printable ASCII MUST NOT be base64-encoded.
            raise MUTF7Error("printable ASCII encoded in base64 run")
    return text


def decode(name: str | bytes) -> str:
    """Decode a modified UTF-7 mailbox name; raise :class:`MUTF7Error` if invalid."""
    if isinstance(name, str):
        try:
            data = name.encode("ascii")
        except UnicodeEncodeError:
            raise MUTF7Error("non-ASCII character in modified UTF-7") from None
    else:
        data = bytes(name)
    out: list[str] = []
    i = 0
    n = len(data)
    prev_was_run = False
    while i < n:
        c = data[i]
        if not _printable(c):
            raise MUTF7Error(f"octet 0x{c:02x} not allowed in modified UTF-7")
        if c != 0x26:  # '&'
            out.append(chr(c))
            prev_was_run = False
            i += 1
            continue
        end = data.find(b"-", i + 1)
        if end < 0:
            raise MUTF7Error("unterminated '&' sequence")
        chunk = data[i + 1 : end]
        if not chunk:
            out.append("&")
            prev_was_run = False
        else:
            if any(b not in _B64_CHARS for b in chunk):
                raise MUTF7Error("invalid character in base64 run")
            if prev_was_run:
                # Two adjacent runs: the canonical form is one run.
                raise MUTF7Error("adjacent base64 runs")
            out.append(_b64_decode(chunk))
            prev_was_run = True
        i = end + 1
    return "".join(out)

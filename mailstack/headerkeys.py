"""The sort and thread keys of a message (RFC 5256, RFC 5957), parsed once from its
header block when it is stored. Protocol-neutral, no I/O: SMTP delivery, IMAP APPEND,
the importer and the IMAP SORT/THREAD fallback for older rows all use it.

Implementation notes (invariants):
- Only the header block is read (:func:`mailstack.mime.first_fields`: the first value
  of each field, at most ``MAX_HEADER_LINES`` lines); the base subject works on at most
  ``MAX_SUBJECT`` characters and every step is linear (no backtracking patterns).
- Strings compare with i;ascii-casemap (ASCII letters folded to upper case, RFC 5256
  §2.2 / RFC 4790 §9.2) and are stored casemapped, so binary order is the RFC's.
- A Date that cannot be parsed counts as the internal date (RFC 5256 §2.2, §3):
  :func:`header_keys` then gives ``date=None`` and the store uses the row's internal
  date, which the caller may not know yet.
- Stored text holds what every backend stores: 8-bit header octets that are not
  UTF-8 become U+FFFD, NUL is dropped; Message-IDs and References hold no control
  characters.
- A header block above ``INLINE_LIMIT`` octets is parsed in a thread
  (:func:`header_keys_async`): a hostile header never holds the event loop.
"""

from __future__ import annotations

import asyncio
import datetime
import email.header
import email.utils
import re

from mailstack import mime
from mailstack.store import HeaderKeys

MAX_SUBJECT = 2000
MAX_REFERENCES = 128  # the last ones of a References field are kept
INLINE_LIMIT = 16 * 1024  # header octets parsed on the calling (event loop) thread
_WS = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:[ \t]|\(fwd\))+\Z", re.IGNORECASE)
_BLOB = re.compile(r"\[[^\[\]]*\][ \t]*")
_REFWD = re.compile(r"(?:re|fwd?)[ \t]*", re.IGNORECASE)
_MSGID = re.compile(r"<[^<>\s]*>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BLANK = re.compile(rb"\n\r?\n")
_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def casemap(text: str) -> str:
    """i;ascii-casemap: only ASCII a-z are folded (RFC 4790 §9.2)."""
    return text.translate(_UPPER)


def decode_words(value: str) -> str:
    """RFC 2047 encoded words to text; undecodable input stays as it is."""
    if "=?" not in value:
        return value  # no encoded word (the common case): nothing to decode
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # malformed encoded words
        return value


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 §2.1: (base subject, whether it was a reply or forward)."""
    s = _WS.sub(" ", decode_words(subject[:MAX_SUBJECT]))  # step 1
    reply = False
    while True:
        s = _TRAILER.sub("", s)  # step 2: trailing "(fwd)" and white space
        while True:
            before = s
            s = s.lstrip(" \t")  # step 3: subj-leader (white space, blobs + re/fwd)
            pos = 0
            while (m := _BLOB.match(s, pos)) is not None:
                pos = m.end()
            m = _REFWD.match(s, pos)
            if m is not None:
                end = m.end()
                b = _BLOB.match(s, end)
                if b is not None:
                    end = b.end()
                if s[end:end + 1] == ":":
                    s = s[end + 1:]
                    reply = True
            b = _BLOB.match(s)  # step 4: a leading blob, if something remains
            if b is not None and s[b.end():].strip(" \t"):
                s = s[b.end():]
            if s == before:
                break
        # step 5: "[fwd:" ... "]"
        if s[:5].lower() == "[fwd:" and s.endswith("]"):
            s = s[5:-1]
            reply = True
            continue
        return casemap(s.strip(" \t")), reply


def first_mailbox(value: str | None) -> tuple[str, str]:
    """(addr-mailbox, display form) of the first address (RFC 5256 §3, RFC 5957 §3)."""
    if not value:
        return "", ""
    for a in mime.parse_addresses(value):
        if a.mailbox is None or a.host is None:
            continue
        name = decode_words(a.name) if a.name else ""
        spec = f"{a.mailbox}@{a.host}"
        return casemap(a.mailbox), casemap(name or spec)
    return "", ""


def sent_date(value: str | None) -> float | None:
    """The Date field as UTC seconds; None when absent or unusable."""
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:  # "-0000": no zone information, taken as UTC
        dt = dt.replace(tzinfo=datetime.UTC)
    try:
        return dt.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def message_ids(fields: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """(Message-ID, references): the References field's last ``MAX_REFERENCES`` ids,
    or the In-Reply-To id without References (RFC 5256 §4 REFERENCES step 1)."""
    mid = _MSGID.search(fields.get("message-id", ""))
    refs = tuple(_MSGID.findall(fields.get("references", ""))[-MAX_REFERENCES:])
    if not refs:
        irt = _MSGID.search(fields.get("in-reply-to", ""))
        refs = (irt.group(),) if irt else ()
    return (mid.group() if mid else ""), refs


def storable(text: str) -> str:
    """Text any backend stores: raw 8-bit header bytes that are not UTF-8 (kept as
    surrogates when parsed) become U+FFFD, NUL is dropped (PostgreSQL text has none)."""
    if text.isascii():
        return text.replace("\x00", "") if "\x00" in text else text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace(
        "\x00", "")


def header_keys(header: bytes) -> HeaderKeys:
    """The keys to store for a message whose header block (or whole text) is
    ``header`` (every per-copy prefix included, as readers see it)."""
    f = mime.first_fields(header)
    subject, reply = base_subject(f.get("subject", ""))
    frm, dfrm = first_mailbox(f.get("from"))
    to, dto = first_mailbox(f.get("to"))
    cc, _ = first_mailbox(f.get("cc"))
    mid, refs = message_ids(f)
    s = storable
    return HeaderKeys(sent_date(f.get("date")), s(subject), reply, s(frm), s(to), s(cc),
                      s(dfrm), s(dto), _CONTROL.sub("", s(mid)),
                      _CONTROL.sub("", s(" ".join(refs))))


def header_end(data: bytes) -> int:
    """Where the header block of ``data`` ends (after its blank line, or at the end)."""
    if data.startswith((b"\r\n", b"\n")):
        return 2 if data[:1] == b"\r" else 1
    m = _BLANK.search(data)
    return len(data) if m is None else m.end()


async def header_keys_async(data: bytes) -> HeaderKeys:
    """:func:`header_keys` of the header block of ``data`` (a whole message or its
    header): inline when small, in a thread when the block is big."""
    head = data[:header_end(data)]
    if len(head) <= INLINE_LIMIT:
        return header_keys(head)
    return await asyncio.to_thread(header_keys, head)

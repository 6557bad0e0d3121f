"""CATENATE (RFC 4469): build an APPENDed message from literal TEXT parts and IMAP URLs
(RFC 5092) naming messages or parts of the same account.

Implementation notes (invariants):
- Only URLs of the logged-in account are resolved: relative ones ("/INBOX;..."),
  or absolute ones whose host is this server and whose user (if any) is the session's
  address. Anything else, an unknown mailbox, a UIDVALIDITY mismatch, a missing UID or
  section: ``NO [BADURL url]`` (RFC 4469 §6), and nothing is stored.
- Reading through a URL never sets \\Seen.
- The assembled size is checked against the plan's maximum message size while it grows
  (``NO [TOOBIG]``), so a few URLs cannot build an unbounded message.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote

from mailstack import mime
from mailstack.imap import respond
from mailstack.imap.session import Session

_URL = re.compile(
    r"(?:imap://(?:(?P<user>[^@/;]+)(?:;[^@/]*)?@)?(?P<host>[^/:]+)(?::\d+)?)?"
    r"/(?P<mailbox>[^;?]*?)(?:;UIDVALIDITY=(?P<uidvalidity>\d{1,10}))?"
    r"/;UID=(?P<uid>\d{1,10})"
    r"(?:/;SECTION=(?P<section>[^/;]+))?"
    r"(?:/;PARTIAL=(?P<origin>\d{1,10})(?:\.(?P<length>\d{1,10}))?)?\Z",
    re.IGNORECASE)
_SECTION = re.compile(r"(?P<part>\d+(?:\.\d+)*)?(?:\.?(?P<text>HEADER|TEXT|MIME))?\Z",
                      re.IGNORECASE)


def _bad(url: str, why: str) -> respond.No:
    return respond.No(f"{why}", f"BADURL {url}")


async def resolve(s: Session, url: str) -> bytes:
    """The octets an IMAP URL of this account names (RFC 5092 §5, RFC 4469 §5)."""
    m = _URL.match(url)
    if m is None:
        raise _bad(url, "Not an IMAP URL of a message")
    host, user = m.group("host"), m.group("user")
    if host is not None and host.lower() not in (s.services.hostname.lower(), "localhost"):
        raise _bad(url, "URL of another server")
    if user is not None and unquote(user).lower() != s.email.lower():
        raise _bad(url, "URL of another account")
    folder = await s.store.get_folder(s.address_id, unquote(m.group("mailbox")))
    if folder is None:
        raise _bad(url, "No such mailbox")
    if m.group("uidvalidity") and int(m.group("uidvalidity")) != folder.uidvalidity:
        raise _bad(url, "UIDVALIDITY changed")
    msgs = await s.store.get_messages(folder.id, [int(m.group("uid"))])
    if not msgs:
        raise _bad(url, "No such message")
    data = (await s.store.read_messages([(msgs[0].blob_id, msgs[0].prefix)]))[0]
    section = m.group("section")
    if section:
        sm = _SECTION.match(unquote(section))
        if sm is None or ((sm.group("text") or "").upper() == "MIME" and not sm.group("part")):
            raise _bad(url, "Unsupported section")
        part = tuple(int(p) for p in sm.group("part").split(".")) if sm.group("part") else ()
        text = (sm.group("text") or "").upper() or None
        parsed = await asyncio.to_thread(mime.parse_message, data) \
            if len(data) > 256 * 1024 else mime.parse_message(data)
        got = mime.section_bytes(data, parsed, part, text)
        if got is None:
            raise _bad(url, "No such section")
        data = got
    if m.group("origin") is not None:
        origin = int(m.group("origin"))
        length = int(m.group("length")) if m.group("length") else len(data)
        data = data[origin:origin + length]
    return data


async def assemble(s: Session, parts: tuple[tuple[str, bytes | str], ...]) -> bytes:
    out: list[bytes] = []
    size = 0
    for _kind, value in parts:
        chunk = value if isinstance(value, bytes) else await resolve(s, str(value))
        size += len(chunk)
        if size > s.max_message_size:
            raise respond.No("Message too big", "TOOBIG")
        out.append(chunk)
    return b"".join(out)

"""Pure pieces of an import (docs/behaviour.md §9): reading the source server's LIST and
FETCH answers, mapping its folders onto ours, and planning FETCH batches. No sockets.

Folder mapping (RFC 6154 special-use first, then well-known names):
- ``INBOX`` (any case) is our INBOX.
- A folder flagged ``\\Sent``, ``\\Drafts``, ``\\Trash``, ``\\Junk`` or ``\\Archive`` goes
  to ours with the same special use; without flags, a top-level folder with a common
  name of such a folder ("Sent Items", "Deleted Items", "Spam", ...) does too.
- ``\\All`` and ``\\Flagged`` folders (Gmail's "All Mail", "Starred") are views of mail
  that sits in other folders: skipped unless the filter names them.
- ``\\Noselect`` / ``\\NonExistent`` names hold no messages: not copied (their children
  are, and create the parents they need).
- Every other folder keeps its hierarchy: names are decoded from modified UTF-7
  (RFC 3501 §5.1.3), split on the source's delimiter and joined with ours ("/"); a
  personal-namespace prefix ``INBOX.`` (Courier, old Dovecot) is dropped.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..imap import mutf7

SPECIAL = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive")
OUR_NAMES = {"\\Sent": "Sent", "\\Drafts": "Drafts", "\\Trash": "Trash", "\\Junk": "Junk",
             "\\Archive": "Archive"}
WELL_KNOWN = {
    "sent": "\\Sent", "sent items": "\\Sent", "sent messages": "\\Sent",
    "sent mail": "\\Sent", "drafts": "\\Drafts", "draft": "\\Drafts",
    "trash": "\\Trash", "deleted items": "\\Trash", "deleted messages": "\\Trash",
    "bin": "\\Trash", "junk": "\\Junk", "spam": "\\Junk", "junk e-mail": "\\Junk",
    "junk email": "\\Junk", "bulk mail": "\\Junk", "archive": "\\Archive",
    "archives": "\\Archive",
}
VIEWS = ("\\All", "\\Flagged")


class SourceProtocolError(ValueError):
    """The source server answered something this reader cannot understand."""


@dataclass(frozen=True)
class SourceFolder:
    raw: str  # the name as the server spells it (modified UTF-7): for SELECT
    name: str  # decoded
    delimiter: str | None
    flags: frozenset[str]

    @property
    def selectable(self) -> bool:
        low = {f.lower() for f in self.flags}
        return not ({"\\noselect", "\\nonexistent"} & low)

    @property
    def special_use(self) -> str | None:
        low = {f.lower(): f for f in self.flags}
        for s in SPECIAL:
            if s.lower() in low:
                return s
        return None


@dataclass(frozen=True)
class FolderPlan:
    source: SourceFolder
    target: str  # our folder name ("/" delimited)
    special_use: str | None  # when the target is one of our special-use folders


@dataclass(frozen=True)
class Fetched:
    """One message of a FETCH answer."""

    uid: int
    flags: frozenset[str]
    internal_date: float | None
    size: int | None
    body: bytes | None  # None: the server sent no BODY[] (it could not deliver it)


# --- LIST ----------------------------------------------------------------------------

_LIST_HEAD = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<delim>NIL|"(?:[^"\\]|\\.)*") ?(?P<rest>.*)$',
                        re.S)


def _unquote(b: bytes) -> bytes:
    if len(b) >= 2 and b[:1] == b'"' and b[-1:] == b'"':
        return re.sub(rb"\\(.)", rb"\1", b[1:-1])
    return b


def parse_list(lines: Sequence[bytes | tuple[bytes, bytes]]) -> list[SourceFolder]:
    """Folders from imaplib's ``list()`` data (lines, or (head, literal) pairs when the
    name came as a literal)."""
    out: list[SourceFolder] = []
    for item in lines:
        if item is None:
            continue
        literal: bytes | None = None
        if isinstance(item, tuple):
            head, literal = item[0], item[1]
        else:
            head = item
        m = _LIST_HEAD.match(head)
        if m is None:
            raise SourceProtocolError(f"unexpected LIST line {head[:200]!r}")
        flags = frozenset(f.decode("ascii", "replace") for f in m.group("flags").split())
        delim_raw = m.group("delim")
        delim = None if delim_raw == b"NIL" else _unquote(delim_raw).decode("ascii", "replace")
        raw_name = literal if literal is not None else _unquote(m.group("rest").strip())
        raw = raw_name.decode("utf-8", "replace")
        try:
            name = mutf7.decode(raw_name)
        except ValueError:
            name = raw  # not canonical modified UTF-7 (or UTF-8): keep it as it is
        out.append(SourceFolder(raw, name, delim, flags))
    return out


def quote(name: str) -> str:
    """A mailbox name as an IMAP quoted string (for SELECT/EXAMINE)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plan_folders(folders: Iterable[SourceFolder], wanted: Sequence[str] = ()
                 ) -> list[FolderPlan]:
    """Which source folders to copy, and where to. ``wanted``: names (decoded, any
    case) to copy with their children; empty = all."""
    out: list[FolderPlan] = []
    want = [w.strip().lower() for w in wanted if w.strip()]
    for f in folders:
        if not f.selectable:
            continue
        low = f.name.lower()
        chosen = not want or any(low == w or (f.delimiter and low.startswith(
            w + f.delimiter.lower())) for w in want)
        if not chosen:
            continue
        if not want and {x.lower() for x in f.flags} & {v.lower() for v in VIEWS}:
            continue
        out.append(map_folder(f))
    return out


def map_folder(f: SourceFolder) -> FolderPlan:
    if f.name.upper() == "INBOX":
        return FolderPlan(f, "INBOX", None)
    parts = f.name.split(f.delimiter) if f.delimiter else [f.name]
    if f.delimiter == "." and len(parts) > 1 and parts[0].upper() == "INBOX":
        parts = parts[1:]  # Courier-style personal namespace "INBOX."
    special = f.special_use
    if special is None and len(parts) == 1:
        special = WELL_KNOWN.get(parts[0].strip().lower())
    if special is not None:
        return FolderPlan(f, OUR_NAMES[special], special)
    clean = [p.replace("/", "_").strip() or "_" for p in parts]
    return FolderPlan(f, "/".join(clean), None)


# --- FETCH ---------------------------------------------------------------------------

_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_DATE = re.compile(rb'\bINTERNALDATE "([^"]+)"')
_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
_BODY = re.compile(rb"\bBODY\[\] \{(\d+)\}$")


def internal_date(text: bytes) -> float | None:
    """``17-Jul-1996 02:44:25 -0700`` (RFC 9051 date-time) as epoch seconds."""
    try:
        parsed = time.strptime(text.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None
    return float(calendar.timegm(parsed)) - (parsed.tm_gmtoff or 0)


def parse_fetch(data: Sequence[bytes | tuple[bytes, bytes] | None]) -> list[Fetched]:
    """Messages from imaplib's ``uid('FETCH', ...)`` data. Unsolicited FETCH answers
    without a UID (flag updates from other sessions) are ignored."""
    out: list[Fetched] = []
    pending: list[bytes] = []
    body: bytes | None = None

    def flush() -> None:
        nonlocal body
        text = b" ".join(pending)
        pending.clear()
        m = _UID.search(text)
        if m is None:
            body = None
            return
        fl = _FLAGS.search(text)
        flags = frozenset(x.decode("utf-8", "replace") for x in fl.group(1).split()) \
            if fl else frozenset()
        dt = _DATE.search(text)
        sz = _SIZE.search(text)
        out.append(Fetched(int(m.group(1)), flags,
                           internal_date(dt.group(1)) if dt else None,
                           int(sz.group(1)) if sz else None, body))
        body = None

    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            head, literal = item
            if re.match(rb"^\d+ \(", head) and pending:
                flush()
            pending.append(head)
            if _BODY.search(head):
                body = literal
            continue
        if re.match(rb"^\d+ \(", item):
            if pending:
                flush()
            pending.append(item)
        else:
            pending.append(item)
    if pending:
        flush()
    return out


def batches(sizes: Sequence[tuple[int, int]], max_messages: int, max_bytes: int
            ) -> list[list[int]]:
    """UIDs grouped for FETCH: at most ``max_messages`` and ``max_bytes`` per group; a
    message bigger than ``max_bytes`` goes alone. ``sizes``: (uid, size) in UID order."""
    out: list[list[int]] = []
    cur: list[int] = []
    total = 0
    for uid, size in sizes:
        if cur and (len(cur) >= max_messages or total + size > max_bytes):
            out.append(cur)
            cur, total = [], 0
        cur.append(uid)
        total += size
    if cur:
        out.append(cur)
    return out


def uid_set(uids: Sequence[int]) -> str:
    """A compact UID set (``1:5,7,9:10``) for a sorted list."""
    parts: list[str] = []
    start = prev = None
    for u in uids:
        if start is None:
            start = prev = u
        elif prev is not None and u == prev + 1:
            prev = u
        else:
            parts.append(f"{start}:{prev}" if start != prev else str(start))
            start = prev = u
    if start is not None:
        parts.append(f"{start}:{prev}" if start != prev else str(start))
    return ",".join(parts)

"""Authenticated-state commands (RFC 9051 §6.3): SELECT, EXAMINE, CREATE, DELETE,
RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (RFC 5258, 5819, 6154), LSUB, STATUS, APPEND.

Invariants:
- Mailbox names are data, never paths: they reach the store as parameters. Names with
  empty, "." or ".." components, control characters or over 255 characters are
  refused with ``NO [CANNOT]`` (docs/behaviour.md §12 "names as paths or SQL").
- LIST patterns are matched here in Python (``*`` any, ``%`` any but "/"), so "%" and
  "_" in names never reach SQL LIKE.
- APPEND acknowledges only after the store committed (blob fsynced first), RFC 9051
  §6.3.12; the reply carries APPENDUID (RFC 4315 §3). MULTIAPPEND (RFC 3502) is all
  or nothing: every message is checked first, then all are stored in ONE transaction.
- SELECT/EXAMINE always report HIGHESTMODSEQ (RFC 7162 §3.1.2.1: every folder keeps
  MODSEQs, so NOMODSEQ never happens). With QRESYNC (RFC 7162 §3.2.5) the changes since
  the client's MODSEQ follow: VANISHED (EARLIER) for UIDs expunged before the view was
  taken (the store keeps every expunged UID with its MODSEQ, so seq-match-data is not
  needed and is ignored), then FETCH (UID FLAGS MODSEQ) for changed messages in view.
"""

from __future__ import annotations

import re

from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.mailbox_view import MailboxView
from mailstack.imap.session import SELECTED, Session
from mailstack.store import Folder, FolderStatus

SYSTEM_FLAGS = "(\\Seen \\Answered \\Flagged \\Deleted \\Draft)"
SPECIAL_USES = frozenset({"\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent",
                          "\\Trash"})


def check_name(name: str) -> str:
    """A name a client may create (docs/behaviour.md §12): returns it without a trailing "/"."""
    if name.endswith("/"):
        name = name[:-1]  # RFC 9051 §6.3.4: trailing delimiter = intent to have children
    if not name or len(name) > 255:
        raise respond.No("Bad mailbox name length", "CANNOT")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise respond.No("Control characters are not allowed in mailbox names", "CANNOT")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise respond.No("Empty, '.' and '..' hierarchy levels are not allowed",
                             "CANNOT")
    return name


async def folder_or_no(s: Session, name: str, code: str = "NONEXISTENT") -> Folder:
    folder = await s.store.get_folder(s.address_id, name)
    if folder is None:
        raise respond.No(f"No such mailbox: {name}", code)
    return folder


# --- SELECT / EXAMINE ---------------------------------------------------------------
async def select(s: Session, c: t.Select) -> str | None:
    if c.qresync is not None and not s.qresync:
        raise respond.Bad("ENABLE QRESYNC first")  # RFC 7162 §3.2.5
    if s.view is not None:
        s.deselect()
        s.send(respond.untagged("OK [CLOSED] Previous mailbox closed"))  # RFC 9051 §7.1
    assert s.sub is not None
    s.view = None
    s.sub.close()
    s.sub = s.store.events.subscribe(s.address_id)  # fresh queue: no stale events
    opened = await s.store.open_folder(s.address_id, c.mailbox)  # one read transaction
    if opened is None:
        raise respond.No(f"No such mailbox: {c.mailbox}", "NONEXISTENT")
    folder, uids, first = opened
    view = MailboxView(s.store, folder, uids, readonly=c.readonly, subscription=s.sub)
    if c.condstore or c.qresync is not None:
        s.enable_condstore()  # RFC 7162 §3.1.8
    view.condstore, view.qresync = s.condstore, s.qresync
    s.send(respond.untagged(f"{view.exists} EXISTS"))
    if not s.rev2:
        s.send(respond.untagged("0 RECENT"))  # RFC 3501 §6.3.1; gone in rev2
        unseen = view.seq_of(first) if first is not None else None
        if unseen is not None:
            s.send(respond.untagged(f"OK [UNSEEN {unseen}] First unseen"))
    s.send(respond.untagged(f"FLAGS {SYSTEM_FLAGS}"))
    perm = "()" if c.readonly else "(\\Seen \\Answered \\Flagged \\Deleted \\Draft \\*)"
    s.send(respond.untagged(f"OK [PERMANENTFLAGS {perm}] Flags permitted"))
    s.send(respond.untagged(f"OK [UIDVALIDITY {folder.uidvalidity}] UIDs valid"))
    s.send(respond.untagged(f"OK [UIDNEXT {folder.uidnext}] Predicted next UID"))
    s.send(respond.untagged(f"OK [HIGHESTMODSEQ {folder.highestmodseq}] Highest"))
    if s.rev2:  # RFC 9051 §6.3.2: LIST response for the selected mailbox
        s.send(b'* LIST () "/" ' + respond.mailbox(folder.name, s.utf8) + b"\r\n")
    s.view = view
    s.state = SELECTED
    if c.qresync is not None and c.qresync.uidvalidity == folder.uidvalidity:
        await _qresync(s, view, c.qresync)  # else ignored (RFC 7162 §3.2.5.2)
    mode = "READ-ONLY" if c.readonly else "READ-WRITE"
    return f"[{mode}] {'EXAMINE' if c.readonly else 'SELECT'} completed"


async def _qresync(s: Session, view: MailboxView, q: t.QResync) -> None:
    """RFC 7162 §3.2.5.2: what changed since ``q.modseq``, limited to the known UIDs."""
    largest = max(view.folder.uidnext - 1, view.uids[-1] if view.uids else 0)
    known = q.known_uids.intervals(largest) if q.known_uids is not None else None

    def is_known(uid: int) -> bool:
        return known is None or any(a <= uid <= b for a, b in known)

    in_view = set(view.uids)
    # UIDs expunged after the view was taken are still in it: their VANISHED comes later
    gone = [u for u in await s.store.expunged_since(view.folder_id, q.modseq)
            if is_known(u) and u not in in_view]
    if gone:
        s.send(respond.untagged(f"VANISHED (EARLIER) {respond.seq_set(gone)}"))
    out: list[bytes] = []
    for m in await s.store.changed_since(view.folder_id, q.modseq):
        seq = view.seq_of(m.uid)
        if seq is None or not is_known(m.uid):
            continue
        out.append(respond.untagged(
            f"{seq} FETCH (UID {m.uid} FLAGS {respond.flag_list(m.flags)} MODSEQ ({m.modseq}))"))
        if len(out) >= 1024:
            s.send(b"".join(out))
            out = []
            await s.conn.drain()
    s.send(b"".join(out))


# --- CREATE / DELETE / RENAME / SUBSCRIBE ---------------------------------------------
async def create(s: Session, c: t.Create) -> str | None:
    name = check_name(c.mailbox)
    if name.upper() == "INBOX":
        raise respond.No("INBOX always exists", "ALREADYEXISTS")
    use = None
    if c.special_use:
        if len(c.special_use) > 1 or c.special_use[0] not in SPECIAL_USES:
            raise respond.No("Unsupported special-use attribute", "USEATTR")  # RFC 6154
        use = c.special_use[0]
    if await s.store.get_folder(s.address_id, name) is not None:
        raise respond.No("Mailbox already exists", "ALREADYEXISTS")
    parts = name.split("/")
    for i in range(1, len(parts)):  # RFC 9051 §6.3.4: create superior names too
        parent = "/".join(parts[:i])
        if parent.upper() != "INBOX" and await s.store.get_folder(s.address_id, parent) is None:
            await s.store.create_folder(s.address_id, parent)
    await s.store.create_folder(s.address_id, name, use)
    return None


async def delete(s: Session, c: t.Delete) -> str | None:
    if c.mailbox == "INBOX":
        raise respond.No("INBOX cannot be deleted", "CANNOT")  # RFC 9051 §6.3.5
    await s.store.delete_folder(s.address_id, c.mailbox)
    if s.view is not None and s.view.folder.name == c.mailbox:
        s.deselect()
    return None


async def rename(s: Session, c: t.Rename) -> str | None:
    new = check_name(c.new_name)
    await folder_or_no(s, c.mailbox)
    if await s.store.get_folder(s.address_id, new) is not None:
        raise respond.No("Target mailbox already exists", "ALREADYEXISTS")
    await s.store.rename_folder(s.address_id, c.mailbox, new)
    return None


async def subscribe(s: Session, c: t.Subscribe) -> str | None:
    await folder_or_no(s, c.mailbox)
    await s.store.set_subscribed(s.address_id, c.mailbox, True)
    return None


async def unsubscribe(s: Session, c: t.Unsubscribe) -> str | None:
    await folder_or_no(s, c.mailbox)
    await s.store.set_subscribed(s.address_id, c.mailbox, False)
    return None


# --- LIST / LSUB / STATUS -------------------------------------------------------------
def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 9051 §6.3.9: "*" matches anything, "%" anything but the delimiter."""
    full = reference + pattern if not pattern.startswith("/") or not reference else pattern
    out = []
    for ch in full:
        out.append(".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch))
    rx = "".join(out)
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] == "/"):
        rx = "(?i:INBOX)" + "".join(out[5:])
    return re.compile(rx + r"\Z", re.DOTALL)


def _status_items(status: FolderStatus, items: tuple[str, ...], max_size: int) -> str:
    values = {"MESSAGES": status.messages, "UIDNEXT": status.uidnext,
              "UIDVALIDITY": status.uidvalidity, "UNSEEN": status.unseen,
              "DELETED": status.deleted, "SIZE": status.size, "RECENT": 0,
              "HIGHESTMODSEQ": status.highestmodseq, "APPENDLIMIT": max_size}
    return " ".join(f"{i} {values[i]}" for i in items if i in values)


async def _status_line(s: Session, folder: Folder, items: tuple[str, ...]) -> bytes:
    if "HIGHESTMODSEQ" in items:
        s.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE-enabling command
    st = await s.store.folder_status(folder.id)
    return (b"* STATUS " + respond.mailbox(folder.name, s.utf8) + b" ("
            + _status_items(st, items, s.max_message_size).encode() + b")\r\n")


async def status(s: Session, c: t.Status) -> str | None:
    folder = await folder_or_no(s, c.mailbox)
    s.send(await _status_line(s, folder, c.items))
    return None


async def list_(s: Session, c: t.List) -> str | None:
    if c.patterns == ("",) and not c.extended:
        # RFC 9051 §6.3.9: the delimiter and root
        s.send(b'* LIST (\\Noselect) "/" ""\r\n')
        return None
    folders = await s.store.list_folders(s.address_id)
    by_name = {f.name: f for f in folders}
    names = set(by_name)
    implied = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    subscribed_only = "SUBSCRIBED" in c.selection
    special_only = "SPECIAL-USE" in c.selection
    want_sub = subscribed_only or "SUBSCRIBED" in c.return_options
    want_special = not c.extended or "SPECIAL-USE" in c.return_options or special_only \
        or not c.return_options
    regexes = [pattern_regex(c.reference, p) for p in c.patterns if p != ""]
    for name in sorted(names | (implied - names), key=lambda n: (n != "INBOX", n)):
        if not any(rx.match(name) for rx in regexes):
            continue
        folder = by_name.get(name)
        if folder is None and not any("%" in p for p in c.patterns):
            continue
        if folder is None:
            # An implied parent: only reported where "%" stops at it (RFC 9051 §6.3.9)
            if subscribed_only or special_only:
                continue
            attrs = ["\\NonExistent" if c.extended else "\\Noselect", "\\HasChildren"]
        else:
            if subscribed_only and not folder.subscribed:
                continue
            if special_only and not folder.special_use:
                continue
            attrs = []
            has_kids = any(n.startswith(name + "/") for n in names)
            attrs.append("\\HasChildren" if has_kids else "\\HasNoChildren")
            if want_special and folder.special_use:
                attrs.append(folder.special_use)
            if want_sub and folder.subscribed:
                attrs.append("\\Subscribed")
        s.send(b"* LIST (" + " ".join(attrs).encode() + b') "/" '
               + respond.mailbox(name, s.utf8) + b"\r\n")
        if c.status_items and folder is not None:  # RFC 5819 §2
            s.send(await _status_line(s, folder, c.status_items))
    return None


async def lsub(s: Session, c: t.Lsub) -> str | None:
    rx = pattern_regex(c.reference, c.pattern)
    for f in await s.store.list_folders(s.address_id):
        if f.subscribed and rx.match(f.name):
            s.send(b'* LSUB () "/" ' + respond.mailbox(f.name, s.utf8) + b"\r\n")
    return None


# --- APPEND ---------------------------------------------------------------------------
_SYSTEM = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


async def append(s: Session, c: t.Append) -> str | None:
    """RFC 9051 §6.3.12; several messages = MULTIAPPEND (RFC 3502): every message is
    checked before anything is stored, then all go in one store transaction."""
    folder = await s.store.get_folder(s.address_id, c.mailbox)
    if folder is None:
        raise respond.No(f"No such mailbox: {c.mailbox}", "TRYCREATE")  # RFC 9051 §6.3.12
    items: list[tuple[bytes, list[str], float | None]] = []
    for m in c.messages:
        if len(m.data) > s.max_message_size:
            raise respond.No("Message too big", "TOOBIG")
        if not m.data:
            raise respond.No("Empty message", "CANNOT")
        flags = [f for f in m.flags if f != "\\Recent"]
        if any(f.startswith("\\") and f not in _SYSTEM for f in flags):
            raise respond.Bad("Unknown system flag")
        when = m.internal_date.timestamp() if m.internal_date is not None else None
        items.append((m.data, flags, when))
    if len(items) == 1:
        data, flags, when = items[0]
        msgs = [await s.store.append(folder.id, data, flags=flags, internal_date=when)]
    else:
        msgs = await s.store.append_many(folder.id, items)
    uids = respond.seq_set(m.uid for m in msgs)
    return f"[APPENDUID {folder.uidvalidity} {uids}] APPEND completed"  # RFC 4315 §3

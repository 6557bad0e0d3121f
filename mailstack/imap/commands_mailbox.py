"""Authenticated-state commands (RFC 9051 §6.3): SELECT, EXAMINE, CREATE, DELETE,
RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (RFC 5258, 5819, 6154), LSUB, STATUS, APPEND.

Invariants:
- Mailbox names are data, never paths: they reach the store as parameters. Names with
  empty, "." or ".." components, control characters or over 255 characters are
  refused with ``NO [CANNOT]`` (docs/behaviour.md §12 "names as paths or SQL").
- LIST patterns are matched here in Python by a linear matcher (``mailstack.imap.pattern``:
  ``*`` any, ``%`` any but "/"), so "%" and "_" in names never reach SQL LIKE and no
  pattern can stall the event loop; over-long patterns get NO [LIMIT].
- APPEND acknowledges only after the store committed (blob fsynced first), RFC 9051
  §6.3.12; the reply carries APPENDUID (RFC 4315 §3). MULTIAPPEND (RFC 3502) is all
  or nothing: every message is checked first, then all are stored in ONE transaction.
- SELECT/EXAMINE list the mailbox's keywords in FLAGS / PERMANENTFLAGS (RFC 3501
  §7.2.6); an IMAP4rev1 SELECT claims the not yet seen messages as \\Recent (§2.3.2).
- SELECT/EXAMINE always report HIGHESTMODSEQ (RFC 7162 §3.1.2.1: every folder keeps
  MODSEQs, so NOMODSEQ never happens). With QRESYNC (RFC 7162 §3.2.5) the changes since
  the client's MODSEQ follow: VANISHED (EARLIER) for UIDs expunged before the view was
  taken (the store keeps every expunged UID with its MODSEQ, so seq-match-data is not
  needed and is ignored), then FETCH (UID FLAGS MODSEQ) for changed messages in view.
"""

from __future__ import annotations

import asyncio

from mailstack.headerkeys import header_keys_async
from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.append_convert import convert_binary, needs_conversion
from mailstack.imap.catenate import assemble
from mailstack.imap.commands_quota import check as check_quota
from mailstack.imap.mailbox_view import MailboxView
from mailstack.imap.pattern import MAX_PATTERNS, Pattern, PatternTooLong, compile_pattern
from mailstack.imap.session import SELECTED, Session
from mailstack.store import Folder, FolderStatus, NotFound

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
    opened = await s.store.select_folder(s.address_id, c.mailbox)  # one read transaction
    if opened is None:
        raise respond.No(f"No such mailbox: {c.mailbox}", "NONEXISTENT")
    folder, uids, first = opened.folder, opened.uids, opened.first_unseen
    view = MailboxView(s.store, folder, uids, readonly=c.readonly, subscription=s.sub)
    if c.condstore or c.qresync is not None:
        s.enable_condstore()  # RFC 7162 §3.1.8
    view.condstore, view.qresync = s.condstore, s.qresync
    view.rev1 = not s.rev2
    # RFC 3501 §2.3.2: only rev1 sessions see \\Recent; a write only if some are unclaimed
    await view.claim_recent(uids, opened.first_recent)
    view.note_keywords(opened.keywords)  # RFC 3501 §7.2.6
    s.send(respond.untagged(f"{view.exists} EXISTS"))
    if not s.rev2:
        s.send(respond.untagged(f"{len(view.recent)} RECENT"))  # RFC 3501 §6.3.1
        unseen = view.seq_of(first) if first is not None else None
        if unseen is not None:
            s.send(respond.untagged(f"OK [UNSEEN {unseen}] First unseen"))
    for line in view.flags_response():
        s.send(line)
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
        out += view.announce(m.flags)
        out.append(respond.untagged(
            f"{seq} FETCH (UID {m.uid} FLAGS {view.flags_text(m.uid, m.flags)} "
            f"MODSEQ ({m.modseq}))"))
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
    # also a name whose mailbox was deleted while subscribed (RFC 3501 §6.3.6)
    try:
        await s.store.set_subscribed(s.address_id, c.mailbox, False)
    except NotFound:
        raise respond.No(f"Not subscribed: {c.mailbox}", "NONEXISTENT") from None
    return None


# --- LIST / LSUB / STATUS -------------------------------------------------------------
def patterns_of(reference: str, patterns: tuple[str, ...]) -> list[Pattern]:
    """Compiled LIST/LSUB patterns; too long or too many: NO [LIMIT] (RFC 5530 §3)."""
    if len(patterns) > MAX_PATTERNS:
        raise respond.No(f"At most {MAX_PATTERNS} patterns per command", "LIMIT")
    try:
        return [compile_pattern(reference, p) for p in patterns if p != ""]
    except PatternTooLong as exc:
        raise respond.No(f"Mailbox pattern too long: {exc}", "LIMIT") from None


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _status_items(status: FolderStatus, items: tuple[str, ...], max_size: int,
                  recent: int = 0, deleted_storage: int = 0) -> str:
    values = {"MESSAGES": status.messages, "UIDNEXT": status.uidnext,
              "DELETED-STORAGE": deleted_storage,
              "UIDVALIDITY": status.uidvalidity, "UNSEEN": status.unseen,
              "DELETED": status.deleted, "SIZE": status.size, "RECENT": recent,
              "HIGHESTMODSEQ": status.highestmodseq, "APPENDLIMIT": max_size}
    return " ".join(f"{i} {values[i]}" for i in items if i in values)


async def _status_line(s: Session, folder: Folder, items: tuple[str, ...]) -> bytes:
    if "HIGHESTMODSEQ" in items:
        s.enable_condstore()  # RFC 7162 §3.1: a CONDSTORE-enabling command
    st = await s.store.folder_status(folder.id)
    recent = 0
    if "RECENT" in items:  # RFC 3501 §6.3.10: not yet seen as recent by any session
        view = s.view
        recent = await s.store.recent_count(folder.id)
        if view is not None and view.folder_id == folder.id:
            recent += len(view.recent)
    deleted_storage = 0
    if "DELETED-STORAGE" in items:  # RFC 9208 §4.4: octets of \Deleted messages
        deleted_storage = await s.store.deleted_storage(folder.id)
    return (b"* STATUS " + respond.mailbox(folder.name, s.utf8) + b" ("
            + _status_items(st, items, s.max_message_size, recent,
                            deleted_storage).encode() + b")\r\n")


async def status(s: Session, c: t.Status) -> str | None:
    folder = await folder_or_no(s, c.mailbox)
    s.send(await _status_line(s, folder, c.items))
    return None


async def list_(s: Session, c: t.List) -> str | None:
    """RFC 9051 §6.3.9 with LIST-EXTENDED (RFC 5258): SUBSCRIBED selection also lists
    subscribed names whose mailbox was deleted (``\\NonExistent``, RFC 5258 §3.1);
    RECURSIVEMATCH lists matching parents of mailboxes that meet the selection with
    CHILDINFO (RFC 5258 §3.5)."""
    if c.patterns == ("",) and not c.extended:
        # RFC 9051 §6.3.9: the delimiter and root
        s.send(b'* LIST (\\Noselect) "/" ""\r\n')
        return None
    pats = patterns_of(c.reference, c.patterns)
    subscribed_only = "SUBSCRIBED" in c.selection
    special_only = "SPECIAL-USE" in c.selection
    recursive = "RECURSIVEMATCH" in c.selection
    want_sub = subscribed_only or "SUBSCRIBED" in c.return_options
    want_special = not c.extended or "SPECIAL-USE" in c.return_options or special_only \
        or not c.return_options
    folders = await s.store.list_folders(s.address_id)
    by_name = {f.name: f for f in folders}
    orphans = set(await s.store.orphan_subscriptions(s.address_id)) if want_sub else set()
    parents = {a for n in by_name for a in _ancestors(n)}

    def selected(name: str) -> bool:
        f = by_name.get(name)
        if subscribed_only and not (name in orphans or (f is not None and f.subscribed)):
            return False
        return not special_only or (f is not None and f.special_use is not None)

    candidates = set(by_name) | (orphans if subscribed_only else set())
    childinfo: set[str] = set()  # names with a descendant meeting the selection
    if recursive:
        childinfo = {a for n in candidates if selected(n) for a in _ancestors(n)}
    names = candidates | parents | childinfo
    percent = any("%" in p for p in c.patterns)
    info_opts = " ".join(f'"{o}"' for o in sorted(c.selection - {"RECURSIVEMATCH", "REMOTE"}))
    for name in sorted(names, key=lambda n: (n != "INBOX", n)):
        if not any(p.match(name) for p in pats):
            continue
        folder = by_name.get(name)
        attrs: list[str] = []
        extra = b""
        if name in candidates and selected(name):
            if folder is None:
                attrs.append("\\NonExistent")  # a subscription that outlived DELETE
            else:
                attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
                if want_special and folder.special_use:
                    attrs.append(folder.special_use)
            if want_sub and (name in orphans or (folder is not None and folder.subscribed)):
                attrs.append("\\Subscribed")
        elif name in childinfo:
            if folder is None:
                attrs.append("\\NonExistent")
            elif want_sub and folder.subscribed:
                attrs.append("\\Subscribed")
        elif folder is None and name in parents and percent and not c.selection:
            # An implied parent: only reported where "%" stops at it (RFC 9051 §6.3.9)
            attrs = ["\\NonExistent" if c.extended else "\\Noselect", "\\HasChildren"]
        else:
            continue
        if name in childinfo and info_opts:
            extra = f' ("CHILDINFO" ({info_opts}))'.encode()
        s.send(b"* LIST (" + " ".join(attrs).encode() + b') "/" '
               + respond.mailbox(name, s.utf8) + extra + b"\r\n")
        if c.status_items and folder is not None:  # RFC 5819 §2
            s.send(await _status_line(s, folder, c.status_items))
    return None


async def lsub(s: Session, c: t.Lsub) -> str | None:
    """RFC 3501 §6.3.9: subscribed names (also of deleted mailboxes, §6.3.6); with "%",
    an unsubscribed parent of a subscribed name is listed as \\Noselect."""
    pats = patterns_of(c.reference, (c.pattern,))
    folders = await s.store.list_folders(s.address_id)
    existing = {f.name for f in folders}
    orphans = set(await s.store.orphan_subscriptions(s.address_id))
    subscribed = {f.name for f in folders if f.subscribed} | orphans
    parents = {a for n in subscribed for a in _ancestors(n)} if "%" in c.pattern else set()
    for name in sorted(subscribed | parents, key=lambda n: (n != "INBOX", n)):
        if not any(p.match(name) for p in pats):
            continue
        noselect = name not in subscribed or name not in existing
        s.send(b"* LSUB (" + (b"\\Noselect" if noselect else b"") + b') "/" '
               + respond.mailbox(name, s.utf8) + b"\r\n")
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
        data = await assemble(s, m.catenate) if m.catenate else m.data  # RFC 4469
        if needs_conversion(data):  # binary parts are stored base64-encoded
            data = await asyncio.to_thread(convert_binary, data) \
                if len(data) > 256 * 1024 else convert_binary(data)
        if len(data) > s.max_message_size:
            raise respond.No("Message too big", "TOOBIG")
        if not data:
            raise respond.No("Empty message", "CANNOT")
        flags = [f for f in m.flags if f != "\\Recent"]
        if any(f.startswith("\\") and f not in _SYSTEM for f in flags):
            raise respond.Bad("Unknown system flag")
        when = m.internal_date.timestamp() if m.internal_date is not None else None
        items.append((data, flags, when))
    await check_quota(s, sum(len(d) for d, _, _ in items), len(items))  # RFC 9208 §4.6
    # appending to its own selected mailbox, an IMAP4rev1 session claims the new
    # messages as \\Recent (RFC 3501 §2.3.2) in the APPEND's transaction, not in a
    # second write when it is told about them
    view = s.view
    claim = view is not None and view.folder_id == folder.id and view.claims_recent
    keys = [await header_keys_async(d) for d, _, _ in items]  # RFC 5256 sort keys
    msgs, old = await s.store.append_claiming(folder.id, items, keys, claim_recent=claim)
    if view is not None and old is not None and msgs:
        view.claimed.append((old, msgs[-1].uid + 1))
    # the 90 % warning (behaviour.md §3)
    s.services.notifier.after_storing([s.email], sum(len(d) for d, _, _ in items))
    uids = respond.seq_set(m.uid for m in msgs)
    return f"[APPENDUID {folder.uidvalidity} {uids}] APPEND completed"  # RFC 4315 §3

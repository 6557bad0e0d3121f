"""Selected-state commands (RFC 9051 §6.4): CHECK, CLOSE, UNSELECT, EXPUNGE, UID
EXPUNGE, STORE, COPY, MOVE (RFC 6851), and IDLE (RFC 9051 §6.3.13, also valid when
only authenticated).

Invariants:
- A read-only (EXAMINE) session changes nothing: STORE, EXPUNGE, MOVE answer NO;
  CLOSE then expunges nothing (RFC 9051 §6.4.1).
- Changes are committed by the store first; the session then removes expunged UIDs
  from its view while sending their EXPUNGE responses (highest number first).
- COPY/MOVE to a missing mailbox: ``NO [TRYCREATE]``; replies carry COPYUID
  (RFC 4315 §3). MOVE sends COPYUID in an untagged OK before the EXPUNGEs (RFC 6851 §4.3).
- IDLE delivers every change at once, EXPUNGE included, until the client's DONE.
- With QRESYNC on, EXPUNGE / UID EXPUNGE / MOVE report removals as VANISHED (via
  ``MailboxView.remove``) and, with CONDSTORE on, end with [HIGHESTMODSEQ n].
"""

from __future__ import annotations

import asyncio

from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.commands_quota import check as check_quota
from mailstack.imap.contexts import flush_view, removing
from mailstack.imap.mailbox_view import MailboxView
from mailstack.imap.parser import is_idle_done
from mailstack.imap.session import Session
from mailstack.store import Folder

_STORE_MODE = {"+": "add", "-": "remove", "": "replace"}
_SYSTEM = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


def writable(s: Session) -> MailboxView:
    view = s.require_view()
    if view.readonly:
        raise respond.No("Mailbox is read-only")
    return view


async def check(s: Session, c: t.Check) -> str | None:
    return None


async def close(s: Session, c: t.Close) -> str | None:
    view = s.require_view()
    if not view.readonly:
        await s.store.expunge(view.folder_id)  # silently: no EXPUNGE responses
    s.deselect()
    return None


async def unselect(s: Session, c: t.Unselect) -> str | None:
    s.require_view()
    s.deselect()  # RFC 3691: like CLOSE without the expunge
    return None


async def expunge(s: Session, c: t.Expunge) -> str | None:
    view = writable(s)
    uids = None if c.uids is None else view.resolve(c.uids, uid=True)
    if uids is not None and not uids:
        return None
    # RFC 3501 §6.4.3: once EXPUNGE is done no \\Deleted message is left. Another
    # session's EXPUNGE of the same messages may have committed just before ours (found
    # by bench/imap_stress.py on PostgreSQL), its event not noted here yet: the store
    # also returns removals by others since this mailbox was selected, in the same
    # transaction, and they are told now too. From the MODSEQ of SELECT: notices of
    # concurrent transactions may arrive out of MODSEQ order, so a later one already
    # told says nothing about an earlier one (UIDs no longer in the view are skipped)
    view.drain()
    gone = await s.store.expunge(
        view.folder_id, uids, others_since=view.folder.highestmodseq if uids is None else None)
    first = removing(view, gone)  # RFC 5267 §4.3: REMOVEFROM before the EXPUNGEs
    lines = view.remove(gone)  # UIDs no longer in the view are skipped
    for line in first + lines:
        s.send(line)
    return await _with_highestmodseq(s, view, bool(lines), "EXPUNGE completed")


async def _with_highestmodseq(s: Session, view: MailboxView, changed: bool,
                              text: str) -> str:
    """RFC 7162 §3.2.7 (and RFC 6851 §4.4 for MOVE): after an expunge, a CONDSTORE/QRESYNC
    client gets the new HIGHESTMODSEQ in the tagged OK. Pending changes of others are
    told first, so the value never skips a change the client has not seen."""
    if not changed or not view.condstore:
        return text
    for line in await flush_view(s, view, allow_expunge=True):
        s.send(line)
    return f"[HIGHESTMODSEQ {view.reported_modseq}] {text}"


async def store(s: Session, c: t.Store) -> str | None:
    view = writable(s)
    if c.unchangedsince is not None:
        s.enable_condstore()  # RFC 7162 §3.1: CONDSTORE-enabling
    flags = [f for f in c.flags if f != "\\Recent"]
    for f in flags:
        if f.startswith("\\") and f not in _SYSTEM:
            raise respond.Bad(f"Cannot store flag {f}")
    uids = view.resolve(c.sequence, c.uid)
    if not uids:
        return None
    # One write transaction; it also gives every listed message as it is after the
    # change, so the FETCH responses below need no second read.
    changed, refused, after = await s.store.store_flags_report(
        view.folder_id, uids, flags, _STORE_MODE[c.mode], unchanged_since=c.unchangedsince,
        want_after=not c.silent)
    view.own_modseqs.update(m.modseq for m in changed)
    # RFC 7162 §3.1.3: with UNCHANGEDSINCE the changed messages are reported with their
    # new MODSEQ even after .SILENT; with CONDSTORE on, every FETCH carries UID and MODSEQ.
    if not c.silent or c.unchangedsince is not None:
        report = after if not c.silent else changed
        for r in report:
            seq = view.seq_of(r.uid)
            if seq is None:
                continue
            uid = f"UID {r.uid} " if c.uid or view.condstore else ""
            mod = f" MODSEQ ({r.modseq})" if view.condstore else ""
            for line in view.announce(r.flags):  # RFC 3501 §7.2.6: new keywords first
                s.send(line)
            fl = view.flags_text(r.uid, r.flags)
            s.send(respond.untagged(f"{seq} FETCH ({uid}FLAGS {fl}{mod})"))
    if refused:
        numbers = refused if c.uid else [view.seq_of(u) or 0 for u in refused]
        return f"[MODIFIED {respond.seq_set(numbers)}] Conditional STORE failed"
    return None


async def _target(s: Session, name: str) -> Folder:
    folder = await s.store.get_folder(s.address_id, name)
    if folder is None:
        raise respond.No(f"No such mailbox: {name}", "TRYCREATE")  # RFC 9051 §6.4.7
    return folder


def _copyuid(dst: Folder, pairs: list[tuple[int, int]]) -> str:
    src = ",".join(str(a) for a, _ in pairs)
    dst_set = ",".join(str(b) for _, b in pairs)
    if len(pairs) > 1:
        src = respond.seq_set(a for a, _ in pairs)
        dst_set = respond.seq_set(b for _, b in pairs)
    return f"COPYUID {dst.uidvalidity} {src} {dst_set}"


async def copy(s: Session, c: t.Copy) -> str | None:
    view = s.require_view()
    uids = view.resolve(c.sequence, c.uid)
    dst = await _target(s, c.mailbox)
    if not uids:
        return None
    rows = await s.store.message_rows(view.folder_id, uids)
    await check_quota(s, sum(r.size for r in rows), len(rows))  # RFC 9208 §4.6
    pairs = await s.store.copy_messages(view.folder_id, uids, dst.id)
    if not pairs:
        return None
    # the 90 % warning (behaviour.md §3)
    s.services.notifier.after_storing([s.email], sum(r.size for r in rows))
    return f"[{_copyuid(dst, pairs)}] COPY completed"


async def move(s: Session, c: t.Move) -> str | None:
    view = writable(s)
    uids = view.resolve(c.sequence, c.uid)
    dst = await _target(s, c.mailbox)  # may be the selected one: new UIDs (RFC 6851 §3)
    if not uids:
        return None
    pairs = await s.store.move_messages(view.folder_id, uids, dst.id)
    if pairs:
        s.send(respond.untagged(f"OK [{_copyuid(dst, pairs)}] Moved"))
        moved = [a for a, _ in pairs]
        for line in removing(view, moved) + view.remove(moved):  # RFC 5267 §4.3 first
            s.send(line)
    return await _with_highestmodseq(s, view, bool(pairs), "MOVE completed")


async def idle(s: Session, c: t.Idle) -> str | None:
    """RFC 9051 §6.3.13 / RFC 2177: push changes at once until DONE."""
    s.send(b"+ idling\r\n")
    await s.conn.drain()
    read: asyncio.Future[bytes] = asyncio.ensure_future(s.read_line())
    line = b""
    s.idling = True  # NOTIFY reports other mailboxes meanwhile (RFC 5465)
    try:
        while True:
            view = s.view
            if view is not None:
                for out in await flush_view(s, view, allow_expunge=True):
                    s.send(out)
                await s.conn.drain()
            waiter = asyncio.ensure_future(s.sub.queue.get()) if s.sub is not None else None
            pending = {read} | ({waiter} if waiter is not None else set())
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if waiter is not None:
                if waiter in done:
                    if view is not None:
                        view.note(waiter.result())
                else:
                    waiter.cancel()
            if read in done:
                line = read.result()
                break
    finally:
        s.idling = False
        if not read.done():
            read.cancel()
    if not is_idle_done(line):
        raise respond.Bad("Expected DONE")
    return "IDLE terminated"

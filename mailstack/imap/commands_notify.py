"""NOTIFY (RFC 5465): unsolicited updates for the selected mailbox and for other
mailboxes of the account, without IDLE or polling.

Implementation notes (invariants):
- A :class:`Notifier` runs as a task with its own store subscription. It writes only
  between commands: it takes ``Session.busy`` (held by every command), so an EXPUNGE
  never lands inside a FETCH/STORE/SEARCH and sequence numbers never change under a
  running command. During IDLE (which holds ``busy`` and reports the selected mailbox
  itself) it reports the other mailboxes only.
- The selected mailbox is reported through the session's view (EXISTS, EXPUNGE or
  VANISHED, FETCH FLAGS), as IDLE would, and only when a ``selected`` or
  ``selected-delayed`` group asks for it (``selected-delayed`` holds EXPUNGE back until
  a command allows it, RFC 5465 §6.1). MessageNew with fetch attributes answers a FETCH
  of the new messages.
- Other mailboxes: MessageNew / MessageExpunge / FlagChange give ``* STATUS``
  (MESSAGES UIDNEXT UIDVALIDITY UNSEEN, and HIGHESTMODSEQ with CONDSTORE on); MailboxName
  gives ``* LIST`` (``\\NonExistent`` after DELETE, OLDNAME after RENAME);
  SubscriptionChange gives ``* LIST`` with or without ``\\Subscribed`` (RFC 5465 §5).
- For each mailbox the first group whose filter matches applies (the selected filters
  take precedence for the selected mailbox).
"""

from __future__ import annotations

import asyncio
import logging

from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.contexts import flush_view
from mailstack.imap.sequence import SeqRange, SequenceSet
from mailstack.imap.session import Session
from mailstack.store import (
    Event,
    FlagsChanged,
    Folder,
    FolderChanged,
    MessagesAdded,
    MessagesExpunged,
)

log = logging.getLogger("mailstack.imap")

SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName",
             "SubscriptionChange")
_MESSAGE_EVENTS = {MessagesAdded: "MessageNew", MessagesExpunged: "MessageExpunge",
                   FlagsChanged: "FlagChange"}


def check(c: t.Notify) -> None:
    """RFC 5465 §3.1, §5: BAD for inconsistent groups, NO [BADEVENT] for events the
    server does not support."""
    for g in c.groups or ():
        ev = set(g.events)
        unknown = ev - set(SUPPORTED)
        if unknown:
            raise respond.No(f"Unsupported event {sorted(unknown)[0]}",
                             "BADEVENT (" + " ".join(SUPPORTED) + ")")
        if ("MessageNew" in ev) != ("MessageExpunge" in ev):
            raise respond.Bad("MessageNew and MessageExpunge go together")
        if "FlagChange" in ev and "MessageNew" not in ev:
            raise respond.Bad("FlagChange needs MessageNew and MessageExpunge")
        if g.fetch and not g.filter.startswith("selected"):
            raise respond.Bad("fetch attributes only for the selected mailbox")


class Notifier:
    def __init__(self, s: Session, groups: tuple[t.NotifyGroup, ...],
                 folders: list[Folder]) -> None:
        self.s = s
        self.groups = groups
        self.names = {f.id: f.name for f in folders}
        self.subscribed = {f.id for f in folders if f.subscribed}
        self.sub = s.store.events.subscribe(s.address_id)
        self.task = asyncio.create_task(self._run())

    def close(self) -> None:
        if self.task is not asyncio.current_task():
            self.task.cancel()
        self.sub.close()

    # --- which group applies ------------------------------------------------------
    def selected_group(self) -> t.NotifyGroup | None:
        return next((g for g in self.groups if g.filter.startswith("selected")), None)

    def group_for(self, folder_id: int, name: str) -> t.NotifyGroup | None:
        view = self.s.view
        if view is not None and view.folder_id == folder_id:
            return self.selected_group()
        for g in self.groups:
            f = g.filter
            if (f == "personal" or (f == "inboxes" and name == "INBOX")
                    or (f == "subscribed" and folder_id in self.subscribed)
                    or (f == "mailboxes" and name in g.mailboxes)
                    or (f == "subtree" and any(name == m or name.startswith(m + "/")
                                               for m in g.mailboxes))):
                return g
        return None

    # --- the task -------------------------------------------------------------------
    async def _run(self) -> None:
        s = self.s
        while True:
            events = [await self.sub.queue.get()]
            while not self.sub.queue.empty():
                events.append(self.sub.queue.get_nowait())
            try:
                if s.idling:
                    await self.emit(events, with_view=False)
                else:
                    async with s.busy:
                        await self.emit(events, with_view=True)
                await s.conn.drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # the session goes on; the next command resyncs
                log.exception("imap: NOTIFY update failed for %s", s.email)

    async def emit(self, events: list[Event], *, with_view: bool) -> None:
        s = self.s
        touched: dict[int, set[str]] = {}
        for ev in events:
            kind = _MESSAGE_EVENTS.get(type(ev))
            if kind is not None:
                touched.setdefault(ev.folder_id, set()).add(kind)  # type: ignore[attr-defined]
            elif isinstance(ev, FolderChanged):
                await self._folder_changed(ev)
        view = s.view
        for folder_id, kinds in touched.items():
            name = self.names.get(folder_id)
            if name is None:
                continue
            g = self.group_for(folder_id, name)
            if g is None or not kinds & set(g.events):
                continue
            if view is not None and view.folder_id == folder_id:
                if with_view:
                    await self._selected(g)
                continue
            folder = await s.store.get_folder_by_id(folder_id)
            if folder is not None:
                s.send(await status_line(s, folder))

    async def _selected(self, g: t.NotifyGroup) -> None:
        s = self.s
        view = s.view
        assert view is not None
        before = len(view.uids)
        for line in await flush_view(s, view, allow_expunge=g.filter == "selected"):
            s.send(line)
        fresh = view.uids[before:] if len(view.uids) > before else []
        if g.fetch and fresh:
            from mailstack.imap.fetch import fetch

            seq = SequenceSet((SeqRange(fresh[0], fresh[-1]),))
            await fetch(s, t.Fetch(tag="*", uid=True, sequence=seq, items=g.fetch))

    async def _folder_changed(self, ev: FolderChanged) -> None:
        s = self.s
        old = self.names.get(ev.folder_id)
        folder = None if ev.kind == "deleted" else await s.store.get_folder_by_id(ev.folder_id)
        name = folder.name if folder is not None else old
        if name is None:
            return
        if folder is None:
            self.names.pop(ev.folder_id, None)
        else:
            self.names[ev.folder_id] = folder.name
            if folder.subscribed:
                self.subscribed.add(folder.id)
            else:
                self.subscribed.discard(folder.id)
        g = self.group_for(ev.folder_id, name)
        if g is None:
            return
        wanted = "SubscriptionChange" if ev.kind == "subscribed" else "MailboxName"
        if wanted not in g.events:
            return
        attrs = ["\\NonExistent"] if folder is None else []
        if folder is not None and folder.subscribed:
            attrs.append("\\Subscribed")
        extra = b""
        if ev.kind == "renamed" and old is not None and old != name:
            extra = b' ("OLDNAME" (' + respond.mailbox(old, s.utf8) + b"))"
        s.send(b"* LIST (" + " ".join(attrs).encode() + b') "/" '
               + respond.mailbox(name, s.utf8) + extra + b"\r\n")


async def status_line(s: Session, folder: Folder) -> bytes:
    st = await s.store.folder_status(folder.id)
    items = (f"MESSAGES {st.messages} UIDNEXT {st.uidnext} UIDVALIDITY {st.uidvalidity} "
             f"UNSEEN {st.unseen}")
    if s.condstore:
        items += f" HIGHESTMODSEQ {st.highestmodseq}"
    return b"* STATUS " + respond.mailbox(folder.name, s.utf8) + b" (" + items.encode() \
        + b")\r\n"


async def notify(s: Session, c: t.Notify) -> str | None:
    check(c)
    if s.notifier is not None:
        s.notifier.close()
        s.notifier = None
    if c.groups is None:
        return None
    folders = await s.store.list_folders(s.address_id)
    notifier = Notifier(s, c.groups, folders)
    if c.status:  # RFC 5465 §3.1: STATUS of every watched mailbox but the selected one
        for f in folders:
            g = notifier.group_for(f.id, f.name)
            if g is None or "MessageNew" not in g.events or (
                    s.view is not None and s.view.folder_id == f.id):
                continue
            s.send(await status_line(s, f))
    s.notifier = notifier
    return None

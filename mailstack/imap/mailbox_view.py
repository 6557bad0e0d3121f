"""The selected mailbox as one session sees it: message sequence numbers <-> UIDs, and
the changes other sessions (or SMTP delivery) made that this session has not been
told about yet.

Implementation notes (invariants):
- ``uids`` is the session's view, sorted ascending; sequence number n is ``uids[n-1]``
  (RFC 9051 §2.3.1.2). It changes only when the session itself sends EXISTS or EXPUNGE
  responses, so numbers stay stable between responses the client has seen.
- Store events (published after commit) are drained into pending state: ``new_mail``,
  ``pending_expunge`` (UIDs still in the view), ``pending_flags``. ``flush`` turns them
  into untagged responses. EXPUNGE is only flushed when the caller says it may be:
  never during FETCH, STORE or SEARCH (RFC 9051 §7.5.1), nor with no command running;
  at once during IDLE (RFC 9051 §6.3.13).
- Messages an expunge is pending for stay in the view (and in EXISTS counts) until
  their EXPUNGE is sent; FETCHes of them simply return nothing.
- FlagsChanged events carrying a MODSEQ this session produced itself are skipped: the
  session already answered them (or was asked for .SILENT).
- With CONDSTORE on, flag updates carry UID and MODSEQ (RFC 7162 §3.1); with QRESYNC
  on, removals go out as one ``* VANISHED uid-set`` instead of ``* n EXPUNGE``
  (RFC 7162 §3.2.10), under the same timing rules as EXPUNGE.
- ``reported_modseq`` is the MODSEQ up to which the client has been told every change:
  HIGHESTMODSEQ at SELECT, raised by each flushed flag or expunge event. Only this value
  may go out as HIGHESTMODSEQ later (RFC 5162 errata 1810, kept by RFC 7162): never one above a
  change still pending.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from mailstack.imap import respond
from mailstack.imap.sequence import SequenceSet
from mailstack.store import (
    Event,
    FlagsChanged,
    Folder,
    InsufficientStorage,
    MessagesAdded,
    MessagesExpunged,
    Resync,
    Store,
    Subscription,
)
from mailstack.store.base import flags_from_db

if TYPE_CHECKING:
    from mailstack.imap.contexts import LiveContext

log = logging.getLogger("mailstack.imap")


class MailboxView:
    def __init__(
        self,
        store: Store,
        folder: Folder,
        uids: list[int],
        *,
        readonly: bool,
        subscription: Subscription,
    ) -> None:
        self.store = store
        self.folder = folder
        self.folder_id = folder.id
        self.uidvalidity = folder.uidvalidity
        self.uids = uids
        self.readonly = readonly
        self.sub = subscription
        self.new_mail = False
        self.pending_expunge: set[int] = set()
        self.pending_flags: set[int] = set()
        self.own_modseqs: set[int] = set()
        self.saved: list[int] | None = None  # RFC 5182 "$" (kept as UIDs)
        self.condstore = False
        self.qresync = False
        self.reported_modseq = folder.highestmodseq
        self._seen_modseq = folder.highestmodseq  # highest MODSEQ of any event noted
        self.resync = False  # events may have been missed: re-read the folder at flush
        # RFC 3501 §2.3.2: an IMAP4rev1 session sees \Recent; one that may change the
        # mailbox claims new messages as recent (exactly one session gets each one)
        self.rev1 = False
        self.recent: set[int] = set()
        # [from, upto) UID ranges this session claimed in the transaction of its own
        # APPEND to this mailbox (Store.append_claiming), not all in the view yet
        self.claimed: list[tuple[int, int]] = []
        self.keywords: dict[str, str] = {}  # lower-case -> spelling, as announced
        self.contexts: dict[str, LiveContext] = {}  # RFC 5267 live results (contexts.py)

    # --- \Recent and keywords (RFC 3501 §2.3.2, §7.2.6) ---------------------------
    @property
    def claims_recent(self) -> bool:
        return self.rev1 and not self.readonly

    def flags_text(self, uid: int, flags: Iterable[str]) -> str:
        """A FETCH FLAGS list; with \\Recent for a message recent in this session."""
        if uid in self.recent:
            return respond.flag_list([*flags, "\\Recent"])
        return respond.flag_list(flags)

    def flags_response(self) -> list[bytes]:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` with the mailbox's keywords."""
        kws = sorted(self.keywords.values(), key=str.lower)
        system = "\\Seen \\Answered \\Flagged \\Deleted \\Draft"
        flags = " ".join([system, *kws])
        perm = "()" if self.readonly else f"({flags} \\*)"
        return [respond.untagged(f"FLAGS ({flags})"),
                respond.untagged(f"OK [PERMANENTFLAGS {perm}] Flags permitted")]

    def note_keywords(self, flags: Iterable[str]) -> bool:
        """Record keywords; True if one was not announced before."""
        new = False
        for f in flags:
            if not f.startswith("\\") and f.lower() not in self.keywords:
                self.keywords[f.lower()] = f
                new = True
        return new

    def announce(self, flags: Iterable[str]) -> list[bytes]:
        """RFC 3501 §7.2.6: a keyword the client has not been told about yet is
        announced (FLAGS, PERMANENTFLAGS) before a FETCH shows it."""
        return self.flags_response() if self.note_keywords(flags) else []

    async def claim_recent(self, uids: list[int], first_recent: int | None = None) -> None:
        """Claim the not yet claimed messages among ``uids`` (ascending) as recent.
        ``first_recent``: the folder's first unclaimed UID, read with ``uids``; a write
        transaction is needed only when some of ``uids`` are at or above it and this
        session did not claim them already when it appended them."""
        if not self.claims_recent or not uids:
            return
        upto = uids[-1] + 1
        covered = 0
        for lo, hi in self.claimed:
            self.recent.update(u for u in uids if lo <= u < hi)
            covered = max(covered, hi)
        self.claimed = [(lo, hi) for lo, hi in self.claimed if hi > upto]
        if covered >= upto or (first_recent is not None and first_recent >= upto):
            return  # every one of them is claimed (by this session or another)
        try:
            first = await self.store.claim_recent(self.folder_id, upto)
        except InsufficientStorage as exc:
            # reading mail keeps working on a full disk (docs/behaviour.md §12 "Faults"):
            # the messages are then simply not \Recent for this session
            log.warning("imap: \\Recent not recorded, storage full: %s", exc)
            return
        self.recent.update(u for u in uids if u >= first)

    # --- numbering -----------------------------------------------------------------
    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def resolve(self, seq: SequenceSet, uid: bool) -> list[int]:
        """The UIDs a sequence set names, in ascending order. Non-existent message
        numbers are a BAD (RFC 9051 §6.4.5 invalid message number); unknown UIDs are
        silently ignored (RFC 9051 §6.4.8)."""
        if seq.saved:
            saved = set(self.saved or ())
            return [u for u in self.uids if u in saved]
        if uid:
            largest = self.uids[-1] if self.uids else 0
            if not self.uids:
                return []
            return list(seq.iter_existing(largest, self.uids))
        n = len(self.uids)
        out: list[int] = []
        for a, b in seq.intervals(n):
            if b > n or a < 1:
                raise respond.Bad("invalid message sequence number")
            out.extend(self.uids[a - 1 : b])
        return out

    def remove(self, uids: Iterable[int]) -> list[bytes]:
        """Drop UIDs from the view; returns their EXPUNGE responses (highest number
        first, so no number shifts before it is sent), or one VANISHED response when
        QRESYNC is on (RFC 7162 §3.2.10)."""
        out: list[bytes] = []
        gone: list[int] = []
        for uid in sorted(set(uids), reverse=True):
            seq = self.seq_of(uid)
            if seq is None:
                continue
            del self.uids[seq - 1]
            self.pending_expunge.discard(uid)
            self.pending_flags.discard(uid)
            self.recent.discard(uid)
            gone.append(uid)
            out.append(respond.untagged(f"{seq} EXPUNGE"))
        if self.qresync:
            return [respond.untagged(f"VANISHED {respond.seq_set(gone)}")] if gone else []
        return out

    # --- events --------------------------------------------------------------------
    def drain(self) -> None:
        while True:
            try:
                ev = self.sub.queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self.note(ev)

    def note(self, ev: Event) -> None:
        if isinstance(ev, Resync):
            self.resync = True
        elif isinstance(ev, MessagesAdded) and ev.folder_id == self.folder_id:
            self.new_mail = True
        elif isinstance(ev, MessagesExpunged) and ev.folder_id == self.folder_id:
            self._seen_modseq = max(self._seen_modseq, ev.modseq)
            have = set(self.uids)
            self.pending_expunge.update(u for u in ev.uids if u in have)
        elif isinstance(ev, FlagsChanged) and ev.folder_id == self.folder_id:
            self._seen_modseq = max(self._seen_modseq, ev.modseq)
            if ev.modseq in self.own_modseqs:
                self.own_modseqs.discard(ev.modseq)
                return
            self.pending_flags.update(ev.uids)

    @property
    def has_pending(self) -> bool:
        return bool(self.new_mail or self.pending_expunge or self.pending_flags
                    or self.resync)

    async def _resync(self) -> None:
        """After missed events: compare the view with the store (expunged UIDs, new
        mail, flags changed since the highest MODSEQ noted)."""
        current = set(await self.store.folder_uids(self.folder_id))
        changed = await self.store.changed_since(self.folder_id, self._seen_modseq)
        self.resync = False
        self.pending_expunge.update(u for u in self.uids if u not in current)
        self.new_mail = True
        have = set(self.uids)
        self.pending_flags.update(m.uid for m in changed if m.uid in have)
        if changed:
            self._seen_modseq = max(self._seen_modseq, max(m.modseq for m in changed))

    async def flush(self, *, allow_expunge: bool, with_uid: bool = True) -> list[bytes]:
        """Untagged responses for what changed since the last flush (RFC 9051 §7)."""
        self.drain()
        if self.resync:
            await self._resync()
        out: list[bytes] = []
        if allow_expunge and self.pending_expunge:
            out += self.remove(self.pending_expunge)
        if self.new_mail:
            self.new_mail = False
            last = self.uids[-1] if self.uids else 0
            # one read transaction: the new UIDs, the \Recent mark, their keywords
            fresh, first_recent, keywords = await self.store.fresh_messages(
                self.folder_id, last + 1)
            if fresh:
                self.uids.extend(fresh)
                out.append(respond.untagged(f"{len(self.uids)} EXISTS"))
                await self.claim_recent(fresh, first_recent)
                if self.rev1:  # RFC 3501 §7.3.2
                    out.append(respond.untagged(f"{len(self.recent)} RECENT"))
                out += self.announce(keywords)
        if self.pending_flags:
            wanted = [u for u in sorted(self.pending_flags) if u not in self.pending_expunge]
            self.pending_flags.clear()
            rows = await self.store.flag_rows(self.folder_id, wanted) if wanted else []
            for uid, modseq, bits, kws in rows:
                seq = self.seq_of(uid)
                if seq is None:
                    continue
                uid_part = f"UID {uid} " if with_uid or self.condstore else ""
                mod = f" MODSEQ ({modseq})" if self.condstore else ""
                current = flags_from_db(bits, kws)
                out += self.announce(current)
                flags = self.flags_text(uid, current)
                out.append(respond.untagged(f"{seq} FETCH ({uid_part}FLAGS {flags}{mod})"))
        if not self.pending_expunge:  # everything noted so far has been told
            self.reported_modseq = max(self.reported_modseq, self._seen_modseq)
        elif self.condstore:
            # RFC 5162 errata 1810 (kept by RFC 7162): expunges held back while
            # MODSEQs went out; tell the client the MODSEQ it may resynchronise from
            out.append(respond.untagged(f"OK [HIGHESTMODSEQ {self.reported_modseq}] Held"))
        return out

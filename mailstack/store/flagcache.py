"""The flags of big folders kept in memory, brought up to date from their MODSEQ.

Why (bench/README.md "Flags of big folders in memory"): ``FETCH 1:* (UID FLAGS)`` and
``UID SEARCH UNSEEN`` on a folder of 10,000 messages read 10,000 rows each time; most
of that is making Python objects of rows that have not changed since the last time.
Dovecot keeps an index file per mailbox for the same reason.

Implementation notes (invariants):
- Per folder: (uid, modseq, flags, keywords) of every message, the folder's
  UIDVALIDITY and the HIGHESTMODSEQ (RFC 7162 §3.1.1) the rows are complete up to.
- Every use first reads, in ONE read transaction: the folder's HIGHESTMODSEQ and
  UIDVALIDITY, then the rows whose MODSEQ is above the kept one (new and changed
  messages: every write gives its messages a new MODSEQ, store/mailbox.py) and the
  UIDs expunged above it (the ``expunged`` table, kept for QRESYNC and never pruned:
  pruning it would have to drop the kept rows of that folder too). So the answer is
  the database's, whatever process or node changed it; nothing is trusted beyond the
  MODSEQ. HIGHESTMODSEQ is read first: a change with a MODSEQ at or below it has
  committed (the folder row is updated in the same transaction), so on PostgreSQL's
  read committed too every change up to it is in the later statements' view; later
  ones seen as well are read again next time.
- A refresh older than what is kept (two commands racing) is not applied; a delta whose
  base is gone meanwhile, a changed UIDVALIDITY or a delta of more than half the folder
  is a whole-folder read instead.
- Only folders of more than ``MIN_ROWS`` messages are kept (smaller ones are read
  directly, ~1 ms); at most ``MAX_ROWS`` rows in all, least recently used folders go
  first. Pure bookkeeping here; the SQL is the store's (imap.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

FlagRow = tuple[int, int, int, str]  # uid, modseq, flags bitmask, keywords

MIN_ROWS = 1000  # folders with more messages than this are kept
MAX_ROWS = 200_000  # rows kept in all (~40 MB)


@dataclass
class FolderFlags:
    uidvalidity: int
    modseq: int  # the rows are complete up to this HIGHESTMODSEQ
    rows: dict[int, FlagRow] = field(default_factory=dict)


@dataclass
class Refresh:
    """What one read transaction found: the folder's state and the rows above ``since``
    (all rows when ``since`` is None)."""

    highestmodseq: int
    uidvalidity: int
    since: int | None
    rows: list[FlagRow]
    expunged: list[int]


class FlagCache:
    def __init__(self, max_rows: int = MAX_ROWS) -> None:
        self.max_rows = max_rows
        self._folders: OrderedDict[int, FolderFlags] = OrderedDict()
        self._total = 0

    def since(self, folder_id: int) -> tuple[int, int] | None:
        """(UIDVALIDITY, MODSEQ) the kept rows of a folder are complete up to."""
        kept = self._folders.get(folder_id)
        return None if kept is None else (kept.uidvalidity, kept.modseq)

    def drop(self, folder_id: int) -> None:
        kept = self._folders.pop(folder_id, None)
        if kept is not None:
            self._total -= len(kept.rows)

    def apply(self, folder_id: int, got: Refresh) -> FolderFlags | None:
        """Bring the kept rows up to ``got`` and return them; None when ``got`` is a
        delta whose base is no longer kept (evicted or reloaded meanwhile): then the
        caller reads the whole folder."""
        kept = self._folders.get(folder_id)
        newer = kept is not None and kept.uidvalidity == got.uidvalidity \
            and kept.modseq >= got.highestmodseq
        if got.since is None:
            if kept is not None and newer:  # a refresh that raced ahead of this one
                self._folders.move_to_end(folder_id)
                return kept
            self.drop(folder_id)
            kept = FolderFlags(got.uidvalidity, got.highestmodseq,
                               {r[0]: r for r in got.rows})
            self._folders[folder_id] = kept
            self._total += len(kept.rows)
        else:
            if kept is None or kept.uidvalidity != got.uidvalidity or kept.modseq < got.since:
                return None
            self._folders.move_to_end(folder_id)
            if newer:
                return kept
            before = len(kept.rows)
            rows = kept.rows
            for r in got.rows:
                rows[r[0]] = r
            for uid in got.expunged:
                rows.pop(uid, None)
            kept.modseq = got.highestmodseq
            self._total += len(rows) - before
        self._evict(keep=folder_id)
        return kept

    def _evict(self, keep: int) -> None:
        while self._total > self.max_rows and len(self._folders) > 1:
            oldest = next(iter(self._folders))
            if oldest == keep:
                self._folders.move_to_end(keep)
                continue
            self.drop(oldest)
        if self._total > self.max_rows:  # one folder bigger than the whole budget
            self.drop(keep)


def pick(rows: dict[int, FlagRow], uids: Iterable[int]) -> list[FlagRow]:
    """The rows of ``uids`` (ascending), skipping UIDs no longer there."""
    return [rows[u] for u in uids if u in rows]


def with_flags(rows: Iterable[FlagRow], set_bits: int, clear_bits: int
               ) -> list[tuple[int, int]]:
    """(uid, modseq) of the rows with all of ``set_bits`` and none of ``clear_bits``,
    ascending by UID."""
    return sorted((r[0], r[1]) for r in rows
                  if r[2] & set_bits == set_bits and not r[2] & clear_bits)

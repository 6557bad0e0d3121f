"""SORT and THREAD keys of messages (RFC 5256, RFC 5957) as columns of ``messages``.

Implementation notes (invariants):
- The keys are derived data, computed by the IMAP layer from a message's header block
  (``mailstack.imap.sorting``) and written here in ONE transaction per batch; a NULL
  ``sort_date`` means "not computed yet". Strings are stored already
  i;ascii-casemapped (RFC 5256 §2.2), so binary comparison is the RFC's order.
- A sort is ONE query: ``ORDER BY`` on the key columns, the UID last (RFC 5256 §3: ties
  are broken by the order in the mailbox, i.e. by UID). Text compares byte-wise: SQLite's
  default BINARY collation, PostgreSQL ``COLLATE "C"`` (never the database's locale).
  ``ix_messages_sort_date`` (folder, sent date, UID) answers ``SORT (DATE)`` from the
  index alone.
- Rows come back as plain tuples; no per-message objects are built here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, select, update

from . import schema as t
from .base import StoreBase

CHUNK = 500

_TEXT_KEYS = {"CC": "sort_cc", "FROM": "sort_from", "SUBJECT": "sort_subject",
              "TO": "sort_to", "DISPLAYFROM": "sort_dfrom", "DISPLAYTO": "sort_dto"}
_NUMBER_KEYS = {"ARRIVAL": "internal_date", "DATE": "sort_date", "SIZE": "size"}


class SortKeyRow(NamedTuple):
    """The stored keys of one message (see ``schema.messages``)."""

    id: int
    date: float
    subject: str
    reply: bool
    from_: str
    to: str
    cc: str
    display_from: str
    display_to: str
    message_id: str
    references: str  # space separated


class Unkeyed(NamedTuple):
    """A message whose keys are not computed yet, and where its header is."""

    id: int
    uid: int
    internal_date: float
    blob_id: str
    prefix: bytes


class SortKeysMixin(StoreBase):
    async def unkeyed_messages(self, folder_id: int) -> list[Unkeyed]:
        """Messages of a folder without stored sort keys (an index seek when none)."""
        m = t.messages.c
        async with self._read() as conn:
            rows = (await conn.execute(select(m.id, m.uid, m.internal_date, m.blob_id,
                                              m.prefix).where(and_(
                m.folder_id == folder_id, m.sort_date.is_(None))).order_by(m.uid))).all()
        return [Unkeyed(r[0], r[1], r[2], r[3], r[4] or b"") for r in rows]

    async def set_sort_key_rows(self, rows: Sequence[SortKeyRow]) -> None:
        """Store many messages' keys in ONE write transaction."""
        if not rows:
            return
        m = t.messages
        stmt = update(m).where(m.c.id == bindparam("_id")).values(
            sort_date=bindparam("_d"), sort_subject=bindparam("_s"),
            sort_reply=bindparam("_r"), sort_from=bindparam("_f"), sort_to=bindparam("_t"),
            sort_cc=bindparam("_c"), sort_dfrom=bindparam("_df"), sort_dto=bindparam("_dt"),
            thread_id=bindparam("_i"), thread_refs=bindparam("_rf"))
        async with self._write() as (conn, _):
            for i in range(0, len(rows), CHUNK):
                await conn.execute(stmt, [
                    {"_id": r.id, "_d": r.date, "_s": r.subject, "_r": int(r.reply),
                     "_f": r.from_, "_t": r.to, "_c": r.cc, "_df": r.display_from,
                     "_dt": r.display_to, "_i": r.message_id, "_rf": r.references}
                    for r in rows[i:i + CHUNK]])

    async def sorted_uids(self, folder_id: int, criteria: Sequence[tuple[str, bool]]
                          ) -> list[int]:
        """Every UID of the folder ordered by ``criteria`` ((RFC 5256 key, reverse),
        most significant first), then by UID. Keys must have been stored."""
        m = t.messages.c
        order: list[Any] = []
        for name, reverse in criteria:
            if name in _TEXT_KEYS:
                col: Any = getattr(m, _TEXT_KEYS[name])
                if not self.is_sqlite:
                    col = col.collate("C")
            else:
                col = getattr(m, _NUMBER_KEYS[name])
            order.append(col.desc() if reverse else col.asc())
        order.append(m.uid.asc())
        async with self._read() as conn:
            result = await conn.execute(select(m.uid).where(m.folder_id == folder_id)
                                        .order_by(*order))
            return list(result.scalars())

    async def thread_rows(self, folder_id: int
                          ) -> list[tuple[int, float, str, bool, str, str]]:
        """(uid, sent date, base subject, reply, Message-ID, References) of every
        message of the folder with stored keys, by UID (RFC 5256 §4)."""
        m = t.messages.c
        async with self._read() as conn:
            result = await conn.execute(select(
                m.uid, m.sort_date, m.sort_subject, m.sort_reply, m.thread_id,
                m.thread_refs).where(and_(m.folder_id == folder_id,
                                          m.sort_date.is_not(None))).order_by(m.uid))
            return [tuple(r) for r in result.all()]

"""SORT and THREAD keys of messages (RFC 5256, RFC 5957) as columns of ``messages``.

Implementation notes (invariants):
- The keys are derived data, parsed from a message's header block by whoever stores
  it (``mailstack.headerkeys``: SMTP delivery, APPEND, the importer) and written with
  the row, in the transaction that inserts it; COPY/MOVE copy them from the source
  row. A NULL ``sort_date`` means "not computed yet" (rows stored before, or by a
  caller without keys): SORT/THREAD fill those first, in ONE transaction per batch.
  Strings are stored already i;ascii-casemapped (RFC 5256 §2.2), so binary
  comparison is the RFC's order.
- A sort is ONE query: ``ORDER BY`` on the key columns, the UID last (RFC 5256 §3: ties
  are broken by the order in the mailbox, i.e. by UID). Text compares byte-wise: SQLite's
  default BINARY collation, PostgreSQL ``COLLATE "C"`` (never the database's locale).
  ``ix_messages_sort_date`` (folder, sent date, UID) answers ``SORT (DATE)`` from the
  index alone.
- Rows come back as plain tuples or UIDs; no per-message objects are built here
  (``thread_rows`` reads through the driver's cursor, one raw SQL text kept here).
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


class HeaderKeys(NamedTuple):
    """A message's keys as parsed from its header (``mailstack.headerkeys``), given
    by the caller that stores it; ``date`` None: the Date is unusable, the internal
    date stands in (RFC 5256 §2.2)."""

    date: float | None
    subject: str
    reply: bool
    from_: str
    to: str
    cc: str
    display_from: str
    display_to: str
    message_id: str
    references: str  # space separated


KEY_COLUMNS = ("sort_date", "sort_subject", "sort_reply", "sort_from", "sort_to", "sort_cc",
               "sort_dfrom", "sort_dto", "thread_id", "thread_refs")
_NO_KEYS = dict.fromkeys(KEY_COLUMNS)


def key_values(keys: HeaderKeys | None, internal_date: float) -> dict[str, Any]:
    """The key columns of a new ``messages`` row (all NULL without ``keys``: computed
    on the first SORT or THREAD instead)."""
    if keys is None:
        return _NO_KEYS
    return {"sort_date": internal_date if keys.date is None else keys.date,
            "sort_subject": keys.subject, "sort_reply": int(keys.reply),
            "sort_from": keys.from_, "sort_to": keys.to, "sort_cc": keys.cc,
            "sort_dfrom": keys.display_from, "sort_dto": keys.display_to,
            "thread_id": keys.message_id, "thread_refs": keys.references}


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
        rows = await self.run_read(lambda conn: conn.execute(
            select(m.id, m.uid, m.internal_date, m.blob_id,
                                          m.prefix).where(and_(
            m.folder_id == folder_id, m.sort_date.is_(None))).order_by(m.uid)).all())
        return [Unkeyed(r[0], r[1], r[2], r[3], r[4] or b"") for r in rows]

    async def stored_sort_keys(self, folder_id: int, uid: int) -> SortKeyRow | None:
        """The stored keys of one message (None: not computed yet, or no such message)."""
        m = t.messages.c
        r = await self.run_read(lambda conn: conn.execute(select(
            m.id, m.sort_date, m.sort_subject, m.sort_reply, m.sort_from, m.sort_to,
            m.sort_cc, m.sort_dfrom, m.sort_dto, m.thread_id, m.thread_refs).where(
            and_(m.folder_id == folder_id, m.uid == uid))).first(), rows=1)
        if r is None or r[1] is None:
            return None
        return SortKeyRow(r[0], r[1], r[2], bool(r[3]), *r[4:])

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
        stmt = select(m.uid).where(m.folder_id == int(folder_id)).order_by(*order)
        sql = str(stmt.compile(dialect=self.engine.dialect,
                               compile_kwargs={"literal_binds": True}))  # ints only
        return [r[0] for r in await self._driver_rows(sql)]

    async def _driver_rows(self, sql: str, *params: Any) -> list[Any]:
        """Rows of one SELECT through the driver's own cursor (``$1``-style parameters):
        the driver's plain tuples (asyncpg: Records), no per-row SQLAlchemy object."""
        if self.is_sqlite:  # sqlite3's cursor, on a reader thread (threads.py)
            for i in range(len(params), 0, -1):
                sql = sql.replace(f"${i}", "?")
            return await self.run_read(
                lambda conn: conn.connection.driver_connection.execute(sql, params).fetchall())
        async with self._read() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            return list(await driver.fetch(sql, *params))  # asyncpg

    async def thread_rows(self, folder_id: int) -> list[ThreadRow]:
        """What THREAD needs of every message of the folder with stored keys
        (RFC 5256 §4): (uid, sent date, base subject, reply flag (0/1), Message-ID,
        References), ascending by UID. Read through the driver's own cursor, so each
        row is the driver's plain tuple (asyncpg: a Record, unpacked the same way) and
        no per-row object of SQLAlchemy is built: on 100,000 messages that is most of
        the cost of reading them."""
        return await self._driver_rows(_THREAD_SQL, folder_id)


ThreadRow = tuple[int, float, str, int, str, str]
_THREAD_SQL = ("SELECT uid, sort_date, sort_subject, sort_reply, thread_id, thread_refs "
               "FROM messages WHERE folder_id = $1 AND sort_date IS NOT NULL ORDER BY uid")

"""Bulk reads and writes for the IMAP server's hot paths: one query for many messages
instead of one per message.

Implementation notes (invariants):
- ``MsgRow`` carries the per-message metadata SEARCH and FETCH need (the blob
  reference and per-copy prefix only when asked for); ``flags`` is the raw system-flag bitmask and
  ``keywords`` the stored keyword string (``flags_from_db`` turns both into the set).
- Every query is chunked (at most ``CHUNK`` bound values) so large UID sets stay under
  SQLite's and asyncpg's parameter limits.
- Cached structures are derived data: ``set_cached_structures`` writes a whole batch in
  ONE write transaction (one fsync, one hold of the SQLite writer lock), never one per
  message.
- Blob reads for a batch happen in ONE thread hop; ``read_headers`` stops reading a file
  as soon as the header block (up to its blank line) is in the buffer.
- ``append_many`` (MULTIAPPEND, RFC 3502) makes every blob durable first, then inserts
  all rows in ONE write transaction: all messages are stored or none (a blob whose rows
  never committed is an orphan, as after a failed single APPEND).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, update

from . import flagcache
from . import schema as t
from .base import SEEN_BIT, Folder, InsufficientStorage, Message, Unavailable
from .blobs import BlobError
from .heads import read_head
from .mailbox import DeliveryTarget, MailboxMixin, _folder, normalize_folder_name
from .sortkeys import HeaderKeys
from .threads import INLINE_BYTES, INLINE_FILES, INLINE_ROWS

log = logging.getLogger("mailstack.store")
T = TypeVar("T")

CHUNK = 500
_BLANK = re.compile(rb"\n\r?\n")


class _TooMany(Exception):
    """Rolls back a METADATA change that would exceed the entry limit."""


class OpenedFolder(NamedTuple):
    """What SELECT reads (``select_folder``)."""

    folder: Folder
    uids: list[int]
    first_unseen: int | None
    first_recent: int  # folders.first_recent_uid: UIDs from here on are not claimed yet
    keywords: set[str]


class MsgRow(NamedTuple):
    """A message's metadata, as SEARCH and FETCH of flags/sizes/dates need it (a named
    tuple, not a dataclass: built 10,000s of times per command, tuple creation is ~5x
    cheaper)."""

    id: int
    uid: int
    modseq: int
    flags: int  # bitmask of SYSTEM_FLAGS
    keywords: str  # space separated
    internal_date: float
    size: int
    blob_id: str = ""  # only with ``with_blob=True``
    prefix: bytes = b""


_ROW_COLS = (t.messages.c.id, t.messages.c.uid, t.messages.c.modseq, t.messages.c.flags,
             t.messages.c.keywords, t.messages.c.internal_date, t.messages.c.size)


_BLOB_COLS = (t.messages.c.blob_id, t.messages.c.prefix)


def _row(r: Any) -> MsgRow:
    return MsgRow(*r)


def _row_blob(r: Any) -> MsgRow:
    row = MsgRow(*r)
    return row if row.prefix is not None else row._replace(prefix=b"")


# SQLite's hot read, as plain SQL on sqlite3's own cursor: its rows are plain tuples and
# become MsgRows in C (``_make``), where SQLAlchemy's rows and ``MsgRow(*row)`` cost
# ~2 us per message (bench/README.md "One hop per transaction"); same columns as
# _ROW_COLS + _BLOB_COLS, same order (without ``with_blob``: MsgRow's defaults).
_SQLITE_ROWS = "SELECT {cols} FROM messages WHERE folder_id = ?{cond} ORDER BY uid"
_SQLITE_META = "id, uid, modseq, flags, keywords, internal_date, size"
_SQLITE_BLOB = ", blob_id, COALESCE(prefix, X'')"
# ``flag_rows``: the four columns FETCH (UID FLAGS MODSEQ) and flag changes need
# (bench/README.md "Narrow flag rows": 10,000 rows of these read in 2.9 ms, of
# _SQLITE_META in 7.7 ms)
_SQLITE_FLAGS = "uid, modseq, flags, keywords"
FlagRow = flagcache.FlagRow


def _sqlite_select(conn: Connection, cols: str, uid_pos: int, folder_id: int,
                   uid_list: list[int] | None) -> list[Any]:
    """Plain rows of ``cols`` (``uid`` at ``uid_pos``) of a folder, all or those of
    ``uid_list`` (sorted), ascending by UID, on sqlite3's own cursor."""
    cur: Any = conn.connection.driver_connection
    if uid_list is None:
        return cur.execute(_SQLITE_ROWS.format(cols=cols, cond=""), (folder_id,)).fetchall()
    if _dense(uid_list):
        wanted = set(uid_list)
        sql = _SQLITE_ROWS.format(cols=cols, cond=" AND uid >= ? AND uid <= ?")
        rows = cur.execute(sql, (folder_id, uid_list[0], uid_list[-1])).fetchall()
        return [r for r in rows if r[uid_pos] in wanted]
    out: list[Any] = []
    for i in range(0, len(uid_list), CHUNK):
        chunk = uid_list[i:i + CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = _SQLITE_ROWS.format(cols=cols, cond=f" AND uid IN ({marks})")
        out += cur.execute(sql, (folder_id, *chunk)).fetchall()
    return out


def _sqlite_rows(conn: Connection, folder_id: int, uid_list: list[int] | None,
                 with_blob: bool) -> list[MsgRow]:
    """``message_rows`` on SQLite (inside a reader-thread transaction)."""
    cols = _SQLITE_META + (_SQLITE_BLOB if with_blob else ", '', X''")  # MsgRow's defaults
    return list(map(MsgRow._make, _sqlite_select(conn, cols, 1, folder_id, uid_list)))


def _dense(uids: list[int]) -> bool:
    """A sorted UID list worth reading as one range (then filtered) rather than by IN."""
    return len(uids) > CHUNK and len(uids) * 2 >= uids[-1] - uids[0] + 1


_GONE = object()  # _flag_delta: the folder no longer exists
_LOOP_ROWS = 20_000  # kept rows picked on the loop up to this many, in a thread above
# (100,000 kept rows take ~10-30 ms)
_DELTA_MAX = INLINE_ROWS  # more changed rows than this: the whole folder is read again


def _folder_state(conn: Connection, folder_id: int) -> Any:
    f = t.folders.c
    return conn.execute(select(f.highestmodseq, f.uidvalidity).where(
        f.id == folder_id)).first()


def _flag_delta(conn: Connection, folder_id: int, since: tuple[int, int]
                ) -> flagcache.Refresh | object | None:
    """The rows changed and the UIDs expunged above the kept MODSEQ (flagcache.py),
    HIGHESTMODSEQ read first; None when too many changed (read the whole folder),
    _GONE when the folder is gone."""
    state = _folder_state(conn, folder_id)
    if state is None:
        return _GONE
    uidvalidity, modseq = since
    top, validity = int(state[0]), int(state[1])
    if validity != uidvalidity:
        return None
    if top <= modseq:  # nothing changed since
        return flagcache.Refresh(top, validity, modseq, [], [])
    m, x = t.messages.c, t.expunged.c
    rows = conn.execute(select(m.uid, m.modseq, m.flags, m.keywords).where(and_(
        m.folder_id == folder_id, m.modseq > modseq)).order_by(m.uid)
        .limit(_DELTA_MAX + 1)).all()
    if len(rows) > _DELTA_MAX:
        return None
    gone = conn.execute(select(x.uid).where(and_(
        x.folder_id == folder_id, x.modseq > modseq))).scalars().all()
    return flagcache.Refresh(top, validity, modseq,
                             [(r[0], r[1], r[2], r[3]) for r in rows], list(gone))


def _flag_full(conn: Connection, folder_id: int, sqlite: bool) -> flagcache.Refresh | None:
    """Every row of the folder, HIGHESTMODSEQ read first; None if the folder is gone."""
    state = _folder_state(conn, folder_id)
    if state is None:
        return None
    if sqlite:
        rows = _sqlite_select(conn, _SQLITE_FLAGS, 0, folder_id, None)
    else:
        m = t.messages.c
        rows = [(r[0], r[1], r[2], r[3]) for r in conn.execute(
            select(m.uid, m.modseq, m.flags, m.keywords).where(
                m.folder_id == folder_id).order_by(m.uid)).all()]
    return flagcache.Refresh(int(state[0]), int(state[1]), None, rows, [])


class ImapMixin(MailboxMixin):
    # --- numbering -------------------------------------------------------------------
    async def folder_uids(self, folder_id: int, uid_min: int = 1) -> list[int]:
        """UIDs of a folder from ``uid_min`` on, ascending (SELECT, new-mail checks)."""
        m = t.messages.c
        rows = await self.run_read(lambda conn: conn.execute(select(m.uid).where(and_(
            m.folder_id == folder_id, m.uid >= uid_min)).order_by(m.uid)).all())
        return [r[0] for r in rows]

    async def open_folder(self, address_id: int, name: str
                          ) -> tuple[Folder, list[int], int | None] | None:
        """SELECT's folder, UIDs and first unseen UID (see ``select_folder``)."""
        opened = await self.select_folder(address_id, name)
        return None if opened is None else (opened.folder, opened.uids, opened.first_unseen)

    async def select_folder(self, address_id: int, name: str) -> OpenedFolder | None:
        """SELECT in ONE read transaction: the folder, its UIDs, the first unseen UID,
        the first UID no session has seen as \\Recent yet (RFC 3501 §2.3.2) and the
        keywords in use (RFC 3501 §7.2.6); None if there is no such folder. The folder
        row is read after the UIDs on PostgreSQL (read committed), so UIDNEXT is above
        every listed UID."""
        f, m = t.folders.c, t.messages.c
        by_name = select(t.folders).where(and_(
            f.address_id == address_id, f.name == normalize_folder_name(name)))
        sqlite = self.is_sqlite

        def read(conn: Connection) -> OpenedFolder | None:
            row = conn.execute(by_name).first()
            if row is None:
                return None
            uids = [r[0] for r in conn.execute(select(m.uid).where(
                m.folder_id == row.id).order_by(m.uid)).all()]
            first = conn.execute(select(func.min(m.uid)).where(and_(
                m.folder_id == row.id, m.flags.op("&")(SEEN_BIT) == 0))).scalar()
            keywords = self._keywords(conn, row.id, 1)
            if not sqlite:
                row = conn.execute(select(t.folders).where(f.id == row.id)).first()
                if row is None:
                    return None
            return OpenedFolder(_folder(row), uids,
                                int(first) if first is not None else None,
                                int(row.first_recent_uid), keywords)

        key = (address_id, normalize_folder_name(name))
        opened = await self.run_read(read, rows=self.rows_hint(key))
        if opened is not None:
            self.note_rows(key, len(opened.uids))
            self.note_rows(opened.folder.id, len(opened.uids))
        return opened

    async def fresh_messages(self, folder_id: int, uid_min: int
                             ) -> tuple[list[int], int, set[str]]:
        """New mail for a selected mailbox in ONE read transaction: the UIDs from
        ``uid_min`` on, the folder's first not yet claimed \\Recent UID and the keywords
        of those messages (RFC 3501 §7.2.6)."""
        m, f = t.messages.c, t.folders.c

        def read(conn: Connection) -> tuple[list[int], int, set[str]]:
            uids = [r[0] for r in conn.execute(select(m.uid).where(and_(
                m.folder_id == folder_id, m.uid >= uid_min)).order_by(m.uid)).all()]
            if not uids:
                return [], 0, set()
            keywords = self._keywords(conn, folder_id, uid_min)
            first_recent = conn.execute(select(f.first_recent_uid).where(
                f.id == folder_id)).scalar()
            return uids, int(first_recent or 0), keywords

        return await self.run_read(read, rows=self.rows_hint(folder_id))

    async def append_claiming(self, folder_id: int,
                              items: Sequence[tuple[bytes, Iterable[str], float | None]],
                              keys: Sequence[HeaderKeys | None] = (), *,
                              claim_recent: bool) -> tuple[list[Message], int | None]:
        """``append_many``; with ``claim_recent`` the same transaction also makes the
        caller (an IMAP4rev1 session with this folder selected) the session that sees
        the new messages as \\Recent (RFC 3501 §2.3.2), instead of a second write
        transaction when it is told about them. Returns the messages and the folder's
        previous first-recent UID: the UIDs from it up to the last appended one are
        recent for the caller and for no other session (None without ``claim_recent``).
        ``keys``: the messages' sort/thread keys, in the same order (stored with them)."""
        blob_ids = [await self.put_blob(data) for data, _, _ in items]
        now = self.clock()
        f = t.folders.c
        all_keys = list(keys) or [None] * len(items)
        rows = [(len(data), frozenset(flags), when) for data, flags, when in items]

        def tx(conn: Connection, events: list[Any]) -> tuple[list[Message], int | None]:
            out: list[Message] = []
            old: int | None = None
            for (size, flags, when), blob_id, k in zip(rows, blob_ids, all_keys, strict=True):
                out += self._insert_copies(
                    conn, events, blob_id, size, [DeliveryTarget(folder_id, b"", flags, k)],
                    when if when is not None else now, now)
            if claim_recent and out:
                upto = out[-1].uid + 1
                old = int(conn.execute(select(f.first_recent_uid).where(
                    f.id == folder_id)).scalar_one())
                if upto > old:
                    conn.execute(update(t.folders).where(f.id == folder_id)
                                 .values(first_recent_uid=upto))
            return out, old

        return await self.run_write(tx)

    async def append_many(self, folder_id: int,
                          items: Sequence[tuple[bytes, Iterable[str], float | None]],
                          keys: Sequence[HeaderKeys | None] = ()) -> list[Message]:
        """Store several messages ((data, flags, internal date) each) atomically:
        blobs fsynced first, then one transaction for all rows (RFC 3502 §6.3.11:
        all or none). Returns them in order, with ascending UIDs. ``keys``: their
        sort/thread keys, in the same order (stored with the rows)."""
        return (await self.append_claiming(folder_id, items, keys, claim_recent=False))[0]

    # --- metadata rows -----------------------------------------------------------------
    def _expected(self, folder_id: int, uid_list: list[int] | None) -> int | None:
        """At most how many rows a read of these UIDs (None: all) returns, if known."""
        return len(uid_list) if uid_list is not None else self.rows_hint(folder_id)

    async def message_rows(self, folder_id: int, uids: Iterable[int] | None = None, *,
                           with_blob: bool = False) -> list[MsgRow]:
        """Rows of the folder (all, or those of ``uids``), ascending by UID; with
        ``with_blob`` they also say where the bytes are (blob id, per-copy prefix)."""
        m = t.messages.c
        base = select(*_ROW_COLS, *(_BLOB_COLS if with_blob else ())).where(
            m.folder_id == folder_id)
        mk = _row_blob if with_blob else _row
        uid_list = None if uids is None else sorted(set(uids))
        if uid_list is not None and not uid_list:
            return []

        if self.is_sqlite:
            return await self.run_read(_sqlite_rows, folder_id, uid_list, with_blob,
                                       rows=self._expected(folder_id, uid_list))

        def read(conn: Connection) -> list[MsgRow]:
            if uid_list is None:
                return [mk(r) for r in conn.execute(base.order_by(m.uid)).all()]
            if _dense(uid_list):
                wanted = set(uid_list)
                rows = conn.execute(base.where(and_(
                    m.uid >= uid_list[0], m.uid <= uid_list[-1])).order_by(m.uid)).all()
                return [mk(r) for r in rows if r[1] in wanted]
            out: list[MsgRow] = []
            for i in range(0, len(uid_list), CHUNK):
                chunk = uid_list[i:i + CHUNK]
                out.extend(mk(r) for r in conn.execute(
                    base.where(m.uid.in_(chunk)).order_by(m.uid)).all())
            return out

        return await self.run_read(read)

    async def flag_rows(self, folder_id: int, uids: Iterable[int] | None = None
                        ) -> list[FlagRow]:
        """(uid, modseq, flags, keywords) of the folder's messages (all, or those of
        ``uids``), ascending by UID, as plain tuples: FETCH of UID/FLAGS/MODSEQ and the
        flag changes a session reports need nothing more."""
        uid_list = None if uids is None else sorted(set(uids))
        if uid_list is not None and not uid_list:
            return []
        if self._big(folder_id):
            kept = await self._kept_flags(folder_id)
            if kept is not None:
                wanted = sorted(kept.rows) if uid_list is None else uid_list
                if len(wanted) <= _LOOP_ROWS:
                    return flagcache.pick(kept.rows, wanted)
                # in a thread, on a copy: the kept rows change on the loop meanwhile
                return await asyncio.to_thread(flagcache.pick, kept.rows.copy(), wanted)
        if self.is_sqlite:
            return await self.run_read(_sqlite_select, _SQLITE_FLAGS, 0, folder_id, uid_list,
                                       rows=self._expected(folder_id, uid_list))
        m = t.messages.c
        base = select(m.uid, m.modseq, m.flags, m.keywords).where(m.folder_id == folder_id)

        def read(conn: Connection) -> list[FlagRow]:
            if uid_list is None:
                return [(r[0], r[1], r[2], r[3])
                        for r in conn.execute(base.order_by(m.uid)).all()]
            out: list[FlagRow] = []
            for i in range(0, len(uid_list), CHUNK):
                chunk = uid_list[i:i + CHUNK]
                out.extend((r[0], r[1], r[2], r[3]) for r in conn.execute(
                    base.where(m.uid.in_(chunk)).order_by(m.uid)).all())
            return out

        return await self.run_read(read)

    async def uids_by_flags(self, folder_id: int, set_bits: int,
                            clear_bits: int) -> list[tuple[int, int]]:
        """(uid, modseq) of the messages with all of ``set_bits`` and none of
        ``clear_bits`` (system flags), ascending by UID: flag-only SEARCH in SQL, or
        over the kept rows of a big folder."""
        if self._big(folder_id):
            kept = await self._kept_flags(folder_id)
            if kept is not None:
                if len(kept.rows) <= _LOOP_ROWS:
                    return flagcache.with_flags(kept.rows.values(), set_bits, clear_bits)
                return await asyncio.to_thread(flagcache.with_flags, list(kept.rows.values()),
                                               set_bits, clear_bits)
        m = t.messages.c
        cond = [m.folder_id == folder_id]
        if set_bits:
            cond.append(m.flags.op("&")(set_bits) == set_bits)
        if clear_bits:
            cond.append(m.flags.op("&")(clear_bits) == 0)
        q = select(m.uid, m.modseq).where(and_(*cond)).order_by(m.uid)
        return await self.run_read(lambda conn: [(r[0], r[1]) for r in conn.execute(q).all()],
                                   rows=self.rows_hint(folder_id))

    # --- flags of big folders, kept in memory (flagcache.py) ------------------------------
    def _big(self, folder_id: int) -> bool:
        return self.flag_cache.since(folder_id) is not None or \
            (self.rows_hint(folder_id) or 0) > flagcache.MIN_ROWS

    async def _kept_flags(self, folder_id: int) -> flagcache.FolderFlags | None:
        """The folder's rows as kept, brought up to its current HIGHESTMODSEQ; None if
        the folder is gone. Usually one small read on the loop (the folder row and the
        rows changed since); the whole folder in a thread when it is new to the cache
        or changed a lot."""
        cache = self.flag_cache
        since = cache.since(folder_id)
        if since is not None:
            got = await self.run_read(_flag_delta, folder_id, since, rows=1)  # LIMIT-bounded
            if got is _GONE:
                cache.drop(folder_id)
                return None
            if isinstance(got, flagcache.Refresh):
                kept = cache.apply(folder_id, got)
                if kept is not None:
                    return kept
        full = await self.run_read(_flag_full, folder_id, self.is_sqlite)
        if full is None:
            cache.drop(folder_id)
            return None
        self.note_rows(folder_id, len(full.rows))
        return cache.apply(folder_id, full)

    # --- content: blobs and cached structures -----------------------------------------
    async def cached_structures(self, ids: Sequence[int]) -> dict[int, tuple[str | None,
                                                                             str | None]]:
        """(marker, JSON) of the cached structures of messages by id, in bulk."""
        m = t.messages.c
        id_list = sorted(set(ids))

        def read(conn: Connection) -> dict[int, tuple[str | None, str | None]]:
            out: dict[int, tuple[str | None, str | None]] = {}
            for i in range(0, len(id_list), CHUNK):
                for r in conn.execute(select(m.id, m.envelope, m.bodystructure).where(
                        m.id.in_(id_list[i:i + CHUNK]))).all():
                    out[r[0]] = (r[1], r[2])
            return out

        return await self.run_read(read, rows=len(id_list))

    async def set_cached_structures(self, entries: Sequence[tuple[int, str, str]]) -> None:
        """Write back many (id, marker, JSON) cache entries in ONE transaction. Only a
        cache: when the disk is full it is skipped (one log line) and reading goes on."""
        if not entries:
            return
        m = t.messages
        stmt = update(m).where(m.c.id == bindparam("_id")).values(
            envelope=bindparam("_marker"), bodystructure=bindparam("_json"))
        try:
            async with self._write() as (conn, _):
                for i in range(0, len(entries), CHUNK):
                    await conn.execute(stmt, [{"_id": i_, "_marker": mk, "_json": js}
                                              for i_, mk, js in entries[i:i + CHUNK]])
        except InsufficientStorage as exc:
            log.warning("store: structure cache not written, storage full: %s", exc)

    def _read_one(self, blob_id: str, prefix: bytes) -> bytes:
        body = self.blobs.get_sync(blob_id)
        return prefix + body if prefix else body

    async def read_messages(self, items: Sequence[tuple[str, bytes]], *,
                            header_only: bool = False, size: int | None = None
                            ) -> list[bytes]:
        """Bytes of many messages ((blob_id, prefix) each) in ONE thread hop. With
        ``header_only`` a result may stop after the header block's blank line (it is
        a prefix of the message holding the whole header); header blocks are kept in
        memory by blob id (heads.py), so those already read need no file at all.
        ``size``: their total size if the caller knows it; a few small files are read
        right here, without a hop (from the page cache that is ~15 us a file, less than
        the hop)."""
        if header_only:
            return await self._read_heads(items, size)

        def work() -> list[bytes]:
            return [self._read_one(b, p) for b, p in items]
        return await self._read_files(work, len(items), size)

    async def _read_files(self, work: Callable[[], T], count: int, size: int | None) -> T:
        try:
            if size is not None and count <= INLINE_FILES and size <= INLINE_BYTES:
                return work()
            return await asyncio.to_thread(work)
        except (OSError, BlobError) as exc:
            raise Unavailable(f"cannot read message: {exc}") from exc

    async def _read_heads(self, items: Sequence[tuple[str, bytes]], size: int | None
                          ) -> list[bytes]:
        heads = self.heads
        out: list[bytes | None] = []
        missing: list[int] = []
        for i, (blob_id, prefix) in enumerate(items):
            if prefix[:1] == b"\n" or prefix[:2] == b"\r\n" or _BLANK.search(prefix):
                out.append(bytes(prefix))  # the prefix holds the whole header
                continue
            head = heads.get(blob_id)
            if head is None:
                missing.append(i)
            out.append(prefix + head if head is not None else None)
        if missing:
            wanted = [items[i][0] for i in missing]

            def work() -> list[bytes]:
                return [read_head(self.blobs.path_of(b)) for b in wanted]
            got = await self._read_files(work, len(missing), size)
            for i, blob_id, head in zip(missing, wanted, got, strict=True):
                heads.put(blob_id, head)
                out[i] = items[i][1] + head
        return [b for b in out if b is not None]

    # --- METADATA (RFC 5464) -----------------------------------------------------------
    async def metadata_get(self, address_id: int, folder_id: int, names: Sequence[str],
                           depth: str = "0") -> list[tuple[str, bytes]]:
        """Entries (lower-case names) of a mailbox (``folder_id`` 0: the server):
        each of ``names``, and with ``depth`` "1" / "infinity" their children /
        descendants (RFC 5464 §4.2.2). Sorted by name."""
        md = t.metadata_entries.c
        rows = await self.run_read(lambda conn: conn.execute(select(md.name, md.value).where(and_(
            md.address_id == address_id, md.folder_id == folder_id))).all())
        wanted = [n.lower() for n in names]
        out = []
        for name, value in rows:
            for w in wanted:
                if name == w or (depth != "0" and name.startswith(w + "/") and (
                        depth == "infinity" or "/" not in name[len(w) + 1:])):
                    out.append((name, bytes(value)))
                    break
        return sorted(out)

    async def _metadata_set(self, address_id: int, folder_id: int,
                            items: Sequence[tuple[str, bytes | None]],
                            max_entries: int) -> bool:
        """Set (or, for None, remove) entries in ONE transaction. False, with nothing
        changed, when the address would hold more than ``max_entries`` entries."""
        md = t.metadata_entries.c
        async with self._write() as (conn, _):
            for name, value in items:
                await conn.execute(delete(t.metadata_entries).where(and_(
                    md.address_id == address_id, md.folder_id == folder_id,
                    md.name == name.lower())))
                if value is not None:
                    await conn.execute(insert(t.metadata_entries).values(
                        address_id=address_id, folder_id=folder_id, name=name.lower(),
                        value=value))
            count = (await conn.execute(select(func.count()).where(
                md.address_id == address_id))).scalar_one()
            if count > max_entries:
                raise _TooMany()
        return True

    async def metadata_set(self, address_id: int, folder_id: int,
                           items: Sequence[tuple[str, bytes | None]],
                           max_entries: int) -> bool:
        """See ``_metadata_set``."""
        try:
            return await self._metadata_set(address_id, folder_id, items, max_entries)
        except _TooMany:
            return False

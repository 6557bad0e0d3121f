"""Folders and messages: the operations IMAP, POP3 and SMTP delivery need.

Implementation notes (invariants):
- UIDs and MODSEQs are allocated by ``UPDATE folders ... RETURNING`` inside the same
  transaction as the message insert. The row lock (PostgreSQL) or the writer lock
  (SQLite) is held until commit, so concurrent appends commit in UID order and a
  session never sees UID n+1 before UID n (RFC 9051 §2.3.1.1).
- Every change to a message's flags gives it a new MODSEQ and raises the folder's
  HIGHESTMODSEQ (RFC 7162 §3); every expunge records (uid, modseq) in ``expunged``.
- When one transaction touches several folders it locks them in id order (no deadlock).
- UIDVALIDITY comes from a global counter: a deleted-then-recreated folder never
  reuses a value (RFC 9051 §2.3.1.1).
- Folder names are UTF-8 with "/" as the delimiter; "INBOX" is matched
  case-insensitively (RFC 9051 §5.1). Names are data, never paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .base import (
    DELETED_BIT,
    SEEN_BIT,
    AlreadyExists,
    Conflict,
    Folder,
    FolderStatus,
    Message,
    NotFound,
    StoreBase,
    Unavailable,
    flags_from_db,
    flags_to_db,
)
from .blobs import BlobError
from .events import FlagsChanged, FolderChanged, MessagesAdded, MessagesExpunged
from .sortkeys import KEY_COLUMNS, HeaderKeys, key_values
from .threads import INLINE_BYTES


def normalize_folder_name(name: str) -> str:
    """INBOX in any case is INBOX (RFC 9051 §5.1), also as a hierarchy prefix."""
    if name.upper() == "INBOX":
        return "INBOX"
    if name[:6].upper() == "INBOX/":
        return "INBOX/" + name[6:]
    return name


def _folder(row: Any) -> Folder:
    return Folder(id=row.id, address_id=row.address_id, name=row.name,
                  special_use=row.special_use, subscribed=bool(row.subscribed),
                  uidvalidity=row.uidvalidity, uidnext=row.uidnext,
                  highestmodseq=row.highestmodseq)


def _message(row: Any) -> Message:
    return Message(id=row.id, folder_id=row.folder_id, uid=row.uid, modseq=row.modseq,
                   flags=flags_from_db(row.flags, row.keywords),
                   internal_date=row.internal_date, size=row.size, blob_id=row.blob_id,
                   prefix=row.prefix or b"")


_MSG_COLS = (t.messages.c.id, t.messages.c.folder_id, t.messages.c.uid, t.messages.c.modseq,
             t.messages.c.flags, t.messages.c.keywords, t.messages.c.internal_date,
             t.messages.c.size, t.messages.c.blob_id, t.messages.c.prefix)
_HAS_KEYWORDS = text("messages.keywords <> ''")


def _get_messages(conn: Connection, folder_id: int, uid_list: list[int]) -> list[Message]:
    out: list[Message] = []
    for i in range(0, len(uid_list), 500):
        chunk = uid_list[i:i + 500]
        rows = conn.execute(select(*_MSG_COLS).where(and_(
            t.messages.c.folder_id == folder_id, t.messages.c.uid.in_(chunk)))
            .order_by(t.messages.c.uid)).all()
        out.extend(_message(r) for r in rows)
    return out


@dataclass(frozen=True)
class DeliveryTarget:
    """One copy of a delivered message: which folder, and its per-copy header prefix."""

    folder_id: int
    prefix: bytes = b""
    flags: frozenset[str] = frozenset()
    keys: HeaderKeys | None = None  # sort/thread keys (None: computed on first use)


class MailboxMixin(StoreBase):
    # --- storage used (RFC 9208 QUOTA) ---------------------------------------------
    def _add_usage(self, conn: Connection, address_id: int, dbytes: int, dmsgs: int) -> None:
        """Change an address's usage counter inside the caller's transaction (an upsert:
        concurrent first writers of one address cannot collide)."""
        if not dbytes and not dmsgs:
            return
        q = t.quota_usage
        ins = sqlite_insert if self.is_sqlite else pg_insert
        stmt = ins(q).values(address_id=address_id, bytes=dbytes, messages=dmsgs)
        set_: dict[str, Any] = {"bytes": q.c.bytes + dbytes, "messages": q.c.messages + dmsgs}
        if dbytes < 0:  # the storage warning is re-armed below its level
            set_["warn_rearm_below"] = case(
                (q.c.bytes + dbytes < q.c.warn_rearm_below, 0), else_=q.c.warn_rearm_below)
        conn.execute(stmt.on_conflict_do_update(index_elements=[q.c.address_id],
                                                set_=set_))

    async def quota_warning_armed(self, address_id: int) -> tuple[int, bool]:
        """(octets used, whether a storage warning may be sent) of an address."""
        q = t.quota_usage.c
        row = await self.run_read(lambda conn: conn.execute(
            select(q.bytes, q.warn_rearm_below).where(
            q.address_id == address_id)).first(), rows=1)
        return (int(row[0]), not row[1]) if row is not None else (0, True)

    async def storage_state(self, address: str) -> tuple[int, str, int, bool] | None:
        """(address id, its domain's plan, octets used, storage warning armed) of a
        hosted address, in ONE query (checked after every delivery); None if unknown."""
        from .accounts import split_address

        try:
            local, domain = split_address(address)
        except NotFound:
            return None
        a, d, q = t.addresses.c, t.domains.c, t.quota_usage.c
        row = await self.run_read(lambda conn: conn.execute(
            select(a.id, d.plan, q.bytes, q.warn_rearm_below)
            .select_from(t.addresses.join(t.domains).outerjoin(
                t.quota_usage, q.address_id == a.id))
            .where(and_(d.name == domain, a.local_key == local.lower()))).first(), rows=1)
        if row is None:
            return None
        return int(row[0]), str(row[1]), int(row[2] or 0), not row[3]

    async def claim_quota_warning(self, address_id: int, over: int, rearm_below: int
                                  ) -> bool:
        """Claim the storage warning of an address whose usage is above ``over``: True
        for exactly one caller per crossing (one UPDATE, so concurrent deliveries
        cannot both win); deletes bringing usage under ``rearm_below`` re-arm it."""
        q = t.quota_usage
        async with self._write() as (conn, _):
            res = await conn.execute(update(q).where(and_(
                q.c.address_id == address_id, q.c.warn_rearm_below == 0,
                q.c.bytes > over)).values(warn_rearm_below=max(1, rearm_below)))
        return bool(res.rowcount)

    def _add_usages(self, conn: Connection, deltas: dict[int, tuple[int, int]]) -> None:
        """``_add_usage`` for several addresses in ONE statement (an executemany of the
        same upsert: a group commit of N deliveries costs one, not N)."""
        params = [{"address_id": a, "bytes": b, "messages": n}
                  for a, (b, n) in sorted(deltas.items()) if b or n]
        if not params:
            return
        q = t.quota_usage
        stmt = (sqlite_insert if self.is_sqlite else pg_insert)(q)
        conn.execute(stmt.on_conflict_do_update(
            index_elements=[q.c.address_id],
            set_={"bytes": q.c.bytes + stmt.excluded.bytes,
                  "messages": q.c.messages + stmt.excluded.messages}), params)

    async def deleted_storage(self, folder_id: int) -> int:
        """Octets of the messages flagged \\Deleted (STATUS DELETED-STORAGE, RFC 9208)."""
        m = t.messages.c
        async with self._read() as conn:
            return int((await conn.execute(select(func.coalesce(func.sum(m.size), 0)).where(
                and_(m.folder_id == folder_id, m.flags.op("&")(DELETED_BIT) != 0))))
                .scalar_one())

    async def quota_usage(self, address_id: int) -> tuple[int, int]:
        """(octets, messages) an address keeps, from the counter."""
        q = t.quota_usage.c
        row = await self.run_read(lambda conn: conn.execute(select(q.bytes, q.messages).where(
            q.address_id == address_id)).first(), rows=1)
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)

    def _subtract_rows(self, conn: Connection, folder_id: int, cond: Any) -> None:
        """Take the messages of ``folder_id`` matching ``cond`` off the usage counter
        (before they are deleted, in the same transaction)."""
        m = t.messages.c
        row = conn.execute(select(func.coalesce(func.sum(m.size), 0), func.count())
                           .where(and_(m.folder_id == folder_id, cond))).one()
        if row[1]:
            addr = conn.execute(select(t.folders.c.address_id).where(
                t.folders.c.id == folder_id)).scalar_one()
            self._add_usage(conn, int(addr), -int(row[0]), -int(row[1]))

    # --- folders -------------------------------------------------------------------
    async def list_folders(self, address_id: int) -> list[Folder]:
        rows = await self.run_read(lambda conn: conn.execute(select(t.folders).where(
            t.folders.c.address_id == address_id).order_by(t.folders.c.name)).all())
        return [_folder(r) for r in rows]

    async def get_folder(self, address_id: int, name: str) -> Folder | None:
        row = await self.run_read(lambda conn: conn.execute(select(t.folders).where(and_(
            t.folders.c.address_id == address_id,
            t.folders.c.name == normalize_folder_name(name)))).first(), rows=1)
        return _folder(row) if row else None

    async def get_folder_by_id(self, folder_id: int) -> Folder | None:
        async with self._read() as conn:
            row = (await conn.execute(select(t.folders).where(t.folders.c.id == folder_id))
                   ).first()
        return _folder(row) if row else None

    async def create_folder(self, address_id: int, name: str,
                            special_use: str | None = None) -> Folder:
        name = normalize_folder_name(name)
        if name == "INBOX":
            raise AlreadyExists("INBOX always exists")
        async with self._write() as (conn, events):
            uidvalidity = await self._next_uidvalidity(conn)  # type: ignore[attr-defined]
            try:
                res = await conn.execute(insert(t.folders).values(
                    address_id=address_id, name=name, special_use=special_use,
                    subscribed=False, uidvalidity=uidvalidity, uidnext=1, highestmodseq=1,
                    created_at=self.clock()).returning(t.folders.c.id))
            except IntegrityError as exc:
                raise AlreadyExists(f"folder {name!r} already exists") from exc
            folder_id = int(res.scalar_one())
            # RFC 3501 §6.3.6: a subscription that outlived a DELETE applies again
            gone = await conn.execute(delete(t.subscriptions).where(and_(
                t.subscriptions.c.address_id == address_id, t.subscriptions.c.name == name)))
            subscribed = bool(gone.rowcount)
            if subscribed:
                await conn.execute(update(t.folders).where(t.folders.c.id == folder_id)
                                   .values(subscribed=True))
            events.append(FolderChanged(address_id, folder_id, "created"))
        return Folder(folder_id, address_id, name, special_use, subscribed, uidvalidity, 1, 1)

    async def delete_folder(self, address_id: int, name: str) -> None:
        """Delete one folder with its messages; children stay (RFC 9051 §6.3.5)."""
        name = normalize_folder_name(name)
        if name == "INBOX":
            raise Conflict("INBOX cannot be deleted")
        async with self._write() as (conn, events):
            row = (await conn.execute(select(t.folders.c.id, t.folders.c.subscribed).where(
                and_(t.folders.c.address_id == address_id, t.folders.c.name == name)))).first()
            if row is None:
                raise NotFound(f"no folder {name!r}")
            await conn.run_sync(self._subtract_rows, row.id, true())
            await conn.execute(delete(t.folders).where(t.folders.c.id == row.id))
            await conn.execute(delete(t.metadata_entries).where(  # RFC 5464 §3.2
                t.metadata_entries.c.folder_id == row.id))
            if row.subscribed:  # RFC 3501 §6.3.6: DELETE does not unsubscribe
                await conn.execute(insert(t.subscriptions).values(address_id=address_id,
                                                                  name=name))
            events.append(FolderChanged(address_id, row.id, "deleted"))

    async def rename_folder(self, address_id: int, old: str, new: str) -> None:
        """Rename a folder and its children. Renaming INBOX moves its messages to a new
        folder and leaves INBOX empty (RFC 9051 §6.3.6)."""
        old, new = normalize_folder_name(old), normalize_folder_name(new)
        if new == "INBOX":
            raise AlreadyExists("INBOX already exists")
        if old == "INBOX":
            await self._rename_inbox(address_id, new)
            return
        async with self._write() as (conn, events):
            rows = (await conn.execute(select(t.folders.c.id, t.folders.c.name).where(and_(
                t.folders.c.address_id == address_id,
                or_(t.folders.c.name == old,
                    func.substr(t.folders.c.name, 1, len(old) + 1) == old + "/"))))).all()
            if not any(r.name == old for r in rows):
                raise NotFound(f"no folder {old!r}")
            clash = (await conn.execute(select(t.folders.c.id).where(and_(
                t.folders.c.address_id == address_id, t.folders.c.name == new)))).first()
            if clash:
                raise AlreadyExists(f"folder {new!r} already exists")
            for r in rows:
                renamed = new + r.name[len(old):]
                await conn.execute(update(t.folders).where(t.folders.c.id == r.id)
                                   .values(name=renamed))
                events.append(FolderChanged(address_id, r.id, "renamed"))

    async def _rename_inbox(self, address_id: int, new: str) -> None:
        inbox = await self.get_folder(address_id, "INBOX")
        if inbox is None:
            raise NotFound("no INBOX")
        target = await self.create_folder(address_id, new)
        uids = [m.uid for m in await self.list_messages(inbox.id)]
        if uids:
            await self.move_messages(inbox.id, uids, target.id)

    async def set_subscribed(self, address_id: int, name: str, subscribed: bool) -> None:
        """Subscribe an existing folder, or unsubscribe a folder or a name whose folder
        was deleted while subscribed (RFC 3501 §6.3.7)."""
        name = normalize_folder_name(name)
        async with self._write() as (conn, events):
            res = await conn.execute(update(t.folders).where(and_(
                t.folders.c.address_id == address_id,
                t.folders.c.name == name)).values(subscribed=subscribed)
                .returning(t.folders.c.id))
            changed = res.all()
            for row in changed:  # RFC 5465 SubscriptionChange
                events.append(FolderChanged(address_id, row.id, "subscribed"))
            if changed:
                return
            if subscribed:
                raise NotFound(f"no folder {name!r}")
            gone = await conn.execute(delete(t.subscriptions).where(and_(
                t.subscriptions.c.address_id == address_id,
                t.subscriptions.c.name == name)))
            if gone.rowcount == 0:
                raise NotFound(f"no folder {name!r}")

    async def orphan_subscriptions(self, address_id: int) -> list[str]:
        """Subscribed names with no folder (deleted while subscribed), sorted."""
        rows = await self.run_read(lambda conn: conn.execute(select(t.subscriptions.c.name).where(
            t.subscriptions.c.address_id == address_id)
            .order_by(t.subscriptions.c.name)).all())
        return [r[0] for r in rows]

    async def claim_recent(self, folder_id: int, upto_uid: int) -> int:
        """RFC 3501 §2.3.2: this session is the first to see the UIDs below ``upto_uid``.
        Returns the folder's previous first-recent UID (the UIDs from it up to
        ``upto_uid`` are recent for the caller, and for no other session)."""
        f = t.folders.c
        first_recent = select(f.first_recent_uid).where(f.id == folder_id)
        # the usual case: nothing new, no write
        seen = await self.run_read(lambda conn: conn.execute(first_recent).scalar(), rows=1)
        if seen is None:
            raise NotFound("no such folder")
        if int(seen) >= upto_uid:
            return int(seen)

        def tx(conn: Connection, _events: list[Any]) -> int:
            row = conn.execute(first_recent.with_for_update()).first()
            if row is None:
                raise NotFound("no such folder")
            old = int(row[0])
            if upto_uid > old:
                conn.execute(update(t.folders).where(f.id == folder_id)
                             .values(first_recent_uid=upto_uid))
            return old

        return await self.run_write(tx)

    async def recent_count(self, folder_id: int) -> int:
        """Messages no session has seen as recent yet (STATUS RECENT, RFC 3501 §6.3.10)."""
        m, f = t.messages.c, t.folders.c
        async with self._read() as conn:
            first = (await conn.execute(select(f.first_recent_uid).where(f.id == folder_id))
                     ).scalar()
            if first is None:
                return 0
            return int((await conn.execute(select(func.count()).where(and_(
                m.folder_id == folder_id, m.uid >= first)))).scalar_one())

    async def folder_keywords(self, folder_id: int, uid_min: int = 1) -> set[str]:
        """The keywords set on messages of a folder (from ``uid_min`` on): what
        SELECT's FLAGS lists (RFC 3501 §7.2.6)."""
        return await self.run_read(self._keywords, folder_id, uid_min)

    @staticmethod
    def _keywords(conn: Connection, folder_id: int, uid_min: int) -> set[str]:
        m = t.messages.c
        # the literal '' (not a bound value) lets SQLite use the partial index
        # ix_messages_keywords, which holds only the messages that have keywords; the
        # whole folder (SELECT) reads that index alone, a few new UIDs the UID index
        q = select(m.keywords).distinct().where(m.folder_id == folder_id, _HAS_KEYWORDS)
        if uid_min > 1:
            q = q.where(m.uid >= uid_min)
        rows = conn.execute(q).all()
        return {k for r in rows for k in r[0].split(" ") if k}

    async def folder_status(self, folder_id: int) -> FolderStatus:
        m = t.messages.c

        def read(conn: Connection) -> tuple[Any, Any]:
            f = conn.execute(select(t.folders).where(t.folders.c.id == folder_id)).first()
            if f is None:
                raise NotFound("no such folder")
            return f, conn.execute(select(
                func.count(), func.coalesce(func.sum(m.size), 0),
                func.coalesce(func.sum((m.flags.op("&")(SEEN_BIT) == 0).cast(Integer)), 0),
                func.coalesce(func.sum((m.flags.op("&")(DELETED_BIT) != 0).cast(Integer)), 0),
            ).where(m.folder_id == folder_id)).one()

        f, row = await self.run_read(read, rows=self.rows_hint(folder_id))  # counts them all
        return FolderStatus(messages=row[0], size=int(row[1]), unseen=int(row[2]),
                            deleted=int(row[3]), uidnext=f.uidnext, uidvalidity=f.uidvalidity,
                            highestmodseq=f.highestmodseq)

    # --- reading messages ------------------------------------------------------------
    async def list_messages(self, folder_id: int, uid_min: int = 1,
                            uid_max: int | None = None) -> list[Message]:
        q = select(*_MSG_COLS).where(and_(t.messages.c.folder_id == folder_id,
                                          t.messages.c.uid >= uid_min))
        if uid_max is not None:
            q = q.where(t.messages.c.uid <= uid_max)
        q = q.order_by(t.messages.c.uid)
        return await self.run_read(lambda conn: [_message(r) for r in conn.execute(q).all()])

    async def get_messages(self, folder_id: int, uids: Iterable[int]) -> list[Message]:
        uid_list = sorted(set(uids))
        # SQLAlchemy rows and records: ~4x the cost of a plain row (threads.INLINE_ROWS)
        return await self.run_read(_get_messages, folder_id, uid_list, rows=4 * len(uid_list))

    async def present_message_bytes(self, folder_id: int, uid: int, message_id: int,
                                    size: int | None = None) -> bytes | None:
        """The bytes of message ``message_id`` (UID ``uid`` of the folder), or None when
        it is no longer there (expunged by another session): the presence check and the
        file read in ONE hop to a reader thread (POP3 RETR/TOP); without a hop when the
        caller knows the message is small (``size`` up to threads.INLINE_BYTES)."""
        m = t.messages.c
        q = select(m.blob_id, m.prefix).where(and_(
            m.folder_id == folder_id, m.uid == uid, m.id == message_id))

        def read(conn: Connection) -> bytes | None:
            row = conn.execute(q).first()
            if row is None:
                return None
            body = self.blobs.get_sync(row.blob_id)
            return bytes(row.prefix) + body if row.prefix else body

        small = size is not None and size <= INLINE_BYTES
        try:
            return await self.run_read(read, rows=1 if small else None)
        except BlobError as exc:
            raise Unavailable(str(exc)) from exc

    async def changed_since(self, folder_id: int, modseq: int) -> list[Message]:
        q = select(*_MSG_COLS).where(and_(
            t.messages.c.folder_id == folder_id, t.messages.c.modseq > modseq)
        ).order_by(t.messages.c.uid)
        return await self.run_read(lambda conn: [_message(r) for r in conn.execute(q).all()])

    async def expunged_since(self, folder_id: int, modseq: int) -> list[int]:
        q = select(t.expunged.c.uid).where(and_(
            t.expunged.c.folder_id == folder_id, t.expunged.c.modseq > modseq)
        ).order_by(t.expunged.c.uid)
        return await self.run_read(lambda conn: [r.uid for r in conn.execute(q).all()])

    # --- writing messages ------------------------------------------------------------
    @staticmethod
    def _allocate(conn: Connection, folder_id: int, count: int) -> tuple[int, int, int]:
        """Reserve ``count`` UIDs and one new MODSEQ; returns (first_uid, modseq, addr)."""
        res = conn.execute(update(t.folders).where(t.folders.c.id == folder_id).values(
            uidnext=t.folders.c.uidnext + count,
            highestmodseq=t.folders.c.highestmodseq + 1).returning(
            t.folders.c.uidnext, t.folders.c.highestmodseq, t.folders.c.address_id))
        row = res.first()
        if row is None:
            raise NotFound("the folder no longer exists")
        return int(row.uidnext) - count, int(row.highestmodseq), int(row.address_id)

    @staticmethod
    def _lock_folder(conn: Connection, folder_id: int) -> None:
        """PostgreSQL: hold the folder's row until the transaction ends (writers of a
        folder take it before they read the message rows they will change)."""
        conn.execute(select(t.folders.c.id).where(
            t.folders.c.id == folder_id).with_for_update())

    @staticmethod
    def _bump_modseq(conn: Connection, folder_id: int) -> tuple[int, int]:
        res = conn.execute(update(t.folders).where(t.folders.c.id == folder_id).values(
            highestmodseq=t.folders.c.highestmodseq + 1).returning(
            t.folders.c.highestmodseq, t.folders.c.address_id))
        row = res.first()
        if row is None:
            raise NotFound("the folder no longer exists")
        return int(row.highestmodseq), int(row.address_id)

    async def append(self, folder_id: int, data: bytes, *, flags: Iterable[str] = (),
                     internal_date: float | None = None,
                     keys: HeaderKeys | None = None) -> Message:
        """Store one message durably (blob fsynced, then commit); returns it with its UID.
        ``keys``: its sort/thread keys (``mailstack.headerkeys``), stored with it."""
        blob_id = await self.put_blob(data)
        msgs = await self.deliver(blob_id, len(data),
                                  [DeliveryTarget(folder_id, b"", frozenset(flags), keys)],
                                  internal_date=internal_date)
        return msgs[0]

    async def deliver(self, blob_id: str, blob_size: int, targets: Sequence[DeliveryTarget],
                      *, internal_date: float | None = None) -> list[Message]:
        """Insert one message row per target in ONE transaction (all or nothing); the
        blob must already be durable. Returns the rows in the order of ``targets``."""
        now = self.clock()
        when = internal_date if internal_date is not None else now
        return await self.run_write(lambda conn, events: self._insert_copies(
            conn, events, blob_id, blob_size, targets, when, now))

    def _insert_copies(self, conn: Connection, events: list[Any], blob_id: str,
                             blob_size: int, targets: Sequence[DeliveryTarget],
                             when: float, now: float) -> list[Message]:
        """Insert one row per target inside the caller's transaction, locking folders
        in id order; returns the rows in the order of ``targets``."""
        out: dict[int, Message] = {}
        usage: dict[int, tuple[int, int]] = {}
        for i in sorted(range(len(targets)), key=lambda i: targets[i].folder_id):
            tg = targets[i]
            uid, modseq, address_id = self._allocate(conn, tg.folder_id, 1)
            bits, keywords = flags_to_db(tg.flags)
            size = blob_size + len(tg.prefix)
            res = conn.execute(insert(t.messages).values(
                folder_id=tg.folder_id, uid=uid, modseq=modseq, flags=bits,
                keywords=keywords, internal_date=when, size=size, blob_id=blob_id,
                prefix=tg.prefix, created_at=now, **key_values(tg.keys, when))
                .returning(t.messages.c.id))
            out[i] = Message(int(res.scalar_one()), tg.folder_id, uid, modseq,
                             flags_from_db(bits, keywords), when, size, blob_id, tg.prefix)
            events.append(MessagesAdded(address_id, tg.folder_id, (uid,)))
            used = usage.get(address_id, (0, 0))
            usage[address_id] = (used[0] + size, used[1] + 1)
        for address_id, (dbytes, dmsgs) in usage.items():
            self._add_usage(conn, address_id, dbytes, dmsgs)
        return [out[i] for i in range(len(targets))]

    async def store_flags(self, folder_id: int, uids: Iterable[int], flags: Iterable[str],
                          mode: str, *, unchanged_since: int | None = None
                          ) -> tuple[list[Message], list[int]]:
        """Change flags (mode add/remove/replace). Messages whose flags really change get
        one new MODSEQ. Returns (changed messages, uids refused by UNCHANGEDSINCE,
        RFC 7162 §3.1.3)."""
        changed, refused, _ = await self.store_flags_report(
            folder_id, uids, flags, mode, unchanged_since=unchanged_since, want_after=False)
        return changed, refused

    async def store_flags_report(self, folder_id: int, uids: Iterable[int],
                                 flags: Iterable[str], mode: str, *,
                                 unchanged_since: int | None = None, want_after: bool = True
                                 ) -> tuple[list[Message], list[int], list[Message]]:
        """``store_flags`` that also returns (with ``want_after``) every listed message
        still present, as it is after the change (ascending UID): what a non-silent
        STORE reports, without a second read transaction. Statements: one SELECT, and
        only if something changes one MODSEQ bump plus one UPDATE (one ``uid IN (...)``
        per chunk when all changed messages end with the same flags, else one
        executemany by id), not one UPDATE per message."""
        if mode not in ("add", "remove", "replace"):
            raise ValueError(mode)
        want_bits, want_kw = flags_to_db(frozenset(flags))
        want_kw_set = {k.lower(): k for k in want_kw.split(" ") if k}
        uid_set = sorted(set(uids))
        m = t.messages.c

        def tx(conn: Connection, events: list[Any]
               ) -> tuple[list[Message], list[int], list[Message]]:
            changed: list[Message] = []
            refused: list[int] = []
            after: list[Message] = []
            current: list[Any] = []
            if not self.is_sqlite:
                # PostgreSQL runs read committed: the flags this STORE changes are read
                # only once it holds the folder row, which every writer of the folder
                # takes first; else two STOREs on one message both read the old flags
                # and the later one undoes the other's change (found by imap_stress)
                self._lock_folder(conn, folder_id)
            for i in range(0, len(uid_set), 500):
                current += conn.execute(select(*_MSG_COLS).where(and_(
                    m.folder_id == folder_id, m.uid.in_(uid_set[i:i + 500])))).all()
            current.sort(key=lambda r: r.uid)
            new_flags: dict[int, tuple[int, str]] = {}  # uid -> (bits, keywords)
            for row in current:
                if unchanged_since is not None and row.modseq > unchanged_since:
                    refused.append(row.uid)
                    continue
                kws = {k.lower(): k for k in row.keywords.split(" ") if k}
                if mode == "add":
                    bits, kws = row.flags | want_bits, {**kws, **want_kw_set}
                elif mode == "remove":
                    bits = row.flags & ~want_bits
                    kws = {k: v for k, v in kws.items() if k not in want_kw_set}
                else:
                    bits, kws = want_bits, dict(want_kw_set)
                kw_text = " ".join(sorted(kws.values(), key=str.lower))
                if bits != row.flags or kw_text != row.keywords:
                    new_flags[row.uid] = (bits, kw_text)
            modseq = address_id = 0
            if new_flags:
                modseq, address_id = self._bump_modseq(conn, folder_id)
                self._write_flags(conn, folder_id, current, new_flags, modseq)
            for row in current:
                if row.uid not in new_flags:
                    if want_after:
                        after.append(_message(row))
                    continue
                bits, kw_text = new_flags[row.uid]
                msg = Message(row.id, folder_id, row.uid, modseq,
                              flags_from_db(bits, kw_text), row.internal_date,
                              row.size, row.blob_id, row.prefix or b"")
                changed.append(msg)
                if want_after:
                    after.append(msg)
            if changed:
                events.append(FlagsChanged(address_id, folder_id,
                                           tuple(m.uid for m in changed), modseq))
            return changed, refused, after

        return await self.run_write(tx)

    @staticmethod
    def _write_flags(conn: Connection, folder_id: int, current: list[Any],
                     new_flags: dict[int, tuple[int, str]], modseq: int) -> None:
        """Write the new flags (all with ``modseq``) in as few statements as possible."""
        m = t.messages.c
        if len(set(new_flags.values())) == 1:  # the usual case: one resulting flag set
            bits, kw_text = next(iter(new_flags.values()))
            uids = sorted(new_flags)
            for i in range(0, len(uids), 500):
                conn.execute(update(t.messages).where(and_(
                    m.folder_id == folder_id, m.uid.in_(uids[i:i + 500])))
                    .values(flags=bits, keywords=kw_text, modseq=modseq))
            return
        stmt = update(t.messages).where(m.id == bindparam("_id")).values(
            flags=bindparam("_flags"), keywords=bindparam("_kw"), modseq=modseq)
        params = [{"_id": r.id, "_flags": new_flags[r.uid][0], "_kw": new_flags[r.uid][1]}
                  for r in current if r.uid in new_flags]
        for i in range(0, len(params), 500):
            conn.execute(stmt, params[i:i + 500])

    async def copy_messages(self, src_folder_id: int, uids: Iterable[int],
                            dst_folder_id: int) -> list[tuple[int, int]]:
        """Copy (same blob, new rows); returns [(src_uid, dst_uid)] (RFC 4315 COPYUID)."""
        return await self._copy(src_folder_id, uids, dst_folder_id, expunge_source=False)

    async def move_messages(self, src_folder_id: int, uids: Iterable[int],
                            dst_folder_id: int) -> list[tuple[int, int]]:
        """Atomic copy + expunge (RFC 6851 MOVE)."""
        return await self._copy(src_folder_id, uids, dst_folder_id, expunge_source=True)

    async def _copy(self, src: int, uids: Iterable[int], dst: int, *,
                    expunge_source: bool) -> list[tuple[int, int]]:
        rows = await self.get_messages(src, uids)
        if not rows:
            return []
        now = self.clock()

        def tx(conn: Connection, events: list[Any]) -> list[tuple[int, int]]:
            pairs: list[tuple[int, int]] = []
            # lock folders in id order
            for fid in sorted({src, dst}):
                if fid == dst:
                    first_uid, modseq, dst_addr = self._allocate(conn, dst, len(rows))
                    # RFC 6851 §3: a MOVE within one folder gives the messages new
                    # UIDs; the expunge shares the allocation's MODSEQ
                    src_modseq, src_addr = modseq, dst_addr
                elif expunge_source:
                    src_modseq, src_addr = self._bump_modseq(conn, src)
            # verify the source rows still exist inside the transaction, and take
            # their sort/thread keys (a copy has the same header: same keys)
            mc = t.messages.c
            key_cols = [getattr(mc, name) for name in KEY_COLUMNS]
            live: dict[int, Any] = {}
            src_uids = [m.uid for m in rows]
            for i in range(0, len(src_uids), 500):
                for r in conn.execute(select(mc.uid, *key_cols).where(and_(
                        mc.folder_id == src, mc.uid.in_(src_uids[i:i + 500])))).all():
                    live[r[0]] = r[1:]
            new_rows = []
            copied_bytes = 0
            for n, m in enumerate(r for r in rows if r.uid in live):
                new_uid = first_uid + n
                bits, keywords = flags_to_db(m.flags)
                new_rows.append({
                    "folder_id": dst, "uid": new_uid, "modseq": modseq, "flags": bits,
                    "keywords": keywords, "internal_date": m.internal_date, "size": m.size,
                    "blob_id": m.blob_id, "prefix": m.prefix, "created_at": now,
                    **dict(zip(KEY_COLUMNS, live[m.uid], strict=True))})
                pairs.append((m.uid, new_uid))
                copied_bytes += m.size
            if new_rows:  # one executemany: one round trip for the whole copy
                conn.execute(insert(t.messages), new_rows)
                self._add_usage(conn, dst_addr, copied_bytes, len(new_rows))
            if pairs:
                events.append(MessagesAdded(dst_addr, dst, tuple(p[1] for p in pairs)))
            if expunge_source and pairs:
                moved = [p[0] for p in pairs]
                self._expunge_rows(conn, src, moved, src_modseq)
                events.append(MessagesExpunged(src_addr, src, tuple(moved), src_modseq))
            return pairs

        return await self.run_write(tx)

    def _expunge_rows(self, conn: Connection, folder_id: int, uids: list[int],
                      modseq: int) -> None:
        for i in range(0, len(uids), 500):
            chunk = uids[i:i + 500]
            self._subtract_rows(conn, folder_id, t.messages.c.uid.in_(chunk))
            conn.execute(delete(t.messages).where(and_(
                t.messages.c.folder_id == folder_id, t.messages.c.uid.in_(chunk))))
            conn.execute(insert(t.expunged), [
                {"folder_id": folder_id, "uid": u, "modseq": modseq} for u in chunk])

    async def expunge(self, folder_id: int, uids: Iterable[int] | None = None,
                      *, only_deleted: bool = True, others_since: int | None = None
                      ) -> list[int]:
        """Remove messages flagged \\Deleted (restricted to ``uids`` if given: UID
        EXPUNGE, RFC 4315 §2.1); ``only_deleted=False`` removes ``uids`` regardless
        (POP3 DELE at QUIT). Returns the expunged UIDs in ascending order; with
        ``others_since`` (a MODSEQ) also those expunged by others after it, read in
        the same transaction (IMAP EXPUNGE tells them too, RFC 3501 §6.4.3)."""
        cond = [t.messages.c.folder_id == folder_id]
        if only_deleted:
            cond.append(t.messages.c.flags.op("&")(DELETED_BIT) != 0)
        wanted = None if uids is None else set(uids)

        def tx(conn: Connection, events: list[Any]) -> list[int]:
            if not self.is_sqlite:
                # concurrent EXPUNGEs of one folder (PostgreSQL, read committed): the
                # second waits here for the first and then no longer finds its messages,
                # instead of expunging the same UIDs twice (unique violation). The folder
                # row first, as every other write path locks it before message rows.
                self._lock_folder(conn, folder_id)
            q = select(t.messages.c.uid).where(and_(*cond)).order_by(t.messages.c.uid)
            found = [r.uid for r in conn.execute(q).all()]
            if wanted is not None:
                found = [u for u in found if u in wanted]
            others: list[int] = []
            if others_since is not None:
                others = [r.uid for r in conn.execute(select(t.expunged.c.uid).where(
                    t.expunged.c.folder_id == folder_id,
                    t.expunged.c.modseq > others_since)).all()]
            if not found:
                return sorted(others)
            modseq, address_id = self._bump_modseq(conn, folder_id)
            self._expunge_rows(conn, folder_id, found, modseq)
            events.append(MessagesExpunged(address_id, folder_id, tuple(found), modseq))
            return sorted(set(found).union(others))

        return await self.run_write(tx)

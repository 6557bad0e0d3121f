"""The store's core: engine, write transactions, blobs, events, record types, errors.

Implementation notes (invariants):
- Hot paths hand a whole transaction to ``run_read`` / ``run_write`` as ONE plain
  function over a synchronous connection: on SQLite that is one hop to the store's
  reader or writer thread (threads.py) instead of ~4 thread hops per statement through
  aiosqlite; on PostgreSQL the same function runs with ``run_sync``. The remaining,
  colder code keeps ``_read()`` / ``_write()`` with async bodies.
- Every write goes through ``_write()`` or ``run_write()``: on SQLite it holds the
  process-wide writer lock (and, for ``serve --workers``, a lock on a file shared by
  the workers, so a worker waiting for another's transaction is woken by the kernel
  when it ends instead of polling with SQLite's busy handler; SQLite's own lock still
  decides) and opens ``BEGIN IMMEDIATE``; on PostgreSQL row locks (``UPDATE folders ...``) order
  concurrent writers. Events are collected during the transaction and published only
  after a successful commit ("commit first, then tell other sessions").
- Blob bytes are durable before the transaction that references them starts.
- A database or disk failure surfaces as ``Unavailable`` so front-ends answer a
  temporary error (451 4.3.0 / NO [UNAVAILABLE]) with nothing half-stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .. import metrics
from .blobs import BlobError, BlobStore
from .changes import ChangeFollower
from .db import _split_schema, create_engine, migrate_sync, schema_of
from .events import (
    AutorespondersChanged,
    Event,
    EventHub,
    Resync,
    decode_event,
    encode_event,
)
from .flagcache import FlagCache
from .heads import HeadCache
from .threads import INLINE_ROWS, Prepared, SqliteThreads
from .writer import GroupWriter

T = TypeVar("T")

log = logging.getLogger("mailstack.store")
_ENOSPC = errno.ENOSPC


class StoreError(Exception):
    """Base class of the store's refusals (a user's mistake, with a clear text)."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class LimitReached(StoreError):
    pass


class Conflict(StoreError):
    """The operation is not allowed in the current state (e.g. delete INBOX)."""


class Unavailable(StoreError):
    """Database or disk failure: try again later. Nothing was stored."""


class InsufficientStorage(Unavailable):
    """The disk (or the database's disk) is full: nothing was stored. SMTP answers
    ``452 4.3.1`` (RFC 3463 §3.4 "mail system full") rather than ``451 4.3.0``."""


SQLITE_FULL = 13  # sqlite3 result code "database or disk is full"
PG_DISK_FULL = "53100"  # PostgreSQL SQLSTATE disk_full


def _driver_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a database driver raises without SQLAlchemy wrapping them: a refused
    or reset connection (``OSError``, which covers ``ConnectionRefusedError`` and
    ``TimeoutError``) and asyncpg's own errors raised while connecting."""
    errors: list[type[BaseException]] = [OSError, OperationalError, DBAPIError]
    try:
        import asyncpg

        errors += [asyncpg.PostgresError, asyncpg.InterfaceError]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    return tuple(errors)


DB_ERRORS = _driver_errors()


def unavailable(exc: BaseException) -> Unavailable:
    """The store's view of a driver or disk failure (one line, no traceback needed)."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    cause = orig.__cause__
    state = state or getattr(cause, "sqlstate", None)
    errno_ = getattr(orig, "errno", None)
    text = f"database unavailable: {type(orig).__name__}: {orig}".replace("\n", " ")[:300]
    if (code is not None and code & 0xFF == SQLITE_FULL) or state == PG_DISK_FULL \
            or errno_ == _ENOSPC or "database or disk is full" in text:
        return InsufficientStorage(text)
    return Unavailable(text)


# --- records -------------------------------------------------------------------------

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
_FLAG_BITS = {name.lower(): 1 << i for i, name in enumerate(SYSTEM_FLAGS)}


def flags_to_db(flags: frozenset[str] | set[str] | tuple[str, ...]) -> tuple[int, str]:
    """Split flags into the system-flag bitmask and the keyword string (deduped,
    case-insensitively: RFC 9051 §2.3.2 flag names are case-insensitive)."""
    bits, keywords, seen = 0, [], set()
    for f in flags:
        low = f.lower()
        if low in _FLAG_BITS:
            bits |= _FLAG_BITS[low]
        elif low == "\\recent":
            continue  # session-only in IMAP4rev1, gone in rev2; never stored
        elif low not in seen:
            seen.add(low)
            keywords.append(f)
    return bits, " ".join(sorted(keywords, key=str.lower))


def flags_from_db(bits: int, keywords: str) -> frozenset[str]:
    out = {name for i, name in enumerate(SYSTEM_FLAGS) if bits & (1 << i)}
    out.update(k for k in keywords.split(" ") if k)
    return frozenset(out)


SEEN_BIT = _FLAG_BITS["\\seen"]
DELETED_BIT = _FLAG_BITS["\\deleted"]


@dataclass(frozen=True)
class Domain:
    id: int
    name: str
    plan: str


@dataclass(frozen=True)
class Address:
    id: int
    domain_id: int
    local_part: str
    domain: str
    kind: str
    display_name: str
    password_hash: str | None
    forward_to: tuple[str, ...]
    keep_copy: bool
    app_passwords_only: bool
    credential_epoch: int
    plan: str

    @property
    def email(self) -> str:
        return f"{self.local_part}@{self.domain}"

    @property
    def key(self) -> str:
        return f"{self.local_part.lower()}@{self.domain}"


@dataclass(frozen=True)
class Alias:
    id: int
    local_part: str
    domain: str
    targets: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.local_part.lower()}@{self.domain}"


@dataclass(frozen=True)
class Folder:
    id: int
    address_id: int
    name: str
    special_use: str | None
    subscribed: bool
    uidvalidity: int
    uidnext: int
    highestmodseq: int


@dataclass(frozen=True)
class Message:
    id: int
    folder_id: int
    uid: int
    modseq: int
    flags: frozenset[str]
    internal_date: float
    size: int
    blob_id: str
    prefix: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class FolderStatus:
    messages: int
    unseen: int
    deleted: int
    size: int
    uidnext: int
    uidvalidity: int
    highestmodseq: int


@dataclass(frozen=True)
class ActivityEntry:
    at: float
    address: str | None
    client_ip: str | None
    protocol: str | None
    event: str
    detail: str
    count: int = 1  # attempts an aggregated row stands for


# --- the core ------------------------------------------------------------------------


class StoreBase:
    # Bumped by every responder change of this process and by each one another process
    # made (``publish_remote``): mailstack/autoreplies.py re-reads its cache then.
    autoresponder_changes = 0

    def __init__(self, url: str, blob_root: Path, *, clock: Callable[[], float] = time.time,
                 engine: AsyncEngine | None = None) -> None:
        self.url = url
        self.engine = engine or create_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self.blobs = BlobStore(blob_root)
        self.events = EventHub()
        self.clock = clock
        self._write_lock = asyncio.Lock()
        self._writers_fd: int | None = None  # share_writer_queue
        self.writer = GroupWriter(self)  # SQLite: group commit of all write transactions
        # SQLite: whole transactions in one hop to the database's threads (threads.py)
        self._threads = SqliteThreads(url) if self.is_sqlite and engine is None else None
        # message count of a folder when last read whole (SELECT): says whether the
        # next whole-folder read is small enough to run without a thread hop
        self._folder_rows: dict[Hashable, int] = {}
        self.flag_cache = FlagCache()  # flags of big folders, by MODSEQ (flagcache.py)
        self.heads = HeadCache()  # header blocks of message files, by blob id (heads.py)
        # Across nodes (PostgreSQL): events also go out with pg_notify inside the
        # transaction, so other nodes get them exactly when the commit happens.
        self.node_id = uuid.uuid4().hex
        self.channel = f"mailstack_{schema_of(url) or 'public'}"[:63]
        self._listener: Any = None
        self._follower: ChangeFollower | None = None
        self._listener_lost = asyncio.Event()
        self._listen_task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self.listen_reconnects = 0
        self.listen_check_seconds = 5.0  # liveness check of the LISTEN connection
        self.listen_backoff = (0.5, 30.0)  # first and largest reconnect delay, seconds

    async def migrate(self) -> int:
        async with self.engine.begin() as conn:
            return await conn.run_sync(migrate_sync)

    async def open(self, *, listen: bool = True) -> None:
        """Apply migrations, sweep temp files a crash may have left, and (PostgreSQL)
        listen for other nodes' change events."""
        await self.migrate()
        await asyncio.to_thread(self.blobs.sweep_temp)
        if listen and self.is_sqlite:
            self._follower = ChangeFollower(self)
            await self._follower.start()
        elif listen:
            await self._listen()

    def publish_remote(self, event: Event) -> None:
        """Publish an event another process or node committed (change log, NOTIFY)."""
        if isinstance(event, AutorespondersChanged):
            self.autoresponder_changes += 1
        self.events.publish(event)

    async def _listen(self) -> None:
        """A dedicated asyncpg connection (outside the pool) LISTENs on our channel; a
        supervisor task reconnects it after an outage, with exponential backoff, and
        then sends ``Resync`` to every session (notifications sent while it was down
        are lost: sessions re-check what they hold). docs/behaviour.md §12."""
        await self._connect_listener()
        self._listen_task = asyncio.create_task(self._supervise_listener())

    async def _connect_listener(self) -> None:
        import asyncpg

        dsn = _split_schema(self.url)[0].replace("postgresql+asyncpg://", "postgresql://", 1)

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            decoded = decode_event(payload)
            if decoded is not None and decoded[0] != self.node_id:
                self.publish_remote(decoded[1])

        lost = asyncio.Event()
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(self.channel, on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._listener, self._listener_lost = conn, lost
        self.listening.set()

    async def _listener_alive(self) -> bool:
        """Wait until the LISTEN connection is lost (False) or a liveness check is due
        and passes (True)."""
        try:
            await asyncio.wait_for(self._listener_lost.wait(), self.listen_check_seconds)
            return False
        except TimeoutError:
            pass
        try:
            await asyncio.wait_for(self._listener.fetchval("SELECT 1"), 5)
            return True
        except Exception:
            return False

    async def _supervise_listener(self) -> None:
        while True:
            while await self._listener_alive():
                pass
            self.listening.clear()
            log.warning("store: the event channel (LISTEN) was lost; reconnecting")
            with contextlib.suppress(Exception):
                self._listener.terminate()
            delay, most = self.listen_backoff
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._connect_listener()
                    break
                except Exception as exc:  # one line per attempt, no traceback
                    log.warning("store: event channel reconnect failed (%s: %s); next try "
                                "in %.1f s", type(exc).__name__, exc, min(delay * 2, most))
                    delay = min(delay * 2, most)
            self.listen_reconnects += 1
            log.warning("store: event channel back; every session resynchronises")
            self.events.publish_all(Resync(0))

    def share_writer_queue(self, path: Path) -> None:
        """SQLite, several processes writing (``serve --workers``): queue their write
        transactions on a lock of ``path`` (see the implementation notes)."""
        if self.is_sqlite and self._writers_fd is None:
            self._writers_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    async def _queue_writer(self) -> bool:
        """Take the shared writers' lock; False when there is none."""
        fd = self._writers_fd
        if fd is None:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            pass
        waiting = asyncio.ensure_future(asyncio.to_thread(fcntl.lockf, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(waiting)
        except asyncio.CancelledError:  # the thread may still get it: give it back then
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception() is not None
                                      or fcntl.lockf(fd, fcntl.LOCK_UN))
            raise
        return True

    @asynccontextmanager
    async def writers_queued(self) -> AsyncIterator[None]:
        """Hold the writers' lock shared by the workers' processes (when there is one)
        for one write transaction (writer.py)."""
        queued = await self._queue_writer()
        try:
            yield
        finally:
            if queued:
                self._dequeue_writer()

    def _dequeue_writer(self) -> None:
        if self._writers_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self._writers_fd, fcntl.LOCK_UN)

    async def close(self) -> None:
        await self.writer.close()
        if self._writers_fd is not None:
            os.close(self._writers_fd)
            self._writers_fd = None
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(BaseException):
                await self._listen_task
            self._listen_task = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 5)
            self._listener = None
        await self.engine.dispose()
        if self._threads is not None:
            await asyncio.to_thread(self._threads.close)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except DB_ERRORS as exc:
            raise unavailable(exc) from exc

    async def run_read(self, fn: Callable[..., T], *args: Any, rows: int | None = None) -> T:
        """``fn(conn, *args)``: a whole read transaction as one plain function over a
        synchronous connection. SQLite: one hop to a reader thread (threads.py), or,
        when the caller says it returns at most ``INLINE_ROWS`` rows (``rows``), run
        right here without a hop; PostgreSQL: ``run_sync`` on an async connection (same
        statements, no thread)."""
        try:
            if self._threads is not None:
                if rows is not None and rows <= INLINE_ROWS:
                    return self._threads.read_here(fn, *args)
                return await self._threads.read(fn, *args)
            async with self.engine.connect() as conn:
                return await conn.run_sync(lambda c: fn(c, *args))
        except DB_ERRORS as exc:
            raise unavailable(exc) from exc

    async def read_prepared(self, prepared: Prepared, **params: Any) -> dict[str, Any] | None:
        """The first row of a prepared read (threads.Prepared) as a dict, None if none.
        SQLite: right here on a plain connection (a one-row read by key); PostgreSQL:
        an ordinary read."""
        try:
            if self._threads is not None:
                return self._threads.read_prepared(prepared, params)
            async with self.engine.connect() as conn:
                row = (await conn.execute(prepared.stmt, params)).first()
        except DB_ERRORS as exc:
            raise unavailable(exc) from exc
        return None if row is None else dict(row._mapping)

    def rows_hint(self, key: Hashable) -> int | None:
        """How many rows a whole-folder read returned last time (key: a folder id, or
        (address id, folder name) for SELECT), if known: a hint for
        ``run_read(rows=...)``; a folder that grew since costs one read on the loop."""
        return self._folder_rows.get(key)

    def note_rows(self, key: Hashable, count: int) -> None:
        if len(self._folder_rows) >= 16384:
            self._folder_rows.clear()  # bounded; hints come back with the next reads
        self._folder_rows[key] = count

    async def run_write(self, fn: Callable[[Connection, list[Event]], T]) -> T:
        """``fn(conn, events)``: a whole write transaction as one plain function; events
        appended to the list are published after the commit. SQLite: a member of a
        group commit, run on the writer thread (writer.py); PostgreSQL: ``run_sync`` in
        an ordinary write transaction."""
        if self._threads is not None:
            return await self.writer.run(fn)
        async with self._write() as (conn, events):
            return await conn.run_sync(lambda c: fn(c, events))

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[AsyncConnection, list[Event]]]:
        """A write transaction; events appended to the list are published after commit."""
        if self.is_sqlite:  # grouped with concurrent writers, one commit (writer.py)
            async with self.writer.transaction() as (sq_conn, sq_events):
                yield sq_conn, sq_events
            return
        events: list[Event] = []
        started = time.perf_counter()
        try:
            async with self.engine.begin() as conn:
                yield conn, events
                for ev in events:  # delivered by PostgreSQL only if we commit
                    await conn.execute(text("SELECT pg_notify(:c, :p)"), {
                        "c": self.channel, "p": encode_event(self.node_id, ev)})
        except DB_ERRORS as exc:
            raise unavailable(exc) from exc
        metrics.observe_store_transaction(time.perf_counter() - started)
        for ev in events:
            self.events.publish(ev)

    # --- blobs ---------------------------------------------------------------------
    def free_bytes(self) -> int:
        """Free space (for unprivileged writers) on the file system of the blob store;
        a ``statvfs`` call, cheap enough for the event loop."""
        st = os.statvfs(self.blobs.root)
        return st.f_bavail * st.f_frsize

    def spool_dir(self) -> Path:
        """Where a message that is still arriving may be written (the blob store's temp
        directory: same file system, so ``put_blob_file`` is a rename)."""
        return self.blobs.tmp

    async def put_blob_file(self, path: Path, blob_id: str) -> str:
        """Take over the complete file ``path`` (in ``spool_dir``) whose SHA-256 is
        ``blob_id`` as a blob: fsynced, renamed into place, directory fsynced."""
        try:
            return await self.blobs.put_file(path, blob_id)
        except BlobError as exc:
            if exc.errno == _ENOSPC:
                raise InsufficientStorage(str(exc)) from exc
            raise Unavailable(str(exc)) from exc

    async def put_blob(self, data: bytes) -> str:
        try:
            return await self.blobs.put(data)
        except BlobError as exc:
            if exc.errno == _ENOSPC:
                raise InsufficientStorage(str(exc)) from exc
            raise Unavailable(str(exc)) from exc

    async def message_bytes(self, msg: Message) -> bytes:
        try:
            body = await self.blobs.get(msg.blob_id)
        except BlobError as exc:
            raise Unavailable(str(exc)) from exc
        return msg.prefix + body if msg.prefix else body

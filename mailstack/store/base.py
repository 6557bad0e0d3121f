"""The store's core: engine, write transactions, blobs, events, record types, errors.

Implementation notes (invariants):
- Every write goes through ``_write()``: on SQLite it holds the process-wide writer lock
  and opens ``BEGIN IMMEDIATE``; on PostgreSQL row locks (``UPDATE folders ...``) order
  concurrent writers. Events are collected during the transaction and published only
  after a successful commit ("commit first, then tell other sessions").
- Blob bytes are durable before the transaction that references them starts.
- A database or disk failure surfaces as ``Unavailable`` so front-ends answer a
  temporary error (451 4.3.0 / NO [UNAVAILABLE]) with nothing half-stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .. import metrics
from .blobs import BlobError, BlobStore
from .changes import ChangeFollower
from .changes import record as record_changes
from .db import _split_schema, create_engine, migrate_sync, schema_of
from .events import Event, EventHub, decode_event, encode_event

log = logging.getLogger("mailstack.store")


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


# --- the core ------------------------------------------------------------------------


class StoreBase:
    def __init__(self, url: str, blob_root: Path, *, clock: Callable[[], float] = time.time,
                 engine: AsyncEngine | None = None) -> None:
        self.url = url
        self.engine = engine or create_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self.blobs = BlobStore(blob_root)
        self.events = EventHub()
        self.clock = clock
        self._write_lock = asyncio.Lock()
        # Across nodes (PostgreSQL): events also go out with pg_notify inside the
        # transaction, so other nodes get them exactly when the commit happens.
        self.node_id = uuid.uuid4().hex
        self.channel = f"mailstack_{schema_of(url) or 'public'}"[:63]
        self._listener: Any = None
        self._follower: ChangeFollower | None = None

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

    async def _listen(self) -> None:
        """A dedicated asyncpg connection (outside the pool) LISTENs on our channel."""
        import asyncpg

        dsn = _split_schema(self.url)[0].replace("postgresql+asyncpg://", "postgresql://", 1)

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            decoded = decode_event(payload)
            if decoded is not None and decoded[0] != self.node_id:
                self.events.publish(decoded[1])

        self._listener = await asyncpg.connect(dsn)
        await self._listener.add_listener(self.channel, on_notify)

    async def close(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), 5)
            self._listener = None
        await self.engine.dispose()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise Unavailable(f"database unavailable: {exc.orig!r}") from exc

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[tuple[AsyncConnection, list[Event]]]:
        """A write transaction; events appended to the list are published after commit."""
        events: list[Event] = []
        started = time.perf_counter()
        try:
            if self.is_sqlite:
                async with self._write_lock, self.engine.connect() as conn:
                    conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                    async with conn.begin():
                        yield conn, events
                        # other processes on this box follow the log (store/changes.py)
                        await record_changes(conn, self.node_id, events)
            else:
                async with self.engine.begin() as conn:
                    yield conn, events
                    for ev in events:  # delivered by PostgreSQL only if we commit
                        await conn.execute(text("SELECT pg_notify(:c, :p)"), {
                            "c": self.channel, "p": encode_event(self.node_id, ev)})
        except (OperationalError, DBAPIError) as exc:
            raise Unavailable(f"database unavailable: {exc.orig!r}") from exc
        metrics.observe_store_transaction(time.perf_counter() - started)
        for ev in events:
            self.events.publish(ev)

    # --- blobs ---------------------------------------------------------------------
    async def put_blob(self, data: bytes) -> str:
        try:
            return await self.blobs.put(data)
        except BlobError as exc:
            raise Unavailable(str(exc)) from exc

    async def message_bytes(self, msg: Message) -> bytes:
        try:
            body = await self.blobs.get(msg.blob_id)
        except BlobError as exc:
            raise Unavailable(str(exc)) from exc
        return msg.prefix + body if msg.prefix else body

"""SQLite: whole transactions run on the database's own threads, one hop each.

Why (bench/README.md "One hop per transaction"): through SQLAlchemy's async layer and
aiosqlite every statement costs about four thread round trips (cursor, execute, fetch,
close), each a queue hand-off to aiosqlite's thread and a wake-up of the event loop
through its self-pipe. A read of four statements was ~18 hops. Here a store method
hands ONE plain function over a synchronous SQLAlchemy ``Connection`` to a thread, which
runs the whole transaction and returns the result: one hop, however many statements.

Implementation notes (invariants):
- A second, synchronous engine on the same database file, with the same connection
  set-up as the async one (WAL, ``synchronous=FULL``, foreign keys, busy timeout; our
  own ``BEGIN``: ``db.sqlite_connection_setup``). Both engines see one database; SQLite's
  locks and the store's writer lock order them.
- Reads run on a small pool of reader threads, each transaction ``BEGIN DEFERRED`` (one
  snapshot for all its statements, WAL readers never wait for the writer) and rolled
  back at the end. Several reads run in parallel; the event loop only waits. A read
  its caller knows to be small (``INLINE_ROWS``: single rows by key, a few hundred
  message rows) runs on the event loop's own thread instead, without a hop.
- Writes run on ONE writer thread, only ever called by the group writer
  (``writer.py``), which holds the writer lock around the call; see there for
  grouping, savepoints and durability.
- Nothing here knows about events, sessions or front-ends: the functions are the
  store's, and their SQL stays in ``store/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Dialect, Engine, Select
from sqlalchemy import create_engine as create_sync_engine

from .db import sqlite_connection_setup

T = TypeVar("T")

READERS = 4  # reader threads: SQLite releases the GIL while it reads, and a long read
# (FETCH 1:* of a big mailbox) must not hold up the small ones behind it
INLINE_ROWS = 1000  # a read known to return at most this many rows runs right on the
# calling thread (the event loop): ~1 ms at most from the page cache, where a hop to a
# reader thread and back costs two wake-ups and two hand-overs of the GIL, which under
# load cost more than small reads themselves (bench/README.md "Small reads inline")
INLINE_FILES = 32  # message files: at most this many, of at most INLINE_BYTES together,
INLINE_BYTES = 256 * 1024  # are read on the calling thread (~15 us a file when cached)


class Prepared:
    """A read statement built once, with named bind parameters, for reads on the hot
    path (SMTP RCPT routing): on SQLite compiled once to its SQL text and run on a
    plain sqlite3 connection of the event loop's thread, a single statement in
    autocommit (atomic by itself, no BEGIN/ROLLBACK, no SQLAlchemy per call: ~0.4 ms
    less per call, bench/README.md "Prepared reads"); on PostgreSQL executed as any
    other statement. The SQL stays SQLAlchemy Core, one text for both backends."""

    def __init__(self, stmt: Select[Any]) -> None:
        self.stmt = stmt
        self._sql: tuple[str, tuple[str, ...], tuple[str, ...]] | None = None

    def sqlite_sql(self, dialect: Dialect) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """(SQL text, bind names in order, result column names)."""
        if self._sql is None:
            compiled: Any = self.stmt.compile(dialect=dialect)
            self._sql = (compiled.string, tuple(compiled.positiontup or ()),
                         tuple(c[0] for c in compiled._result_columns))
        return self._sql


class SqliteThreads:
    def __init__(self, url: str, *, readers: int = READERS) -> None:
        sync_url = url.replace("sqlite+aiosqlite://", "sqlite+pysqlite://", 1)
        self.engine: Engine = create_sync_engine(
            sync_url, pool_size=readers + 1, max_overflow=readers,
            connect_args={"timeout": 30, "check_same_thread": False})
        sqlite_connection_setup(self.engine)
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="mailstack-db-read")
        self._local = threading.local()  # read_prepared's (pid, connection) per thread
        self._conns: list[Any] = []
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="mailstack-db-write")

    def _read_tx(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        with self.engine.connect() as conn:
            return fn(conn, *args)

    def read_prepared(self, prepared: Prepared, params: dict[str, Any]
                      ) -> dict[str, Any] | None:
        """The first row of ``prepared`` as a dict (None: no row), on the calling
        thread's own plain connection (one per thread, autocommit, same set-up)."""
        mine = getattr(self._local, "conn", None)
        if mine is None or mine[0] != os.getpid():  # never a connection from before a fork
            mine = self._local.conn = (os.getpid(), self.engine.raw_connection())
            self._conns.append(mine[1])
        conn = mine[1]
        sql, names, columns = prepared.sqlite_sql(self.engine.dialect)
        driver: Any = conn.driver_connection
        cur = driver.execute(sql, [params[n] for n in names])
        row = cur.fetchone()
        cur.close()
        return None if row is None else dict(zip(columns, row, strict=True))

    def read_here(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one read transaction on the calling thread: only for
        reads bounded by ``INLINE_ROWS`` (WAL readers never wait for the writer)."""
        return self._read_tx(fn, args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one read transaction on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_tx, fn, args)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` on the writer thread, with a connection opened for
        ``BEGIN IMMEDIATE``; ``fn`` begins and ends the transaction itself."""
        def run() -> T:
            with self.engine.connect() as conn:
                return fn(conn.execution_options(sqlite_begin="IMMEDIATE"))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, run)

    def close(self) -> None:
        for pool in (self._readers, self._writer):
            pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()  # back to the pool, which dispose() below closes
        self._conns.clear()
        with contextlib.suppress(Exception):
            self.engine.dispose()

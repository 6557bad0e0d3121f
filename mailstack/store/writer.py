"""Group commit for every SQLite write transaction (IMAP STORE, APPEND, EXPUNGE, COPY/MOVE,
\\Recent claims, SMTP acceptance groups, account changes): writers that arrive while a
transaction is open join it, and one COMMIT (one fsync) makes all of them durable.

Why (bench/README.md "IMAP group commit"): SQLite has one writer; under the IMAP mixed
load the writer lock was busy ~95 % of the time and each write waited for it, then paid
its own ``BEGIN IMMEDIATE`` and ``COMMIT`` (thread hops + fsync) for 1-3 statements.

Implementation notes (invariants):
- One writer task owns the connection and the transaction. A caller queues a job and
  waits for its turn; its body then runs in the caller's own task, on the writer's
  connection, one body at a time in queue order (serial semantics: a body sees the
  changes of the bodies before it, as if each had committed alone).
- The first body of a transaction runs without a savepoint: if it fails, the whole
  transaction is rolled back (nothing else ran in it) and the next job starts a new
  one. Every later body runs inside a SAVEPOINT, so its failure undoes only its own
  statements; it is released on success.
- Nobody is told "done" before the COMMIT returned: ``transaction()`` exits only after
  the group's commit (RFC 5321 §6.1 for SMTP's 250, RFC 9051 §6.3.12 for APPEND's OK:
  durability is exactly what it was with one transaction per caller). If the COMMIT
  fails, every member of the group gets the error (``Unavailable`` /
  ``InsufficientStorage``); nothing of theirs is stored.
- Change events of all members go into ``change_log`` in the group's transaction and
  are published after the commit by the writer task, in member order, also for a
  caller that was cancelled while it waited for the commit (the change did happen).
- A caller cancelled before its turn is skipped; one cancelled after its turn was
  granted but before its body ran is counted as failed (the writer never waits for a
  body that will not run). At most ``max_members`` bodies share one transaction.
- Plain-function jobs (``run``, the hot paths: SMTP acceptance, IMAP STORE / APPEND /
  EXPUNGE / COPY): a group of consecutive ones runs in ONE hop to the writer thread
  (threads.py): ``BEGIN IMMEDIATE``, each function inside its own SAVEPOINT (a failure
  undoes only that function's statements and goes back to its caller), the change log,
  ``COMMIT``. A group holds either kind of job, never both (the two kinds run on
  different connections). A function must not await anything: it is the whole
  transaction's SQL for that caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import metrics
from .changes import record as record_changes
from .changes import record_sync as record_changes_sync
from .events import Event

if TYPE_CHECKING:
    from .base import StoreBase

log = logging.getLogger("mailstack.store")


@dataclass
class _Job:
    turn: asyncio.Future[tuple[AsyncConnection, bool]]
    done: asyncio.Future[bool]  # True: body succeeded (its statements stay)
    committed: asyncio.Future[None]
    events: list[Event] = field(default_factory=list)


@dataclass
class _FnJob:
    """A plain function to run in the group's transaction on the writer thread."""

    fn: Callable[[Connection, list[Event]], Any]
    future: asyncio.Future[Any]  # its result (or error), set after the COMMIT
    events: list[Event] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None
    waiter: asyncio.Future[Any] | None = None  # the caller's (shielded) wait


T = TypeVar("T")


@dataclass
class WriterStats:
    groups: int = 0
    members: int = 0
    largest: int = 0


class GroupWriter:
    def __init__(self, store: StoreBase, *, max_members: int = 64) -> None:
        self.store = store
        self.max_members = max_members
        self.queue: deque[_Job | _FnJob] = deque()
        self.stats = WriterStats()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[tuple[AsyncConnection, list[Event]]]:
        from .base import DB_ERRORS, unavailable

        loop = asyncio.get_running_loop()
        job = _Job(loop.create_future(), loop.create_future(), loop.create_future())
        # nobody may be left to read a failed commit (a cancelled caller): no warning
        job.committed.add_done_callback(
            lambda f: f.cancelled() or f.exception())
        self.queue.append(job)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        self._wake.set()
        try:
            conn, first = await job.turn
        except BaseException as exc:
            if job.turn.done() and not job.turn.cancelled() and job.turn.exception() is None:
                job.done.set_result(False)  # granted, but this body will never run
            if isinstance(exc, DB_ERRORS):
                raise unavailable(exc) from exc
            raise
        ok = False
        try:
            if first:
                yield conn, job.events
            else:
                savepoint = await conn.begin_nested()
                try:
                    yield conn, job.events
                except BaseException:
                    await savepoint.rollback()
                    raise
                await savepoint.commit()
            ok = True
        except DB_ERRORS as exc:
            raise unavailable(exc) from exc
        finally:
            if not job.done.done():
                job.done.set_result(ok)
        # shielded: a caller cancelled now still leaves its change to be committed and
        # published by the writer; it just does not hear about it
        try:
            await asyncio.shield(job.committed)
        except DB_ERRORS as exc:
            raise unavailable(exc) from exc

    async def run(self, fn: Callable[[Connection, list[Event]], T]) -> T:
        """``fn(conn, events)`` as one member of a group transaction on the writer
        thread; its result once the group is committed (see the implementation notes).
        An exception of ``fn`` undoes its statements and is raised here; a database
        failure is ``Unavailable``."""
        from .base import DB_ERRORS, unavailable

        loop = asyncio.get_running_loop()
        job = _FnJob(fn, loop.create_future())
        self.queue.append(job)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        self._wake.set()
        # shielded: a caller cancelled once its job is in a group still leaves its change
        # to be committed and published by the writer; it just does not hear about it.
        # Cancelled before that (its wait is cancelled at once), the job is skipped.
        job.waiter = asyncio.shield(job.future)
        try:
            return await job.waiter
        except DB_ERRORS as exc:
            raise unavailable(exc) from exc

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queue:
                await self._group()

    def _next(self) -> _Job | None:
        """The next async-body job, skipping cancelled ones; None at the end of the
        queue or before a function job (it belongs to the next group)."""
        while self.queue and isinstance(self.queue[0], _Job):
            job = self.queue.popleft()
            assert isinstance(job, _Job)
            if not job.turn.cancelled():
                return job
        return None

    async def _group(self) -> None:
        if isinstance(self.queue[0], _FnJob):
            await self._fn_group()
        else:
            await self._body_group()

    async def _fn_group(self) -> None:
        """Consecutive function jobs in one transaction, in one hop to the writer
        thread."""
        store = self.store
        assert store._threads is not None
        jobs: list[_FnJob] = []
        while self.queue and isinstance(self.queue[0], _FnJob) \
                and len(jobs) < self.max_members:
            job = self.queue.popleft()
            assert isinstance(job, _FnJob)
            if job.waiter is None or not job.waiter.cancelled():
                jobs.append(job)
        if not jobs:
            return
        node = store.node_id

        def transaction(conn: Connection) -> None:
            with conn.begin():
                done = []
                for job in jobs:
                    savepoint = conn.begin_nested()
                    try:
                        job.result = job.fn(conn, job.events)
                    except Exception as exc:
                        savepoint.rollback()
                        job.error, job.events[:] = exc, []
                    else:
                        savepoint.commit()
                        done.append(job)
                record_changes_sync(conn, node, [ev for j in done for ev in j.events])

        started = time.perf_counter()
        try:
            async with store._write_lock, store.writers_queued():
                await store._threads.write(transaction)
        except asyncio.CancelledError:
            self._fail([job.future for job in jobs], RuntimeError("store closed"))
            raise
        except Exception as exc:  # BEGIN, COMMIT or the change log: nothing stored
            self._fail([job.future for job in jobs], exc)
            return
        for job in jobs:
            if job.future.done():
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.result)
        self._committed(started, [job.events for job in jobs if job.error is None])

    async def _body_group(self) -> None:
        """One transaction: grant turns until the queue is empty (or the group full),
        then commit and tell every member."""
        store = self.store
        members: list[_Job] = []
        current: list[_Job] = []  # the job whose body runs now (cancellation: fail it)
        started = time.perf_counter()
        try:
            # with `serve --workers`, the other processes' writers queue on a file lock
            async with store._write_lock, store.writers_queued(), \
                    store.engine.connect() as conn:
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                tx = await conn.begin()
                try:
                    first = True
                    while len(members) < self.max_members:
                        job = self._next()
                        if job is None:
                            break
                        job.turn.set_result((conn, first))
                        current[:] = [job]
                        ok = await job.done
                        current.clear()
                        if ok:
                            members.append(job)
                            first = False
                        elif first:  # nothing else in it: undo all, start afresh
                            await tx.rollback()
                            return
                    if not members:
                        await tx.rollback()
                        return
                    # other processes on this box follow the log (store/changes.py)
                    await record_changes(conn, store.node_id,
                                         [ev for job in members for ev in job.events])
                    await tx.commit()
                except BaseException:
                    if tx.is_active:
                        with contextlib.suppress(Exception):
                            await tx.rollback()
                    raise
        except asyncio.CancelledError:
            self._fail([j.committed for j in members + current], RuntimeError("store closed"))
            raise
        except Exception as exc:
            # BEGIN, COMMIT or the change log failed: no member's change is stored
            if not members:  # the failure came before any turn: the next job gets it
                job = self._next()
                if job is not None:
                    job.turn.set_exception(exc)
                    return
            self._fail([j.committed for j in members], exc)
            return
        for job in members:
            if not job.committed.done():
                job.committed.set_result(None)
        self._committed(started, [job.events for job in members])

    def _committed(self, started: float, events: list[list[Event]]) -> None:
        """After a group's COMMIT (its callers told): count it, publish its events in
        member order."""
        metrics.observe_store_transaction(time.perf_counter() - started)
        self.stats.groups += 1
        self.stats.members += len(events)
        self.stats.largest = max(self.stats.largest, len(events))
        for member in events:
            for ev in member:
                self.store.events.publish(ev)

    @staticmethod
    def _fail(waiting: list[asyncio.Future[Any]], exc: BaseException) -> None:
        """A group failed as a whole (BEGIN, COMMIT, the change log): nothing of it is
        stored, every member hears the error."""
        for fut in waiting:
            if not fut.done():
                fut.set_exception(exc)
        if waiting:
            log.warning("store: group commit of %d writes failed: %s", len(waiting), exc)

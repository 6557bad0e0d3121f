"""Changes reach every process on one box (docs/behaviour.md §10), on SQLite as they do
through LISTEN/NOTIFY on PostgreSQL: the CLI changing a password, a second server
process (``serve --workers``), anything that writes the same database.

How: each write transaction that produces events also inserts them into ``change_log``
(same transaction: a change is logged exactly when it commits); every server process
follows the log, a cheap indexed query every ``interval`` seconds, and publishes the
events other processes wrote to its own sessions. The log is kept short: the follower
deletes all but the newest ``keep`` rows now and then (id-based, no clock involved), so
a process stalled for longer than that misses events and its sessions fall back to
what they re-read anyway (epochs are checked again at each command that needs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select

from . import schema as t
from .events import Event, EventHub, decode_event, encode_event

log = logging.getLogger("mailstack.store")


async def record(conn: Any, node: str, events: Sequence[Event]) -> None:
    """Log ``events`` inside the caller's write transaction."""
    if events:
        await conn.execute(insert(t.change_log), [
            {"node": node, "payload": encode_event(node, ev)} for ev in events])


def record_sync(conn: Any, node: str, events: Sequence[Event]) -> None:
    """``record`` for a transaction running on the store's threads (threads.py)."""
    if events:
        conn.execute(insert(t.change_log), [
            {"node": node, "payload": encode_event(node, ev)} for ev in events])


class ChangeFollower:
    def __init__(self, store: Any, *, interval: float = 0.25, keep: int = 10_000,
                 prune_every: int = 240) -> None:
        self.store = store
        self.engine = store.engine
        self.node: str = store.node_id
        self.hub: EventHub = store.events
        self.interval = interval
        self.keep = keep
        self.prune_every = prune_every
        self.last = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with self.engine.connect() as conn:
            self.last = int((await conn.execute(select(func.max(t.change_log.c.id))))
                            .scalar() or 0)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll(self) -> int:
        """Publish what other processes logged since the last poll; returns how many."""
        c = t.change_log.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(c.id, c.node, c.payload).where(
                c.id > self.last).order_by(c.id).limit(1000))).all()
        n = 0
        for row in rows:
            self.last = int(row.id)
            if row.node == self.node:
                continue
            decoded = decode_event(row.payload)
            if decoded is not None:
                self.store.publish_remote(decoded[1])
                n += 1
        return n

    async def prune(self) -> None:
        c = t.change_log.c
        async with self.store._write() as (conn, _):
            await conn.execute(delete(t.change_log).where(c.id <= self.last - self.keep))

    async def _run(self) -> None:
        rounds = 0
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
                rounds += 1
                if rounds % self.prune_every == 0:
                    await self.prune()
                if failing:
                    log.warning("change log: following again")
                failing = False
            except Exception as exc:  # database away or locked: try again next round
                if not failing:
                    log.warning("change log: cannot follow other processes' changes: %s",
                                exc)
                failing = True

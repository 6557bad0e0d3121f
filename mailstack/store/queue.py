"""The outbound queue (mail for the internet) and the POP3 maildrop locks.

The queue holds one row per remote recipient (docs/behaviour.md §6). Implementation notes
(invariants):
- A runner claims due rows (``claim_due``): on PostgreSQL ``SELECT ... FOR UPDATE SKIP
  LOCKED`` then a lease (``claimed_by``, ``lease_until``) in the same transaction, so
  several nodes never claim the same row; on SQLite the claim runs inside ``BEGIN
  IMMEDIATE``. A row whose lease ran out (its node died mid-delivery) is due again and
  taken over: a duplicate delivery is possible after a crash, a loss is not.
- An outcome is written only by the lease holder (``finish``); a runner that lost its
  lease changes nothing.
- Rows are never deleted at their final outcome: "delivered", "failed" and "expired"
  rows stay (with their attempt history) for ``mailstack queue show`` until pruned.
- ``report_action`` not empty means an RFC 3464 report is owed to the sender; reports
  are claimed like deliveries (``claim_reports``) so only one node sends each.
- Rows committed by this process set ``queue_wakeup`` after the commit, so the runner
  starts at once instead of at its next poll.

POP3 locks (RFC 1939 §8: one session per maildrop) live in the database so every node
sees them; a lock whose holder stopped refreshing it (a crashed process) is stale and
may be taken over.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, insert, or_, select, update

from . import schema as t
from .base import StoreBase, Unavailable
from .blobs import BlobError


@dataclass(frozen=True)
class DsnRequest:
    """The DSN parameters of one submitted message (RFC 3461 §4): ``ret`` is "" (not
    given), "FULL" or "HDRS"; ``envid`` the decoded ENVID; ``rcpt`` maps a recipient to
    its (NOTIFY, ORCPT): NOTIFY "" when not given, else an upper-case comma list of
    NEVER|SUCCESS|FAILURE|DELAY; ORCPT decoded, as "addr-type;address" or ""."""

    ret: str = ""
    envid: str = ""
    rcpt: Mapping[str, tuple[str, str]] = field(default_factory=dict)


NO_DSN = DsnRequest()


def queue_row(*, now: float, sender: str, recipient: str, blob_id: str, blob_size: int,
              prefix: bytes, lifetime: float, dsn: DsnRequest = NO_DSN) -> dict[str, object]:
    """The values of one new outbound queue row (due at once)."""
    notify, orcpt = dsn.rcpt.get(recipient, ("", ""))
    return {"created_at": now, "sender": sender, "recipient": recipient,
            "domain": recipient.rpartition("@")[2].lower(), "blob_id": blob_id,
            "prefix": prefix, "size": blob_size + len(prefix), "next_attempt_at": now,
            "attempts": 0, "last_error": "", "expires_at": now + lifetime,
            "delay_notified": False, "dsn_ret": dsn.ret, "dsn_envid": dsn.envid,
            "dsn_notify": notify, "dsn_orcpt": orcpt, "state": "queued", "claimed_by": "",
            "lease_until": 0.0, "finished_at": 0.0, "history": "[]", "status": "",
            "remote_mta": "", "report_action": ""}


@dataclass(frozen=True)
class QueuedMessage:
    id: int
    sender: str
    recipient: str
    domain: str
    blob_id: str
    size: int
    attempts: int
    next_attempt_at: float
    expires_at: float
    last_error: str


@dataclass(frozen=True)
class QueueRow:
    """Everything about one queued recipient (the runner's and the CLI's view)."""

    id: int
    created_at: float
    sender: str
    recipient: str
    domain: str
    blob_id: str
    prefix: bytes
    size: int
    next_attempt_at: float
    attempts: int
    last_error: str
    expires_at: float
    delay_notified: bool
    dsn_ret: str
    dsn_envid: str
    dsn_notify: str
    dsn_orcpt: str
    state: str
    claimed_by: str
    lease_until: float
    finished_at: float
    history: tuple[dict[str, Any], ...]
    status: str
    remote_mta: str
    report_action: str

    @property
    def message_key(self) -> tuple[str, str, float]:
        """Rows queued by one acceptance share it (one report per message)."""
        return (self.sender, self.blob_id, self.created_at)


def _row(r: Any) -> QueueRow:
    try:
        history = tuple(json.loads(r.history or "[]"))
    except ValueError:
        history = ()
    return QueueRow(int(r.id), float(r.created_at), r.sender, r.recipient, r.domain,
                    r.blob_id, bytes(r.prefix or b""), int(r.size), float(r.next_attempt_at),
                    int(r.attempts), r.last_error, float(r.expires_at),
                    bool(r.delay_notified), r.dsn_ret, r.dsn_envid, r.dsn_notify,
                    r.dsn_orcpt, r.state, r.claimed_by, float(r.lease_until),
                    float(r.finished_at), history, r.status, r.remote_mta, r.report_action)


@dataclass(frozen=True)
class Outcome:
    """The result of one attempt for one row, as the runner records it.

    ``state``: "queued" (try again at ``next_attempt_at``), "delivered", "failed",
    "expired". ``attempt``: the history entry (time, host, TLS, reply or error).
    ``counts``: false for an attempt that never reached a server because of our own
    limits (not counted in ``attempts``)."""

    row_id: int
    state: str
    attempt: Mapping[str, Any]
    error: str = ""
    status: str = ""
    remote_mta: str = ""
    next_attempt_at: float = 0.0
    report_action: str = ""


@dataclass(frozen=True)
class QueueStats:
    """For metrics: rows waiting, the oldest waiting row's age, rows per final state."""

    waiting: int
    oldest_age: float
    by_state: Mapping[str, int]


class QueueMixin(StoreBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue_wakeup = asyncio.Event()
        # How long new rows are retried (``outbound.lifetime_seconds``, set by
        # ``Store.open_from_settings``; RFC 5321 §4.5.4.1).
        self.queue_lifetime = 5 * 86400.0

    def _queued_now(self) -> None:
        """Call after committing new queue rows: the runner of this process starts."""
        self.queue_wakeup.set()

    async def enqueue(self, sender: str, recipients: list[str], blob_id: str, size: int,
                      *, prefix: bytes = b"", lifetime: float | None = None,
                      dsn: DsnRequest = NO_DSN) -> list[int]:
        """Queue one row per remote recipient, all in one transaction (retried for
        ``lifetime`` seconds, default ``queue_lifetime``)."""
        now = self.clock()
        lifetime = self.queue_lifetime if lifetime is None else lifetime
        ids = []
        async with self._write() as (conn, _):
            for rcpt in recipients:
                res = await conn.execute(insert(t.outbound_queue).values(**queue_row(
                    now=now, sender=sender, recipient=rcpt, blob_id=blob_id, blob_size=size,
                    prefix=prefix, lifetime=lifetime, dsn=dsn)).returning(t.outbound_queue.c.id))
                ids.append(int(res.scalar_one()))
        if ids:
            self._queued_now()
        return ids

    async def list_queue(self) -> list[QueuedMessage]:
        q = t.outbound_queue.c
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.outbound_queue).order_by(q.id)).all())
        return [QueuedMessage(r.id, r.sender, r.recipient, r.domain, r.blob_id, r.size,
                              r.attempts, r.next_attempt_at, r.expires_at, r.last_error)
                for r in rows]

    # --- the runner ------------------------------------------------------------------
    async def _claim(self, where: Any, node: str, lease: float, limit: int,
                     order: Any) -> list[QueueRow]:
        now = self.clock()
        q = t.outbound_queue.c
        async with self._write() as (conn, _):
            pick = select(q.id).where(and_(where, q.lease_until < now)).order_by(
                order).limit(limit)
            if not self.is_sqlite:
                pick = pick.with_for_update(skip_locked=True)
            ids = [int(r.id) for r in (await conn.execute(pick)).all()]
            if not ids:
                return []
            rows = (await conn.execute(
                update(t.outbound_queue).where(q.id.in_(ids))
                .values(claimed_by=node, lease_until=now + lease)
                .returning(t.outbound_queue))).all()
        return sorted((_row(r) for r in rows), key=lambda r: r.id)

    async def claim_due(self, node: str, lease: float, limit: int) -> list[QueueRow]:
        """Claim up to ``limit`` waiting rows whose next attempt is due and that no live
        lease holds (never-claimed rows and rows of a dead node alike)."""
        q = t.outbound_queue.c
        return await self._claim(and_(q.state == "queued",
                                      q.next_attempt_at <= self.clock()),
                                 node, lease, limit, q.next_attempt_at)

    async def claim_reports(self, node: str, lease: float, limit: int,
                            row_id: int | None = None) -> list[QueueRow]:
        """Claim finished rows (or the one ``row_id``) that still owe a report."""
        q = t.outbound_queue.c
        cond = and_(q.state != "queued", q.report_action != "")
        if row_id is not None:
            cond = and_(cond, q.id == row_id)
        return await self._claim(cond, node, lease, limit, q.id)

    async def next_due(self) -> float | None:
        """When the earliest waiting row is due (None: nothing waits); a leased row
        counts from the end of its lease."""
        q = t.outbound_queue.c
        due = case((q.lease_until > q.next_attempt_at, q.lease_until),
                   else_=q.next_attempt_at)
        value = await self.run_read(lambda conn: conn.execute(select(func.min(due)).where(
            q.state == "queued")).scalar_one())
        return None if value is None else float(value)

    async def finish(self, node: str, outcomes: Sequence[Outcome]) -> int:
        """Record attempts and outcomes (one transaction, one statement for all rows);
        only rows still leased by ``node`` change. Returns how many rows changed."""
        if not outcomes:
            return 0
        now = self.clock()
        q = t.outbound_queue.c
        async with self._write() as (conn, _):
            pick = select(q.id, q.history, q.next_attempt_at).where(and_(
                q.id.in_([o.row_id for o in outcomes]), q.claimed_by == node))
            if not self.is_sqlite:
                pick = pick.with_for_update()
            mine = {int(r.id): r for r in (await conn.execute(pick)).all()}
            params = []
            for o in outcomes:
                r = mine.get(o.row_id)
                if r is None:
                    continue
                history = [*json.loads(r.history or "[]"), dict(o.attempt)][-50:]
                waiting = o.state == "queued"
                params.append({
                    "b_id": o.row_id, "b_history": json.dumps(history),
                    "b_error": o.error, "b_status": o.status, "b_mta": o.remote_mta,
                    "b_state": o.state, "b_report": o.report_action,
                    "b_next": o.next_attempt_at if waiting else float(r.next_attempt_at),
                    "b_finished": 0.0 if waiting else now})
            if params:
                await conn.execute(
                    update(t.outbound_queue).where(q.id == bindparam("b_id")).values(
                        history=bindparam("b_history"), claimed_by="", lease_until=0.0,
                        attempts=q.attempts + 1, last_error=bindparam("b_error"),
                        status=bindparam("b_status"), remote_mta=bindparam("b_mta"),
                        state=bindparam("b_state"), report_action=bindparam("b_report"),
                        next_attempt_at=bindparam("b_next"),
                        finished_at=bindparam("b_finished")), params)
        return len(params)

    async def release(self, node: str, row_ids: Iterable[int]) -> None:
        """Give claimed rows back unchanged (shutdown before their attempt)."""
        ids = list(row_ids)
        if not ids:
            return
        q = t.outbound_queue.c
        async with self._write() as (conn, _):
            await conn.execute(update(t.outbound_queue).where(and_(
                q.id.in_(ids), q.claimed_by == node)).values(claimed_by="", lease_until=0.0))

    async def reports_done(self, node: str, row_ids: Iterable[int]) -> None:
        """The report for these rows went out (or was not owed after all)."""
        ids = list(row_ids)
        if not ids:
            return
        q = t.outbound_queue.c
        async with self._write() as (conn, _):
            await conn.execute(update(t.outbound_queue).where(and_(
                q.id.in_(ids), q.claimed_by == node)).values(
                report_action="", claimed_by="", lease_until=0.0))

    async def take_delay_notice(self, key: tuple[str, str, float]) -> list[QueueRow]:
        """Mark the message ``key`` (sender, blob, queued at) as told about its delay;
        returns its rows still waiting, or [] when a notice was already sent (so the
        sender gets exactly one per message, whichever node or pass gets here first)."""
        sender, blob_id, created = key
        q = t.outbound_queue.c
        same = and_(q.sender == sender, q.blob_id == blob_id, q.created_at == created)
        async with self._write() as (conn, _):
            rows = (await conn.execute(
                update(t.outbound_queue).where(and_(same, q.delay_notified.is_(False)))
                .values(delay_notified=True).returning(t.outbound_queue))).all()
        return sorted((_row(r) for r in rows if r.state == "queued"), key=lambda r: r.id)

    async def queue_chunks(self, row: QueueRow, chunk_size: int = 64 * 1024
                           ) -> AsyncIterator[bytes]:
        """The row's message bytes (prefix, then the blob) in chunks: a message is never
        held in memory whole. Raises ``Unavailable`` when the blob cannot be read."""
        if row.prefix:
            yield row.prefix
        if row.size <= 16 * chunk_size:  # small: one read (one thread hop)
            try:
                yield await self.blobs.get(row.blob_id)
            except BlobError as exc:
                raise Unavailable(str(exc)) from exc
            return
        try:
            path = self.blobs.path_of(row.blob_id)
            fh = await asyncio.to_thread(open, path, "rb")
        except (OSError, BlobError) as exc:
            raise Unavailable(f"cannot read message {row.blob_id}: {exc}") from exc
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(fh.read, chunk_size)
                except OSError as exc:
                    raise Unavailable(f"cannot read message {row.blob_id}: {exc}") from exc
                if not chunk:
                    return
                yield chunk
        finally:
            await asyncio.to_thread(fh.close)

    async def prune_queue(self, older_than: float) -> int:
        """Remove finished rows (no report owed) finished before ``older_than``."""
        q = t.outbound_queue.c
        async with self._write() as (conn, _):
            res = await conn.execute(delete(t.outbound_queue).where(and_(
                q.state != "queued", q.report_action == "", q.finished_at < older_than)))
        return res.rowcount or 0

    async def queue_stats(self) -> QueueStats:
        q = t.outbound_queue.c
        now = self.clock()
        async with self._read() as conn:
            by_state = {r.state: int(r.n) for r in (await conn.execute(
                select(q.state, func.count().label("n")).group_by(q.state))).all()}
            oldest = (await conn.execute(select(func.min(q.created_at)).where(
                q.state == "queued"))).scalar_one()
        return QueueStats(by_state.get("queued", 0),
                          0.0 if oldest is None else max(0.0, now - float(oldest)), by_state)

    # --- the operator (mailstack queue) ---------------------------------------------
    async def queue_rows(self, *, domain: str | None = None, failed: bool = False,
                         waiting_only: bool = False) -> list[QueueRow]:
        q = t.outbound_queue.c
        cond: list[Any] = []
        if domain:
            cond.append(q.domain == domain.lower().rstrip("."))
        if failed:
            cond.append(or_(q.state.in_(("failed", "expired")),
                            and_(q.state == "queued", q.last_error != "")))
        if waiting_only:
            cond.append(q.state == "queued")
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.outbound_queue).where(and_(True, *cond))
                                   .order_by(q.id)).all())
        return [_row(r) for r in rows]

    async def queue_row_by_id(self, row_id: int) -> QueueRow | None:
        q = t.outbound_queue.c
        r = await self.run_read(lambda conn: conn.execute(
            select(t.outbound_queue).where(q.id == row_id)).first(), rows=1)
        return None if r is None else _row(r)

    async def retry_now(self, row_id: int | None = None) -> int:
        """Waiting rows (one, or all) become due now; returns how many."""
        q = t.outbound_queue.c
        cond = q.state == "queued"
        if row_id is not None:
            cond = and_(cond, q.id == row_id)
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.outbound_queue).where(cond).values(
                next_attempt_at=self.clock()))
        if res.rowcount:
            self._queued_now()
        return res.rowcount or 0

    async def delete_queued(self, row_id: int) -> bool:
        """Remove a row without any report."""
        q = t.outbound_queue.c
        async with self._write() as (conn, _):
            res = await conn.execute(delete(t.outbound_queue).where(q.id == row_id))
        return bool(res.rowcount)

    async def bounce_now(self, row_id: int, reason: str) -> bool:
        """Give a waiting row up now: failed (5.0.0 ``reason``), report owed unless the
        return path is empty. False when the row is not waiting."""
        q = t.outbound_queue.c
        now = self.clock()
        async with self._write() as (conn, _):
            r = (await conn.execute(select(q.sender, q.dsn_notify, q.history).where(and_(
                q.id == row_id, q.state == "queued")))).first()
            if r is None:
                return False
            notify = {x for x in r.dsn_notify.split(",") if x}
            owed = bool(r.sender) and "NEVER" not in notify and (
                not notify or "FAILURE" in notify)
            history = json.loads(r.history or "[]")
            history.append({"at": now, "error": reason})
            await conn.execute(update(t.outbound_queue).where(q.id == row_id).values(
                state="failed", status="5.0.0", last_error=reason, finished_at=now,
                claimed_by="", lease_until=0.0, history=json.dumps(history),
                report_action="failed" if owed else ""))
        if owed:
            self._queued_now()
        return True

    # --- POP3 maildrop locks -------------------------------------------------------
    async def acquire_pop3_lock(self, address_id: int, holder: str,
                                stale_after: float) -> bool:
        now = self.clock()
        lk = t.pop3_locks.c
        async with self._write() as (conn, _):
            row = (await conn.execute(select(t.pop3_locks).where(
                lk.address_id == address_id))).first()
            if row is not None and row.holder != holder and row.refreshed_at > now - stale_after:
                return False
            if row is None:
                await conn.execute(insert(t.pop3_locks).values(
                    address_id=address_id, holder=holder, refreshed_at=now))
            else:
                await conn.execute(update(t.pop3_locks).where(lk.address_id == address_id)
                                   .values(holder=holder, refreshed_at=now))
            return True

    async def refresh_pop3_lock(self, address_id: int, holder: str) -> bool:
        lk = t.pop3_locks.c
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.pop3_locks).where(and_(
                lk.address_id == address_id, lk.holder == holder)).values(
                refreshed_at=self.clock()))
            return bool(res.rowcount)

    async def drop_node_pop3_locks(self, node_prefix: str, *, keep_prefix: str) -> int:
        """Delete the locks whose holder starts with ``node_prefix`` (this node) but not
        with ``keep_prefix`` (this running instance): their holders died with the
        node's previous process. Returns how many were dropped."""
        lk = t.pop3_locks.c
        async with self._write() as (conn, _):
            rows = (await conn.execute(select(lk.address_id, lk.holder))).all()
            doomed = [(r.address_id, r.holder) for r in rows
                      if r.holder.startswith(node_prefix)
                      and not r.holder.startswith(keep_prefix)]
            for address_id, holder in doomed:
                await conn.execute(delete(t.pop3_locks).where(and_(
                    lk.address_id == address_id, lk.holder == holder)))
        return len(doomed)

    async def release_pop3_lock(self, address_id: int, holder: str) -> None:
        lk = t.pop3_locks.c
        async with self._write() as (conn, _):
            await conn.execute(delete(t.pop3_locks).where(and_(
                lk.address_id == address_id, lk.holder == holder)))

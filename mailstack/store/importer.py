"""IMAP import jobs (docs/behaviour.md §9): records, claims and per-folder progress.

Invariants:
- A job is claimed by one node at a time: the claim sets ``claimed_by`` and a lease the
  runner renews; a job whose lease ran out (its node died) is claimed again and resumes
  from its folders' progress. On PostgreSQL the claim uses ``FOR UPDATE SKIP LOCKED``;
  on SQLite the write transaction (``BEGIN IMMEDIATE``) serialises claims.
- A batch of copied messages and the folder's progress (last copied source UID) are
  written in ONE transaction, so a crash never records progress for messages that are
  not stored. The reverse (messages stored, progress not yet recorded) is caught by the
  content key: a message whose bytes (their hash, the blob id) are already in the target
  folder is not copied again.
- The source password is kept only while the job can still run: ``finish`` clears it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update

from . import schema as t
from .base import StoreBase
from .mailbox import DeliveryTarget, MailboxMixin
from .sortkeys import HeaderKeys

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class NewImportJob:
    address_id: int
    host: str
    port: int
    tls: str
    username: str
    secret: str  # already encrypted by the caller
    folders: tuple[str, ...] = ()


@dataclass(frozen=True)
class FolderProgress:
    source: str
    target: str
    uidvalidity: int
    last_uid: int
    total: int
    copied: int
    skipped: int
    done: bool


@dataclass(frozen=True)
class ImportJob:
    id: int
    address_id: int
    address: str
    host: str
    port: int
    tls: str
    username: str
    secret: str | None
    folders: tuple[str, ...]
    state: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    copied: int
    skipped: int
    bytes: int
    total: int
    last_error: str
    skipped_detail: tuple[tuple[str, int, str], ...]
    claimed_by: str | None
    progress: tuple[FolderProgress, ...] = field(default=())


@dataclass(frozen=True)
class ImportedMessage:
    """One message of a batch: its stored blob, flags and internal date."""

    uid: int
    blob_id: str
    size: int
    flags: frozenset[str]
    internal_date: float
    keys: HeaderKeys | None = None  # sort/thread keys (``mailstack.headerkeys``)


def _job(row: Any, email: str, progress: Sequence[FolderProgress] = ()) -> ImportJob:
    return ImportJob(
        id=int(row.id), address_id=int(row.address_id), address=email, host=row.host,
        port=int(row.port), tls=row.tls, username=row.username, secret=row.secret,
        folders=tuple(json.loads(row.folders or "[]")), state=row.state,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at,
        copied=int(row.copied), skipped=int(row.skipped), bytes=int(row.bytes),
        total=int(row.total), last_error=row.last_error or "",
        skipped_detail=tuple(tuple(x) for x in json.loads(row.skipped_detail or "[]")),
        claimed_by=row.claimed_by, progress=tuple(progress))


def _progress(row: Any) -> FolderProgress:
    return FolderProgress(row.source, row.target, int(row.uidvalidity), int(row.last_uid),
                          int(row.total), int(row.copied), int(row.skipped), bool(row.done))


_EMAIL = (t.addresses.c.local_part + "@" + t.domains.c.name).label("email")


def _jobs_query() -> Any:
    return select(t.import_jobs, _EMAIL).select_from(t.import_jobs.join(
        t.addresses, t.addresses.c.id == t.import_jobs.c.address_id).join(
        t.domains, t.domains.c.id == t.addresses.c.domain_id))


class ImportMixin(MailboxMixin, StoreBase):
    async def create_import_jobs(self, jobs: Sequence[NewImportJob]) -> list[int]:
        """Record jobs (state ``queued``), all in ONE transaction."""
        now = self.clock()
        ids: list[int] = []
        async with self._write() as (conn, _):
            for j in jobs:
                res = await conn.execute(insert(t.import_jobs).values(
                    address_id=j.address_id, host=j.host, port=j.port, tls=j.tls,
                    username=j.username, secret=j.secret, folders=json.dumps(list(j.folders)),
                    state="queued", created_at=now, copied=0, skipped=0, bytes=0, total=0,
                    last_error="", skipped_detail="[]").returning(t.import_jobs.c.id))
                ids.append(int(res.scalar_one()))
        return ids

    async def list_import_jobs(self, *, active_only: bool = False) -> list[ImportJob]:
        q = _jobs_query().order_by(t.import_jobs.c.id)
        if active_only:
            q = q.where(t.import_jobs.c.state.in_(ACTIVE))
        rows = await self.run_read(lambda conn: conn.execute(q).all())
        return [_job(r, r.email) for r in rows]

    async def get_import_job(self, job_id: int) -> ImportJob | None:
        f = t.import_folders.c
        async with self._read() as conn:
            row = (await conn.execute(_jobs_query().where(t.import_jobs.c.id == job_id))
                   ).first()
            if row is None:
                return None
            folders = (await conn.execute(select(t.import_folders).where(
                f.job_id == job_id).order_by(f.source))).all()
        return _job(row, row.email, [_progress(r) for r in folders])

    async def cancel_import_job(self, job_id: int) -> bool:
        """Cancel a queued or running job (a running one stops after its current batch).
        False when it had already ended."""
        j = t.import_jobs.c
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.import_jobs).where(and_(
                j.id == job_id, j.state.in_(ACTIVE))).values(
                state="cancelled", finished_at=self.clock(), secret=None, claimed_by=None))
            return bool(res.rowcount)

    async def claim_import_job(self, node: str, lease: float,
                               busy_hosts: Iterable[str] = ()) -> ImportJob | None:
        """Take the oldest queued job, or a running one whose lease expired, skipping
        jobs for ``busy_hosts`` (at their per-host cap on this node)."""
        now = self.clock()
        j = t.import_jobs.c
        busy = [h.lower() for h in busy_hosts]
        async with self._write() as (conn, _):
            q = select(j.id).where(or_(j.state == "queued", and_(
                j.state == "running", or_(j.lease_until.is_(None), j.lease_until < now))))
            if busy:
                q = q.where(j.host.not_in(busy))
            q = q.order_by(j.id).limit(1)
            if not self.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            job_id = (await conn.execute(q)).scalar()
            if job_id is None:
                return None
            await conn.execute(update(t.import_jobs).where(j.id == job_id).values(
                state="running", claimed_by=node, lease_until=now + lease,
                started_at=func.coalesce(j.started_at, now)))
            row = (await conn.execute(_jobs_query().where(j.id == job_id))).first()
        assert row is not None
        return _job(row, row.email)

    async def renew_import_lease(self, job_id: int, node: str, lease: float) -> bool:
        """Extend our claim; False when the job was cancelled or taken by another node."""
        j = t.import_jobs.c
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.import_jobs).where(and_(
                j.id == job_id, j.claimed_by == node, j.state == "running")).values(
                lease_until=self.clock() + lease))
            return bool(res.rowcount)

    async def import_folder_state(self, job_id: int, source: str, target: str,
                                  uidvalidity: int, total: int) -> FolderProgress:
        """The progress of one source folder, created or updated for this run. A changed
        UIDVALIDITY (RFC 9051 §2.3.1.1) makes the recorded UIDs meaningless: the folder
        starts again from UID 0 (the content key keeps copies single)."""
        f = t.import_folders.c
        where = and_(f.job_id == job_id, f.source == source)
        async with self._write() as (conn, _):
            row = (await conn.execute(select(t.import_folders).where(where))).first()
            if row is None:
                await conn.execute(insert(t.import_folders).values(
                    job_id=job_id, source=source, target=target, uidvalidity=uidvalidity,
                    last_uid=0, total=total, copied=0, skipped=0, done=False))
            else:
                values: dict[str, Any] = {"target": target, "total": total}
                if int(row.uidvalidity) != uidvalidity:
                    values.update(uidvalidity=uidvalidity, last_uid=0, done=False)
                await conn.execute(update(t.import_folders).where(where).values(**values))
            row = (await conn.execute(select(t.import_folders).where(where))).first()
            total_all = (await conn.execute(select(t.import_folders.c.total).where(
                f.job_id == job_id))).scalars().all()
            await conn.execute(update(t.import_jobs).where(t.import_jobs.c.id == job_id)
                               .values(total=sum(int(x) for x in total_all)))
        assert row is not None
        return _progress(row)

    async def blobs_in_folder(self, folder_id: int, blob_ids: Iterable[str]) -> set[str]:
        """Which of ``blob_ids`` (content hashes) the folder already holds."""
        ids = sorted(set(blob_ids))
        if not ids:
            return set()
        m = t.messages.c
        rows = await self.run_read(lambda conn: conn.execute(select(m.blob_id).where(and_(
            m.folder_id == folder_id, m.blob_id.in_(ids)))).scalars().all())
        return set(rows)

    async def import_batch(self, job_id: int, source: str, folder_id: int,
                           messages: Sequence[ImportedMessage], *, last_uid: int,
                           skipped: Sequence[tuple[int, str]] = (),
                           duplicates: int = 0, done: bool = False) -> None:
        """Store a batch of copied messages (blobs already durable) and the folder's
        progress in ONE transaction. ``duplicates``: messages found already copied
        (content key), counted as done without a copy."""
        now = self.clock()
        f, j = t.import_folders.c, t.import_jobs.c
        async with self._write() as (conn, events):
            for msg in messages:
                await conn.run_sync(
                    self._insert_copies, events, msg.blob_id, msg.size,
                    [DeliveryTarget(folder_id, b"", msg.flags, msg.keys)],
                    msg.internal_date, now)
            await conn.execute(update(t.import_folders).where(and_(
                f.job_id == job_id, f.source == source)).values(
                last_uid=last_uid, copied=f.copied + len(messages) + duplicates,
                skipped=f.skipped + len(skipped), done=done))
            values: dict[str, Any] = {
                "copied": j.copied + len(messages),
                "skipped": j.skipped + len(skipped),
                "bytes": j.bytes + sum(m.size for m in messages)}
            if skipped:
                row = (await conn.execute(select(j.skipped_detail).where(j.id == job_id))
                       ).scalar()
                detail = json.loads(row or "[]")
                detail += [[source, uid, why] for uid, why in skipped]
                values["skipped_detail"] = json.dumps(detail[-1000:])
            await conn.execute(update(t.import_jobs).where(j.id == job_id).values(**values))

    async def note_import_error(self, job_id: int, error: str) -> None:
        async with self._write() as (conn, _):
            await conn.execute(update(t.import_jobs).where(t.import_jobs.c.id == job_id)
                               .values(last_error=error[:2000]))

    async def finish_import_job(self, job_id: int, node: str, state: str,
                                error: str = "") -> bool:
        """End our job (``done`` or ``failed``) and forget the source password. False
        when it was cancelled meanwhile (then it stays cancelled)."""
        j = t.import_jobs.c
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.import_jobs).where(and_(
                j.id == job_id, j.claimed_by == node, j.state == "running")).values(
                state=state, finished_at=self.clock(), secret=None, claimed_by=None,
                lease_until=None, last_error=error[:2000]))
            return bool(res.rowcount)

    async def release_import_job(self, job_id: int, node: str) -> None:
        """Give a running job back (this node stops): another node, or this one after
        a restart, resumes it at once."""
        j = t.import_jobs.c
        async with self._write() as (conn, _):
            await conn.execute(update(t.import_jobs).where(and_(
                j.id == job_id, j.claimed_by == node, j.state == "running")).values(
                claimed_by=None, lease_until=None))

    async def delete_import_job(self, job_id: int) -> None:
        async with self._write() as (conn, _):
            await conn.execute(delete(t.import_jobs).where(t.import_jobs.c.id == job_id))

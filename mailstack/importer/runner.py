"""Runs IMAP import jobs inside ``mailstack serve`` (docs/behaviour.md §9).

The CLI only records jobs; every node whose ``[importer] enabled`` is on claims queued
jobs (and running ones whose claim lapsed: their node died), at most ``max_jobs`` at a
time and ``max_jobs_per_host`` per source host, and copies folder after folder, batch
after batch, resuming from the recorded progress.

Invariants:
- One batch = one FETCH of at most ``batch_messages`` / ``batch_bytes`` (a bigger
  message alone) -> blobs written (fsynced) -> ONE transaction with the copies and the
  folder's progress. Memory per job is about one batch, whatever the mailbox size.
- Never twice: UIDs at or below the folder's recorded progress are not fetched again
  (same UIDVALIDITY); a message whose bytes are already in the target folder (its
  content key: the SHA-256 the blob is named by) is counted and not copied. That
  covers a changed UIDVALIDITY, the same message in two source folders mapped to one
  target, and an import repeated as a new job.
- A permanent source error (unreachable, TLS, refused login) fails the job at once; a
  dropped connection is retried ``retries`` times with doubling waits, then fails.
- Our claim is renewed while the job runs; when renewal fails (cancelled, or taken over
  after a long stall) the job stops after its current batch without finishing it.
- The node name is stable across restarts of the same server (host name + data dir),
  so a restarted server takes its own interrupted jobs back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import Settings
from ..headerkeys import header_keys_async
from ..store import AlreadyExists, DeliveryTarget, ImportedMessage, ImportJob, Store
from . import plan, report, secret
from .source import Source, SourceError, SourceSpec

log = logging.getLogger("mailstack.importer")

HASH_OFF_LOOP = 1024 * 1024


class Cancelled(Exception):
    """The job was cancelled (or taken by another node) while running."""


def node_name(settings: Settings) -> str:
    raw = f"{socket.gethostname()}|{settings.data_dir}".encode()
    return "imp-" + hashlib.sha256(raw).hexdigest()[:24]


class ImportRunner:
    def __init__(self, store: Store, settings: Settings, *,
                 clock: Callable[[], float], node: str | None = None,
                 cafile: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.cfg = settings.importer
        self.clock = clock
        self.node = node or node_name(settings)
        self.cafile = cafile
        self.data_dir = Path(settings.data_dir)
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._hosts: dict[int, str] = {}
        self._cancel: dict[int, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- life cycle ------------------------------------------------------------------
    async def start(self) -> None:
        # Jobs this node held before a restart: take them back now, not after the lease.
        for job in await self.store.list_import_jobs(active_only=True):
            if job.claimed_by == self.node:
                await self.store.release_import_job(job.id, self.node)
        self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        tasks = list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self._fill()
            except Exception as exc:  # database away: try again at the next poll
                log.warning("import runner: cannot look for jobs: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.poll_seconds)
            self._wake.clear()

    async def _fill(self) -> None:
        while len(self._jobs) < self.cfg.max_jobs:
            per_host = Counter(self._hosts.values())
            busy = [h for h, n in per_host.items() if n >= self.cfg.max_jobs_per_host]
            job = await self.store.claim_import_job(self.node, self.cfg.lease_seconds, busy)
            if job is None:
                return
            self._hosts[job.id] = job.host
            self._cancel[job.id] = asyncio.Event()
            task = asyncio.create_task(self._run(job))
            self._jobs[job.id] = task
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        job_id = next((k for k, v in self._jobs.items() if v is task), None)
        if job_id is None:
            return
        self._jobs.pop(job_id, None)
        self._hosts.pop(job_id, None)
        self._cancel.pop(job_id, None)
        self._wake.set()  # a slot is free

    # --- one job -----------------------------------------------------------------------
    async def _run(self, job: ImportJob) -> None:
        keeper = asyncio.create_task(self._keep_lease(job.id))
        state, error = "failed", ""
        try:
            state, error = await self._attempts(job)
        except Cancelled:
            log.info("import %d: cancelled", job.id)
            return
        except asyncio.CancelledError:  # our server stops: resume after the restart
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release_import_job(job.id, self.node))
            raise
        except Exception as exc:
            log.exception("import %d: failed unexpectedly", job.id)
            state, error = "failed", f"internal error: {exc}"
        finally:
            keeper.cancel()
        if await self.store.finish_import_job(job.id, self.node, state, error):
            log.info("import %d: %s (%s)", job.id, state, error or "complete")
            await self._confirm(job.id, state, error)

    async def _attempts(self, job: ImportJob) -> tuple[str, str]:
        try:
            password = secret.unseal(self.data_dir, job.secret or "")
        except secret.SecretError as exc:
            return "failed", str(exc)
        spec = SourceSpec(job.host, job.port, job.tls, job.username, password,
                          timeout=self.cfg.timeout_seconds, cafile=self.cafile)
        attempt = 0
        while True:
            try:
                await self._copy(job, spec)
                return "done", ""
            except SourceError as exc:
                if exc.permanent or attempt >= self.cfg.retries:
                    return "failed", str(exc)
                attempt += 1
                wait = self.cfg.retry_base_seconds * 2 ** (attempt - 1)
                log.warning("import %d: %s; reconnecting in %.0f s (try %d of %d)", job.id,
                            exc, wait, attempt, self.cfg.retries)
                await self.store.note_import_error(job.id, str(exc))
                await self._sleep_or_cancel(job.id, wait)

    async def _keep_lease(self, job_id: int) -> None:
        every = max(self.cfg.lease_seconds / 3, 1.0)
        while True:
            await asyncio.sleep(every)
            try:
                if not await self.store.renew_import_lease(job_id, self.node,
                                                           self.cfg.lease_seconds):
                    self._cancel[job_id].set()
                    return
            except Exception as exc:  # the database is away: try again next round
                log.warning("import %d: cannot renew the claim: %s", job_id, exc)

    async def _sleep_or_cancel(self, job_id: int, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancel[job_id].wait(), seconds)
        self._check(job_id)

    def _check(self, job_id: int) -> None:
        if self._cancel[job_id].is_set():
            raise Cancelled

    async def _copy(self, job: ImportJob, spec: SourceSpec) -> None:
        src = Source(spec)
        await asyncio.to_thread(src.connect)
        try:
            folders = await asyncio.to_thread(src.folders)
            plans = plan.plan_folders(folders, job.folders)
            address = await self.store.get_address_by_id(job.address_id)
            if address is None:
                raise SourceError(f"{job.address} no longer exists here", permanent=True)
            max_size = self.settings.plan(address.plan).max_message_size
            for fp in plans:
                self._check(job.id)
                await self._copy_folder(job, src, fp, address.id, max_size)
        finally:
            await asyncio.to_thread(src.close)

    async def _copy_folder(self, job: ImportJob, src: Source, fp: plan.FolderPlan,
                           address_id: int, max_size: int) -> None:
        folder_id = await self._target_folder(address_id, fp)
        sel = await asyncio.to_thread(src.select, fp.source)
        prog = await self.store.import_folder_state(job.id, fp.source.name, fp.target,
                                                    sel.uidvalidity, sel.exists)
        sizes = await asyncio.to_thread(src.sizes_after, prog.last_uid) if sel.exists else []
        group: list[tuple[int, int]] = []
        for uid, size in sizes:
            if size > max_size:
                await self._batch(job, src, fp, folder_id, group)
                group = []
                await self.store.import_batch(
                    job.id, fp.source.name, folder_id, [], last_uid=uid,
                    skipped=[(uid, f"{size} octets: larger than the plan's limit of "
                                   f"{max_size}")])
                continue
            if group and (len(group) >= self.cfg.batch_messages or
                          sum(s for _, s in group) + size > self.cfg.batch_bytes):
                await self._batch(job, src, fp, folder_id, group)
                group = []
            group.append((uid, size))
        await self._batch(job, src, fp, folder_id, group)
        last = max([prog.last_uid, *(u for u, _ in sizes)])
        await self.store.import_batch(job.id, fp.source.name, folder_id, [], last_uid=last,
                                      done=True)

    async def _batch(self, job: ImportJob, src: Source, fp: plan.FolderPlan,
                     folder_id: int, group: Sequence[tuple[int, int]]) -> None:
        if not group:
            return
        self._check(job.id)
        uids = [u for u, _ in group]
        fetched = {f.uid: f for f in await asyncio.to_thread(src.fetch, uids)}
        skipped: list[tuple[int, str]] = []
        bodies: list[tuple[plan.Fetched, bytes]] = []
        for uid in uids:
            f = fetched.get(uid)
            if f is None or f.body is None:
                skipped.append((uid, "the source server did not deliver this message"))
            else:
                bodies.append((f, f.body))
        hashes = await _hashes([b for _, b in bodies])
        present = await self.store.blobs_in_folder(folder_id, hashes)
        now = self.clock()
        items: list[ImportedMessage] = []
        duplicates = 0
        for (f, body), digest in zip(bodies, hashes, strict=True):
            if digest in present:
                duplicates += 1
                continue
            present.add(digest)
            blob_id = await self.store.put_blob(body)
            items.append(ImportedMessage(f.uid, blob_id, len(body), f.flags,
                                         f.internal_date if f.internal_date else now,
                                         await header_keys_async(body)))
        await self.store.import_batch(job.id, fp.source.name, folder_id, items,
                                      last_uid=max(uids), skipped=skipped,
                                      duplicates=duplicates)

    async def _target_folder(self, address_id: int, fp: plan.FolderPlan) -> int:
        if fp.special_use is not None:
            for folder in await self.store.list_folders(address_id):
                if folder.special_use == fp.special_use:
                    return folder.id
        found = await self.store.get_folder(address_id, fp.target)
        if found is not None:
            return found.id
        parts = fp.target.split("/")
        for i in range(1, len(parts)):  # parents first, so the hierarchy is browsable
            with contextlib.suppress(AlreadyExists):
                await self.store.create_folder(address_id, "/".join(parts[:i]))
        try:
            created = await self.store.create_folder(address_id, fp.target, fp.special_use)
            return created.id
        except AlreadyExists:
            again = await self.store.get_folder(address_id, fp.target)
            assert again is not None
            return again.id

    async def _confirm(self, job_id: int, state: str, error: str) -> None:
        """Tell the target address (its INBOX) how the import went. Best effort."""
        try:
            job = await self.store.get_import_job(job_id)
            if job is None:
                return
            inbox = await self.store.get_folder(job.address_id, "INBOX")
            if inbox is None:
                return
            data = report.confirmation(job, hostname=self.settings.server.hostname,
                                       now=self.clock(), state=state, error=error)
            blob = await self.store.put_blob(data)
            prefix = f"Delivered-To: {job.address}\r\n".encode()
            await self.store.deliver(blob, len(data), [DeliveryTarget(
                inbox.id, prefix, keys=await header_keys_async(data))])
        except Exception as exc:
            log.warning("import %d: confirmation message not delivered: %s", job_id, exc)


async def _hashes(bodies: Sequence[bytes]) -> list[str]:
    def work() -> list[str]:
        return [hashlib.sha256(b).hexdigest() for b in bodies]

    if sum(len(b) for b in bodies) > HASH_OFF_LOOP:
        return await asyncio.to_thread(work)
    return work()

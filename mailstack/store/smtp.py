"""What SMTP acceptance needs from the store beyond the other mixins.

Implementation notes (invariants):
- ``accept_message`` is the one write an accepted SMTP transaction makes: every local
  copy (one row per final mailbox), every queued remote recipient and the sender's
  send-log entry go into ONE transaction. Either all of it is committed or nothing
  is, so a ``451 4.3.0`` after a failure means "nothing stored" and a ``250`` means
  "everything stored" (RFC 5321 §6.1, docs/behaviour.md §12 "durability").
- The blob must be durable (``put_blob``) before this is called; events for the new
  messages are published only after the commit.
- Group commit: concurrent calls queue up; one flusher task takes everything queued
  (at most ``MAX_GROUP``) and writes it in ONE transaction, so N messages waiting for
  the writer cost one commit (one fsync) instead of N. One flusher on PostgreSQL
  too: four groups side by side measured no better (bench/README.md). Each caller's
  result is set only after that commit returned, so "250 only after a durable commit"
  still holds per message. The group is all-or-nothing at the SQL level; if it fails for any reason,
  it is rolled back and every member is retried in a transaction of its own, so one
  bad message (a foreign key gone, a constraint) costs only its own 451, never the
  others' messages. A member whose every mailbox vanished stores nothing (its caller
  gets ``NotFound``) and does not affect the group.
- Within a group the UIDs of every folder are taken by one ``UPDATE folders ...
  RETURNING`` (on PostgreSQL after ``SELECT ... ORDER BY id FOR UPDATE``, so two
  writers never lock folders in opposite orders); each copy still gets its own UID and
  its own MODSEQ, in the order the callers queued, exactly as if each had committed
  alone. Each row carries the message's sort/thread keys (parsed by the caller, off
  the writer). The rows go in with one multi-row INSERT: a group costs a handful of
  statements whatever its size (each statement is a thread hop on SQLite).
- Local mailboxes may be given by key (``inboxes``): their INBOX folders are resolved
  inside the write transaction with one query for the whole group, so the routing
  done at RCPT time is not repeated with extra read transactions; a key whose
  address or INBOX is gone by then is skipped (logged), as before.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    and_,
    bindparam,
    case,
    insert,
    select,
    tuple_,
    update,
)

from . import schema as t
from .accounts import _address_cols, address_from, split_address
from .base import Address, Domain, Message, NotFound, flags_from_db, flags_to_db
from .events import Event, MessagesAdded
from .mailbox import DeliveryTarget, MailboxMixin
from .queue import NO_DSN, DsnRequest, QueueMixin, queue_row
from .sortkeys import HeaderKeys, key_values
from .threads import Prepared

log = logging.getLogger("mailstack.store")

MAX_GROUP = 64  # messages per group transaction (bounds one transaction's size)
_IN_CHUNK = 400  # keys per ``IN (...)`` (SQLite's bound-parameter limit is far above)


@dataclass(frozen=True)
class AcceptRequest:
    """One ``accept_message`` call, as queued for the group flusher."""

    blob_id: str
    blob_size: int
    targets: tuple[DeliveryTarget, ...]
    inboxes: tuple[str, ...]
    inbox_prefix: Callable[[str], bytes] | None
    sender: str
    remote: tuple[str, ...]
    remote_prefix: bytes
    sender_address_id: int | None
    counted_recipients: int
    queue_lifetime: float
    at: float
    dsn: DsnRequest = NO_DSN
    keys: HeaderKeys | None = None


@dataclass
class GroupStats:
    """Counters for logs, benchmarks and tests (how well grouping works)."""

    groups: int = 0  # group transactions committed
    messages: int = 0  # messages committed through them
    largest: int = 0  # most messages in one committed group
    fallbacks: int = 0  # groups that failed and were retried one by one
    sizes: list[int] = field(default_factory=list)  # the last few group sizes

    def note(self, n: int) -> None:
        self.groups += 1
        self.messages += n
        self.largest = max(self.largest, n)
        self.sizes = [*self.sizes[-99:], n]


@dataclass
class _Job:
    req: AcceptRequest
    future: asyncio.Future[list[Message]]


@dataclass
class _Copy:
    job: int  # index in the group
    folder_id: int
    prefix: bytes
    flags: frozenset[str]
    keys: HeaderKeys | None


# RCPT routing facts of one recipient in one statement (``rcpt_facts``): the domain,
# the address when ``same`` (the key is in that domain), its storage counter
_RCPT_ON = and_(t.addresses.c.domain_id == t.domains.c.id,
                t.addresses.c.local_key == bindparam("local"),
                bindparam("same", type_=Boolean))
_RCPT_FACTS = Prepared(
    select(t.domains.c.id.label("d_id"), t.domains.c.name.label("d_name"),
           t.domains.c.plan.label("d_plan"), *_address_cols(),
           t.quota_usage.c.bytes.label("q_bytes"),
           t.quota_usage.c.messages.label("q_messages"))
    .select_from(t.domains.outerjoin(t.addresses, _RCPT_ON).outerjoin(
        t.quota_usage, t.quota_usage.c.address_id == t.addresses.c.id))
    .where(t.domains.c.name == bindparam("name")))


class SmtpMixin(MailboxMixin, QueueMixin):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._accept_queue: list[_Job] = []
        self._accept_flusher: asyncio.Task[None] | None = None
        self.accept_stats = GroupStats()

    async def accept_message(self, blob_id: str, blob_size: int,
                             targets: Sequence[DeliveryTarget] = (), *, sender: str,
                             remote: Sequence[str], remote_prefix: bytes = b"",
                             sender_address_id: int | None = None,
                             counted_recipients: int = 0,
                             queue_lifetime: float | None = None,
                             at: float | None = None,
                             inboxes: Sequence[str] = (),
                             inbox_prefix: Callable[[str], bytes] | None = None,
                             dsn: DsnRequest = NO_DSN,
                             keys: HeaderKeys | None = None,
                             ) -> list[Message]:
        """Deliver local copies, queue remote recipients and count the send, atomically.

        ``targets``: copies into known folders; ``inboxes``: address keys whose INBOX
        receives a copy (resolved at commit time; ``inbox_prefix(email)`` gives that
        copy's header prefix). Returns the copies (``targets`` first, then the inboxes
        found). Raises ``NotFound`` (nothing stored) when no local copy is left and
        there is no remote recipient, ``Unavailable`` on a database failure.
        ``at``: the time to record (the front-end's clock), default the store's.
        ``dsn``: the DSN parameters kept on the queued rows (RFC 3461).
        ``keys``: the message's sort/thread keys (``mailstack.headerkeys``), stored
        with every local copy (a target's own ``keys`` win)."""
        req = AcceptRequest(
            blob_id, blob_size, tuple(targets), tuple(inboxes), inbox_prefix, sender,
            tuple(remote), remote_prefix, sender_address_id, counted_recipients,
            self.queue_lifetime if queue_lifetime is None else queue_lifetime,
            self.clock() if at is None else at, dsn, keys)
        fut: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        self._accept_queue.append(_Job(req, fut))
        if self._accept_flusher is None or self._accept_flusher.done():
            self._accept_flusher = asyncio.create_task(self._accept_flush())
        # A cancelled caller (client gone) cancels only its own wait: if its message was
        # already in a group it is still committed (a duplicate at worst, never a loss).
        return await fut

    async def _accept_flush(self) -> None:
        """Commit queued requests group by group until the queue is empty."""
        while self._accept_queue:
            batch = [j for j in self._accept_queue[:MAX_GROUP] if not j.future.done()]
            del self._accept_queue[:MAX_GROUP]
            if not batch:
                continue
            try:
                await self._accept_group(batch)
            except Exception as exc:  # a bug of ours: never leave a caller waiting
                log.exception("group commit failed")
                for job in batch:
                    _settle(job, exc)
            except BaseException:  # the flusher itself was cancelled (shutdown)
                for job in [*batch, *self._accept_queue]:
                    if not job.future.done():
                        job.future.cancel()
                self._accept_queue.clear()
                raise

    async def _accept_group(self, batch: list[_Job]) -> None:
        if len(batch) > 1:
            reqs = [j.req for j in batch]
            try:
                outcomes = await self.run_write(
                    lambda conn, events: self._write_group(conn, events, reqs))
            except Exception as exc:  # one member may be bad: retry each alone
                self.accept_stats.fallbacks += 1
                log.warning("group of %d messages failed (%s); committing one by one",
                            len(batch), exc)
            else:
                self.accept_stats.note(sum(1 for o in outcomes if isinstance(o, list)))
                if any(j.req.remote for j in batch):
                    self._queued_now()  # after the commit: the runner finds the rows
                for job, outcome in zip(batch, outcomes, strict=True):
                    _settle(job, outcome)
                return
        for job in batch:
            try:
                outcome = (await self.run_write(functools.partial(
                    self._write_group, reqs=[job.req])))[0]
            except Exception as exc:
                _settle(job, exc)
            else:
                if isinstance(outcome, list):
                    self.accept_stats.note(1)
                    if job.req.remote:
                        self._queued_now()
                _settle(job, outcome)

    def _write_group(self, conn: Connection, events: list[Event],
                     reqs: Sequence[AcceptRequest]) -> list[list[Message] | Exception]:
        """Write every request of a group inside the caller's transaction. Returns per
        request its copies, or the ``NotFound`` for one that has nothing to store (and
        for which nothing was written)."""
        found = _resolve_inboxes(conn, {k for r in reqs for k in r.inboxes})
        copies: list[_Copy] = []
        live: list[int] = []
        outcomes: list[list[Message] | Exception] = []
        for i, req in enumerate(reqs):
            mine = [(tg.folder_id, tg.prefix, tg.flags, tg.keys or req.keys)
                    for tg in req.targets]
            for key in req.inboxes:
                hit = found.get(key)
                if hit is None:  # removed between RCPT and DATA: nothing to deliver to
                    log.warning("mailbox %s vanished before delivery", key)
                    continue
                prefix = req.inbox_prefix(hit[1]) if req.inbox_prefix else b""
                mine.append((hit[0], prefix, frozenset(), req.keys))
            if not mine and not req.remote:
                outcomes.append(NotFound("no mailbox left to deliver to"))
                continue
            live.append(i)
            outcomes.append([])
            copies += [_Copy(i, f, p, fl, k) for f, p, fl, k in mine]
        if copies:
            placed = self._insert_group_copies(conn, events, reqs, copies)
            for i in live:
                out = outcomes[i]
                assert isinstance(out, list)
                out.extend(placed[i])
        queue_rows = [queue_row(now=reqs[i].at, sender=reqs[i].sender, recipient=rcpt,
                                blob_id=reqs[i].blob_id, blob_size=reqs[i].blob_size,
                                prefix=reqs[i].remote_prefix,
                                lifetime=reqs[i].queue_lifetime, dsn=reqs[i].dsn)
                      for i in live for rcpt in reqs[i].remote]
        if queue_rows:
            conn.execute(insert(t.outbound_queue), queue_rows)
        sends = [{"address_id": reqs[i].sender_address_id, "at": reqs[i].at,
                  "recipients": reqs[i].counted_recipients} for i in live
                 if reqs[i].sender_address_id is not None and reqs[i].counted_recipients > 0]
        if sends:
            conn.execute(insert(t.send_log), sends)
        return outcomes

    def _insert_group_copies(self, conn: Connection, events: list[Event],
                             reqs: Sequence[AcceptRequest], copies: list[_Copy]
                             ) -> dict[int, list[Message]]:
        """One UID and one MODSEQ per copy, allocated per folder (folders locked in id
        order), then one multi-row INSERT. Returns each job's copies in the order it listed them."""
        by_folder: dict[int, list[_Copy]] = defaultdict(list)
        for c in copies:
            by_folder[c.folder_id].append(c)
        fids = sorted(by_folder)
        f = t.folders.c
        if not self.is_sqlite:  # PostgreSQL: take the row locks in id order (no deadlock)
            conn.execute(select(f.id).where(f.id.in_(fids)).order_by(f.id).with_for_update())
        inc = case({fid: len(by_folder[fid]) for fid in fids}, value=f.id)
        got = {int(r.id): r for r in conn.execute(
            update(t.folders).where(f.id.in_(fids))
            .values(uidnext=f.uidnext + inc, highestmodseq=f.highestmodseq + inc)
            .returning(f.id, f.uidnext, f.highestmodseq, f.address_id)).all()}
        if len(got) != len(fids):
            raise NotFound("the folder no longer exists")
        assigned: dict[int, tuple[int, int]] = {}  # id(copy) -> (uid, modseq)
        for fid in fids:
            group, row = by_folder[fid], got[fid]
            n = len(group)
            first_uid, first_modseq = int(row.uidnext) - n, int(row.highestmodseq) - n + 1
            for k, c in enumerate(group):
                assigned[id(c)] = (first_uid + k, first_modseq + k)
        planned: list[Message] = []  # id 0 until known
        for c in copies:
            req = reqs[c.job]
            uid, modseq = assigned[id(c)]
            planned.append(Message(0, c.folder_id, uid, modseq, c.flags, req.at,
                                   req.blob_size + len(c.prefix), req.blob_id, c.prefix))
        rows = []
        for c, msg in zip(copies, planned, strict=True):
            bits, keywords = flags_to_db(msg.flags)
            rows.append({"folder_id": msg.folder_id, "uid": msg.uid, "modseq": msg.modseq,
                         "flags": bits, "keywords": keywords,
                         "internal_date": msg.internal_date, "size": msg.size,
                         "blob_id": msg.blob_id, "prefix": msg.prefix,
                         "created_at": msg.internal_date,
                         **key_values(c.keys, msg.internal_date)})
        # One executemany, then the ids by (folder, uid): two statements for the group.
        conn.execute(insert(t.messages), rows)
        m = t.messages.c
        ids: dict[tuple[int, int], int] = {}
        for i in range(0, len(planned), _IN_CHUNK):
            pairs = [(p.folder_id, p.uid) for p in planned[i:i + _IN_CHUNK]]
            for r in conn.execute(select(m.id, m.folder_id, m.uid).where(
                    tuple_(m.folder_id, m.uid).in_(pairs))).all():
                ids[(int(r.folder_id), int(r.uid))] = int(r.id)
        placed: dict[int, list[Message]] = defaultdict(list)
        for c, msg in zip(copies, planned, strict=True):
            bits, keywords = flags_to_db(msg.flags)
            placed[c.job].append(dataclasses.replace(
                msg, id=ids[(msg.folder_id, msg.uid)], flags=flags_from_db(bits, keywords)))
            events.append(MessagesAdded(int(got[c.folder_id].address_id), c.folder_id,
                                        (msg.uid,)))
        usage: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # RFC 9208 QUOTA
        for msg in planned:
            used = usage[int(got[msg.folder_id].address_id)]
            used[0] += msg.size
            used[1] += 1
        self._add_usages(conn, {a: (b, n) for a, (b, n) in usage.items()})
        return placed

    async def route_facts(self, domain: str, key: str) -> tuple[Domain | None, Address | None]:
        """The hosted domain ``domain`` and the address ``key`` in it, in ONE statement
        (what routing one RCPT asks first; same matching as ``get_domain`` and
        ``get_address``). The address is None when the domain is not hosted, when it
        has no such address, or when ``key`` is not in ``domain``."""
        found, address, _ = await self.rcpt_facts(domain, key)
        return found, address

    async def rcpt_facts(self, domain: str, key: str
                         ) -> tuple[Domain | None, Address | None, tuple[int, int]]:
        """``route_facts`` plus the address's storage counter (octets, messages; as
        ``quota_usage``), still ONE statement: the RCPT quota check (RFC 9208) needs no
        read of its own for a recipient addressed directly."""
        name = domain.lower().rstrip(".")
        try:
            local, key_domain = split_address(key)
        except NotFound:
            local, key_domain = "", ""
        row = await self.read_prepared(_RCPT_FACTS, name=name, local=local.lower(),
                                       same=key_domain == name)
        if row is None:
            return None, None, (0, 0)
        found = Domain(row["d_id"], row["d_name"], row["d_plan"])
        if row["id"] is None:
            return found, None, (0, 0)
        return found, address_from(row), (int(row["q_bytes"] or 0),
                                          int(row["q_messages"] or 0))

    async def addresses_granted_to(self, login: str, permission: str) -> list[str]:
        """Addresses a user whose login is ``login`` holds ``permission`` on."""
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.addresses.c.local_part, t.domains.c.name, t.grants.c.permissions)
            # explicit: users.unified_address_id is a second way to addresses
            .select_from(t.grants.join(t.users, t.grants.c.user_id == t.users.c.id)
                         .join(t.addresses, t.grants.c.address_id == t.addresses.c.id)
                         .join(t.domains))
            .where(and_(t.users.c.login == login.lower()))).all())
        return [f"{r.local_part}@{r.name}" for r in rows
                if permission in r.permissions.split(",")]


def _settle(job: _Job, outcome: list[Message] | Exception) -> None:
    if job.future.done():  # the caller gave up waiting
        return
    if isinstance(outcome, Exception):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)


def _resolve_inboxes(conn: Connection, keys: set[str]) -> dict[str, tuple[int, str]]:
    """key -> (INBOX folder id, the address as written) for the keys still hosted,
    with the same matching as ``get_address`` (local part case-insensitive)."""
    wanted: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key in keys:
        try:
            local, domain = split_address(key)
        except NotFound:
            continue
        wanted[(domain, local.lower())].append(key)
    found: dict[str, tuple[int, str]] = {}
    pairs = list(wanted)
    for i in range(0, len(pairs), _IN_CHUNK):
        rows = conn.execute(
            select(t.folders.c.id, t.addresses.c.local_part, t.addresses.c.local_key,
                   t.domains.c.name)
            .select_from(t.folders.join(t.addresses).join(t.domains))
            .where(and_(t.folders.c.name == "INBOX",
                        tuple_(t.domains.c.name, t.addresses.c.local_key).in_(
                            pairs[i:i + _IN_CHUNK])))).all()
        for r in rows:
            for key in wanted.get((r.name, r.local_key), ()):
                found[key] = (int(r.id), f"{r.local_part}@{r.name}")
    return found

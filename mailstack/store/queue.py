"""The outbound queue (mail for the internet) and the POP3 maildrop locks.

The queue holds one row per remote recipient; the delivery runner (a later piece) picks
due rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so any node can deliver.

POP3 locks (RFC 1939 §8: one session per maildrop) live in the database so every node
sees them; a lock whose holder stopped refreshing it (a crashed process) is stale and
may be taken over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import and_, delete, insert, select, update

from . import schema as t
from .base import StoreBase


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
            "dsn_notify": notify, "dsn_orcpt": orcpt}


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


class QueueMixin(StoreBase):
    async def enqueue(self, sender: str, recipients: list[str], blob_id: str, size: int,
                      *, prefix: bytes = b"", lifetime: float = 5 * 86400,
                      dsn: DsnRequest = NO_DSN) -> list[int]:
        """Queue one row per remote recipient, all in one transaction."""
        now = self.clock()
        ids = []
        async with self._write() as (conn, _):
            for rcpt in recipients:
                res = await conn.execute(insert(t.outbound_queue).values(**queue_row(
                    now=now, sender=sender, recipient=rcpt, blob_id=blob_id, blob_size=size,
                    prefix=prefix, lifetime=lifetime, dsn=dsn)).returning(t.outbound_queue.c.id))
                ids.append(int(res.scalar_one()))
        return ids

    async def list_queue(self) -> list[QueuedMessage]:
        q = t.outbound_queue.c
        async with self._read() as conn:
            rows = (await conn.execute(select(t.outbound_queue).order_by(q.id))).all()
        return [QueuedMessage(r.id, r.sender, r.recipient, r.domain, r.blob_id, r.size,
                              r.attempts, r.next_attempt_at, r.expires_at, r.last_error)
                for r in rows]

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

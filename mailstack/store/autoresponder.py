"""Out-of-office responders and their throttle (docs/behaviour.md §7, RFC 3834 §2).

Implementation notes (invariants):
- At most one active responder per address. ``activate_autoresponder`` deactivates the
  others and activates one in ONE transaction, after locking the address row (PostgreSQL
  ``FOR UPDATE``; SQLite writers are serialised by ``BEGIN IMMEDIATE``), so two
  concurrent activations leave exactly one active (the later one). A partial unique
  index (``uq_autoresponder_active``) makes any other outcome a constraint error.
- ``claim_autoreply`` reads the throttle, asks the caller's pure decision and, when it
  says reply, records the reply: all inside one write transaction holding the
  responder's row lock, so two deliveries from one sender arriving together produce
  one reply, on one node or several.
- A reset (and a new activation) bumps the responder's ``generation``: throttle rows
  of an older generation no longer count as a reply (no comparison of times, so a
  reset in the same second as a reply still resets), but stay for the hourly cap.
  Rows older than the window are pruned by ``prune_autoreply_throttle``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import and_, delete, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .base import AlreadyExists, NotFound, StoreBase
from .events import AutorespondersChanged


@dataclass(frozen=True)
class AutoResponder:
    id: int
    address_id: int
    name: str
    subject: str
    body: str
    html: str | None
    starts_at: float | None
    ends_at: float | None
    weekdays: frozenset[int]  # 0 = Monday; empty: every day
    timezone: str
    from_address: str | None
    exclusions: tuple[str, ...]
    active: bool
    generation: int
    created_at: float
    updated_at: float


# The fields ``add_autoresponder`` / ``update_autoresponder`` accept.
EDITABLE = ("subject", "body", "html", "starts_at", "ends_at", "weekdays", "timezone",
            "from_address", "exclusions")


def _mask(days: Iterable[int]) -> int:
    return sum(1 << d for d in set(days))


def _to_responder(row: Any) -> AutoResponder:
    return AutoResponder(
        id=int(row.id), address_id=int(row.address_id), name=row.name, subject=row.subject,
        body=row.body, html=row.html, starts_at=row.starts_at, ends_at=row.ends_at,
        weekdays=frozenset(d for d in range(7) if row.weekdays & (1 << d)),
        timezone=row.timezone, from_address=row.from_address,
        exclusions=tuple(json.loads(row.exclusions)), active=bool(row.active),
        generation=int(row.generation), created_at=row.created_at, updated_at=row.updated_at)


def _values(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k not in EDITABLE:
            raise TypeError(f"not a responder field: {k}")
        if k == "weekdays":
            v = _mask(v)
        elif k == "exclusions":
            v = json.dumps(list(v))
        out[k] = v
    return out


class HasReply(Protocol):
    @property
    def reply(self) -> bool: ...


V = TypeVar("V", bound=HasReply)


class AutoresponderMixin(StoreBase):
    # Responder changes: a cache of who has an active responder (mailstack/autoreplies.py)
    # re-reads at once after one of this process, and when another process's change
    # arrives (``AutorespondersChanged`` through the change log or LISTEN/NOTIFY, which
    # bumps the counter too: StoreBase.publish_remote).

    async def add_autoresponder(self, address_id: int, name: str, *, subject: str,
                                body: str, **fields: Any) -> AutoResponder:
        """Save a new (inactive) responder; ``fields``: any of ``EDITABLE``."""
        self.autoresponder_changes += 1
        now = self.clock()
        values = _values({"subject": subject, "body": body, **fields})
        async with self._write() as (conn, events):
            events.append(AutorespondersChanged(address_id))
            try:
                res = await conn.execute(insert(t.autoresponders).values(
                    address_id=address_id, name=name, active=False, generation=0,
                    created_at=now, updated_at=now, **values).returning(*t.autoresponders.c))
            except IntegrityError as exc:
                raise AlreadyExists(f"a responder named {name!r} already exists for this "
                                    "address") from exc
            return _to_responder(res.one())

    async def update_autoresponder(self, address_id: int, name: str,
                                   **fields: Any) -> AutoResponder:
        self.autoresponder_changes += 1
        values = _values(fields)
        a = t.autoresponders.c
        async with self._write() as (conn, events):
            events.append(AutorespondersChanged(address_id))
            res = await conn.execute(update(t.autoresponders).where(and_(
                a.address_id == address_id, a.name == name)).values(
                updated_at=self.clock(), **values).returning(*t.autoresponders.c))
            row = res.first()
            if row is None:
                raise NotFound(f"no responder named {name!r}")
            return _to_responder(row)

    async def get_autoresponder(self, address_id: int, name: str) -> AutoResponder | None:
        a = t.autoresponders.c
        row = await self.run_read(lambda conn: conn.execute(select(t.autoresponders).where(and_(
            a.address_id == address_id, a.name == name))).first(), rows=1)
        return _to_responder(row) if row else None

    async def list_autoresponders(self, address_id: int) -> list[AutoResponder]:
        a = t.autoresponders.c
        rows = await self.run_read(lambda conn: conn.execute(select(t.autoresponders).where(
            a.address_id == address_id).order_by(a.name)).all())
        return [_to_responder(r) for r in rows]

    async def remove_autoresponder(self, address_id: int, name: str) -> None:
        self.autoresponder_changes += 1
        a = t.autoresponders.c
        async with self._write() as (conn, events):
            events.append(AutorespondersChanged(address_id))
            res = await conn.execute(delete(t.autoresponders).where(and_(
                a.address_id == address_id, a.name == name)))
            if res.rowcount == 0:
                raise NotFound(f"no responder named {name!r}")

    async def _lock_address(self, conn: Any, address_id: int) -> None:
        q = select(t.addresses.c.id).where(t.addresses.c.id == address_id)
        if not self.is_sqlite:
            q = q.with_for_update()
        if (await conn.execute(q)).first() is None:
            raise NotFound("no such address")

    async def activate_autoresponder(self, address_id: int, name: str) -> AutoResponder:
        """Make ``name`` the address's one active responder (the others are
        deactivated in the same transaction). A new activation starts a new period:
        senders answered before get one reply again."""
        self.autoresponder_changes += 1
        a = t.autoresponders.c
        now = self.clock()
        async with self._write() as (conn, events):
            events.append(AutorespondersChanged(address_id))
            await self._lock_address(conn, address_id)
            found = (await conn.execute(select(a.id, a.active).where(and_(
                a.address_id == address_id, a.name == name)))).first()
            if found is None:
                raise NotFound(f"no responder named {name!r}")
            await conn.execute(update(t.autoresponders).where(and_(
                a.address_id == address_id, a.id != found.id, a.active)).values(
                active=False, updated_at=now))
            values: dict[str, Any] = {"active": True, "updated_at": now}
            if not found.active:
                values["generation"] = a.generation + 1
            res = await conn.execute(update(t.autoresponders).where(a.id == found.id)
                                     .values(**values).returning(*t.autoresponders.c))
            return _to_responder(res.one())

    async def deactivate_autoresponder(self, address_id: int, name: str | None = None
                                       ) -> int:
        """Deactivate ``name`` (or whichever is active); returns how many changed."""
        self.autoresponder_changes += 1
        a = t.autoresponders.c
        cond = and_(a.address_id == address_id, a.active)
        if name is not None:
            cond = and_(cond, a.name == name)
        async with self._write() as (conn, events):
            events.append(AutorespondersChanged(address_id))
            if name is not None and (await conn.execute(select(a.id).where(and_(
                    a.address_id == address_id, a.name == name)))).first() is None:
                raise NotFound(f"no responder named {name!r}")
            res = await conn.execute(update(t.autoresponders).where(cond).values(
                active=False, updated_at=self.clock()))
            return int(res.rowcount)

    async def reset_autoreply_throttle(self, address_id: int) -> int:
        """Every sender's throttle back to zero for the address's responders; returns
        the number of responders reset."""
        a = t.autoresponders.c
        async with self._write() as (conn, _):
            await self._lock_address(conn, address_id)
            res = await conn.execute(update(t.autoresponders).where(
                a.address_id == address_id).values(generation=a.generation + 1,
                                                   updated_at=self.clock()))
            return int(res.rowcount)

    async def active_autoresponder_keys(self) -> frozenset[str]:
        """The address keys (local@domain, lower case) that have an active responder."""
        a, ad, d = t.autoresponders, t.addresses, t.domains
        rows = await self.run_read(lambda conn: conn.execute(
            select(ad.c.local_key, d.c.name).select_from(
                a.join(ad, ad.c.id == a.c.address_id).join(d)).where(a.c.active)).all())
        return frozenset(f"{r.local_key}@{r.name}".lower() for r in rows)

    async def active_autoresponders(self, keys: Sequence[str]
                                    ) -> list[tuple[str, AutoResponder]]:
        """(address key, its active responder) for each hosted key that has one."""
        pairs = []
        for key in keys:
            local, _, domain = key.rpartition("@")
            if local and domain:
                pairs.append((domain.lower(), local.lower()))
        if not pairs:
            return []
        a, ad, d = t.autoresponders, t.addresses, t.domains
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.autoresponders, ad.c.local_key, d.c.name.label("domain_name"))
            .select_from(a.join(ad, ad.c.id == a.c.address_id).join(d))
            .where(and_(a.c.active, tuple_(d.c.name, ad.c.local_key).in_(pairs)))).all())
        return [(f"{r.local_key}@{r.domain_name}", _to_responder(r)) for r in rows]

    async def claim_autoreply(self, responder_id: int, sender: str,
                              decide: Callable[[AutoResponder, float | None, int], V]
                              ) -> tuple[AutoResponder, V] | None:
        """Decide and record one reply atomically (see the module notes).

        ``decide(responder, last_reply_at, replies_last_hour)`` gets the responder as it
        is now (None is returned, nothing decided, when it was removed), the time of
        the sender's last reply in the responder's current generation (None: none
        since the last reset or activation); when its verdict says reply, the
        sender's throttle row is written in the same transaction.
        ``replies_last_hour`` counts the address's replies (distinct senders) in the
        hour before the store's clock."""
        a, th = t.autoresponders.c, t.autoreply_throttle.c
        now = self.clock()
        async with self._write() as (conn, _):
            q = select(t.autoresponders).where(a.id == responder_id)
            if not self.is_sqlite:
                q = q.with_for_update()
            row = (await conn.execute(q)).first()
            if row is None:
                return None
            responder = _to_responder(row)
            found = (await conn.execute(select(th.last_reply_at, th.generation).where(and_(
                th.responder_id == responder_id, th.sender == sender)))).first()
            last = (float(found.last_reply_at)
                    if found is not None and found.generation == responder.generation
                    else None)
            recent = (await conn.execute(
                select(func.count()).select_from(
                    t.autoreply_throttle.join(t.autoresponders))
                .where(and_(a.address_id == responder.address_id,
                            th.last_reply_at > now - 3600)))).scalar_one()
            verdict = decide(responder, last, int(recent))
            if verdict.reply:
                ins = (sqlite_insert if self.is_sqlite else pg_insert)(t.autoreply_throttle)
                gen = responder.generation
                await conn.execute(ins.values(
                    responder_id=responder_id, sender=sender, last_reply_at=now,
                    generation=gen)
                    .on_conflict_do_update(index_elements=["responder_id", "sender"],
                                           set_={"last_reply_at": now, "generation": gen}))
            return responder, verdict

    async def autoreply_throttle(self, responder_id: int) -> dict[str, float]:
        """sender -> last reply time (tests, the CLI's ``show``)."""
        th = t.autoreply_throttle.c
        rows = await self.run_read(lambda conn: conn.execute(
            select(th.sender, th.last_reply_at).where(
            th.responder_id == responder_id)).all())
        return {r.sender: float(r.last_reply_at) for r in rows}

    async def prune_autoreply_throttle(self, older_than: float) -> int:
        """Delete throttle rows whose last reply is before ``older_than`` (they no
        longer throttle anything); returns how many."""
        async with self._write() as (conn, _):
            res = await conn.execute(delete(t.autoreply_throttle).where(
                t.autoreply_throttle.c.last_reply_at < older_than))
            return int(res.rowcount)

"""Which credential a session used, what ends it, and support operations on users
(docs/behaviour.md §2).

- A session remembers the credential it logged in with: ``0`` for the address's own
  password, else the id of the app password. Revoking an app password publishes
  ``CredentialRevoked(address, id)`` and ends only the sessions of that id; setting the
  address to app passwords only publishes ``CredentialRevoked(address, 0)`` and ends
  only the sessions that used the main password. Neither bumps the address's
  ``credential_epoch``, which stays the "everything changed" signal (a new password,
  ``CredentialsChanged``).
- ``session_credential_valid`` is the re-check a session makes after subscribing to
  events, after a ``Resync`` and periodically: one read, same rule as the events.
- ``claim_failed_notice`` decides and records the failed-attempt notice in one write
  transaction holding the address's row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite
  writers are serialised by ``BEGIN IMMEDIATE``): of any number of concurrent failures,
  on any number of processes, exactly one wins per interval.
- Grants with ``send`` decide what a login may send as: every grant change publishes
  ``SendersChanged`` for the hosted address whose address is the user's login, so its
  open SMTP sessions read their senders again.
- A user's ``credential_epoch`` (migration: users.credential_epoch) is bumped by a
  password change; web sessions holding an older epoch are ended.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from . import schema as t
from .base import NotFound, StoreBase
from .events import CredentialRevoked, Event, SendersChanged

MAIN_PASSWORD = 0  # the credential id of the address's own password


async def senders_changed(conn: Any, events: list[Event], user_id: int) -> None:
    """Inside a write transaction that changed grants of the user ``user_id``: tell
    the sessions of the hosted address that is the user's login (if there is one)
    to read what they may send as again."""
    login = (await conn.execute(select(t.users.c.login).where(
        t.users.c.id == user_id))).scalar_one_or_none()
    local, sep, domain = str(login or "").rpartition("@")
    if not sep:
        return
    a, d = t.addresses.c, t.domains.c
    found = (await conn.execute(select(a.id).select_from(t.addresses.join(t.domains))
                                .where(and_(d.name == domain.lower(),
                                            a.local_key == local.lower())))).first()
    if found is not None:
        events.append(SendersChanged(int(found.id)))


class CredentialsMixin(StoreBase):
    # --- sessions and the credential they used ---------------------------------------
    async def session_credential_valid(self, address_id: int, epoch: int,
                                       credential: int) -> bool:
        """Does a session that logged in at ``epoch`` with ``credential`` (0: the main
        password, else an app password id) still hold a working credential?"""
        a = t.addresses.c
        def read(conn: Connection) -> bool:
            row = conn.execute(select(a.credential_epoch, a.app_passwords_only)
                               .where(a.id == address_id)).first()
            if row is None or int(row.credential_epoch) > epoch:
                return False
            if credential == MAIN_PASSWORD:
                return not bool(row.app_passwords_only)
            ap = t.app_passwords.c
            return conn.execute(select(ap.id).where(and_(
                ap.id == credential, ap.address_id == address_id))).first() is not None

        return await self.run_read(read, rows=1)

    async def revoke_app_password(self, address_id: int, name: str) -> int:
        """Delete the app password ``name``; returns its id. Sessions that logged in
        with it end (``CredentialRevoked``); the others keep going."""
        ap = t.app_passwords.c
        async with self._write() as (conn, events):
            app_id = (await conn.execute(delete(t.app_passwords).where(and_(
                ap.address_id == address_id, ap.name == name)).returning(ap.id))
                ).scalar_one_or_none()
            if app_id is None:
                raise NotFound(f"no app password named {name!r}")
            events.append(CredentialRevoked(address_id, int(app_id)))
            return int(app_id)

    async def set_app_passwords_only(self, address_id: int, only: bool) -> bool:
        """Accept only app passwords (``only``) or the main password too; returns
        whether the setting changed. Turning it on ends the sessions that logged in
        with the main password."""
        a = t.addresses.c
        async with self._write() as (conn, events):
            was = (await conn.execute(select(a.app_passwords_only).where(
                a.id == address_id))).scalar_one_or_none()
            if was is None:
                raise NotFound("no such address")
            if bool(was) == only:
                return False
            await conn.execute(update(t.addresses).where(a.id == address_id)
                               .values(app_passwords_only=only))
            if only:
                events.append(CredentialRevoked(address_id, MAIN_PASSWORD))
            return True

    # --- security notices --------------------------------------------------------------
    async def claim_failed_notice(self, address_id: int, email: str, interval: float,
                                  event: str = "notice_failed") -> bool:
        """True for the one caller that may send the failed-attempt notice now: no
        ``event`` for ``email`` in the activity log within ``interval`` seconds. The
        decision and its activity row are one transaction on the address's row lock."""
        now = self.clock()
        key = email.lower()
        async with self._write() as (conn, _):
            q = select(t.addresses.c.id).where(t.addresses.c.id == address_id)
            if not self.is_sqlite:
                q = q.with_for_update()
            if (await conn.execute(q)).first() is None:
                return False
            act = t.activity.c
            last = (await conn.execute(select(func.max(act.at)).where(and_(
                act.address == key, act.event == event)))).scalar_one_or_none()
            if last is not None and now - float(last) < interval:
                return False
            await conn.execute(insert(t.activity).values(
                at=now, address=key, client_ip=None, protocol="notice", event=event,
                detail=""))
            return True

    # --- users (support operations) ----------------------------------------------------
    async def user_credential_epoch(self, user_id: int) -> int | None:
        epoch = await self.run_read(lambda conn: conn.execute(
            select(t.users.c.credential_epoch).where(
            t.users.c.id == user_id)).scalar_one_or_none(), rows=1)
        return None if epoch is None else int(epoch)

    async def remove_user(self, user_id: int) -> list[str]:
        """Delete the user and its grants (never the addresses); returns the addresses
        it had grants on."""
        g, a, d = t.grants.c, t.addresses.c, t.domains.c
        async with self._write() as (conn, events):
            login = (await conn.execute(select(t.users.c.login).where(
                t.users.c.id == user_id))).scalar_one_or_none()
            if login is None:
                raise NotFound("no such user")
            rows = (await conn.execute(
                select(a.local_part, d.name).select_from(
                    t.grants.join(t.addresses).join(t.domains))
                .where(g.user_id == user_id).order_by(d.name, a.local_key))).all()
            await senders_changed(conn, events, user_id)
            await conn.execute(delete(t.grants).where(g.user_id == user_id))
            await conn.execute(delete(t.users).where(t.users.c.id == user_id))
        return [f"{r.local_part}@{r.name}" for r in rows]

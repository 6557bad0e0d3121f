"""Users' own credentials (docs/behaviour.md §2): password, TOTP two-factor and its
one-time emergency codes, unification with an address, and signed-in browsers.

Implementation notes (invariants):
- A TOTP code is accepted by moving ``totp_last_step`` forward in one conditional
  UPDATE (``... WHERE totp_last_step < step``): of two requests with the same code, on
  one node or several, exactly one wins (RFC 6238 §5.2, "one-time").
- An emergency code is spent the same way (``UPDATE ... WHERE used_at IS NULL``).
- Signing a user out everywhere deletes its ``web_sessions`` rows; every request
  re-reads its row, so the next request of every browser, on every node, is signed out.
- Unified passwords change in ONE transaction (both rows or neither), and the address's
  credential epoch moves so its open IMAP/POP3/SMTP sessions end (``CredentialsChanged``).
- ``end_broken_unification`` runs inside grant changes: unification lasts only while
  the unified user is the address's sole grantee and holds ``passwd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from . import schema as t
from .base import Conflict, NotFound, StoreBase
from .events import CredentialsChanged


@dataclass(frozen=True)
class User:
    id: int
    login: str
    password_hash: str
    totp_secret: str | None
    totp_last_step: int
    unified_address_id: int | None

    @property
    def two_factor(self) -> bool:
        return bool(self.totp_secret)


@dataclass(frozen=True)
class WebSession:
    token_hash: str
    user_id: int
    stage: str  # "second-factor" | "in"
    csrf: str
    created_at: float
    last_seen: float
    pending_totp: str | None


@dataclass(frozen=True)
class Grant:
    """One address a user may act on, with the permissions of the grant."""

    address_id: int
    email: str
    permissions: frozenset[str]


def _to_user(row: Any) -> User:
    return User(int(row.id), row.login, row.password_hash, row.totp_secret,
                int(row.totp_last_step or 0), row.unified_address_id)


def _perms(text: str) -> frozenset[str]:
    return frozenset(p for p in text.split(",") if p)


async def end_broken_unification(conn: Any, address_id: int, now: float) -> bool:
    """Inside a write transaction that changed the grants of ``address_id``: clear a
    unification whose rule no longer holds (docs/behaviour.md §2: the unified user is
    the only one with access and holds ``passwd``). True when one ended."""
    users = (await conn.execute(select(t.users.c.id).where(
        t.users.c.unified_address_id == address_id))).scalars().all()
    if not users:
        return False
    grants = (await conn.execute(select(t.grants.c.user_id, t.grants.c.permissions).where(
        t.grants.c.address_id == address_id))).all()
    ended = False
    for user_id in users:
        holds = (len(grants) == 1 and grants[0].user_id == user_id
                 and "passwd" in _perms(grants[0].permissions))
        if not holds:
            await conn.execute(update(t.users).where(t.users.c.id == user_id)
                               .values(unified_address_id=None))
            row = (await conn.execute(select(t.addresses.c.local_part, t.domains.c.name)
                                      .select_from(t.addresses.join(t.domains))
                                      .where(t.addresses.c.id == address_id))).first()
            if row is not None:
                await conn.execute(insert(t.activity).values(
                    at=now, address=f"{row.local_part}@{row.name}".lower(),
                    client_ip=None, protocol="store", event="unification_ended",
                    detail="the address was granted to another user or the passwd "
                    "permission was removed"))
            ended = True
    return ended


class UsersMixin(StoreBase):
    # --- users ----------------------------------------------------------------------
    async def get_user(self, login: str) -> User | None:
        row = await self.run_read(lambda conn: conn.execute(select(t.users).where(
            t.users.c.login == login.strip().lower())).first(), rows=1)
        return _to_user(row) if row else None

    async def get_user_by_id(self, user_id: int) -> User | None:
        row = await self.run_read(lambda conn: conn.execute(
            select(t.users).where(t.users.c.id == user_id)).first(), rows=1)
        return _to_user(row) if row else None

    async def user_grants(self, user_id: int) -> list[Grant]:
        """The addresses ``user_id`` was granted, by address."""
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.grants.c.address_id, t.addresses.c.local_part,
                   t.domains.c.name, t.grants.c.permissions)
            .select_from(t.grants.join(t.addresses).join(t.domains))
            .where(t.grants.c.user_id == user_id)
            .order_by(t.domains.c.name, t.addresses.c.local_key)).all())
        return [Grant(int(r.address_id), f"{r.local_part}@{r.name}", _perms(r.permissions))
                for r in rows]

    async def address_grantees(self, address_id: int) -> list[tuple[int, frozenset[str]]]:
        """``(user_id, permissions)`` of every user granted ``address_id``."""
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.grants.c.user_id, t.grants.c.permissions)
                                   .where(t.grants.c.address_id == address_id)).all())
        return [(int(r.user_id), _perms(r.permissions)) for r in rows]

    async def set_user_password(self, user_id: int, password_hash: str) -> int:
        """Replace the user's password and sign it out everywhere; a unified address
        gets the same password in the same transaction (its sessions end). Returns the
        user's new credential epoch."""
        async with self._write() as (conn, events):
            row = (await conn.execute(select(t.users.c.unified_address_id).where(
                t.users.c.id == user_id))).first()
            if row is None:
                raise NotFound("no such user")
            epoch = (await conn.execute(update(t.users).where(t.users.c.id == user_id)
                                        .values(password_hash=password_hash,
                                                credential_epoch=t.users.c.credential_epoch + 1)
                                        .returning(t.users.c.credential_epoch))).scalar_one()
            await conn.execute(delete(t.web_sessions).where(
                t.web_sessions.c.user_id == user_id))
            if row.unified_address_id is not None:
                await self._set_address_password(conn, events, int(row.unified_address_id),
                                                 password_hash)
            return int(epoch)

    async def set_address_password_unified(self, address_id: int, password_hash: str
                                           ) -> int | None:
        """Change the address's password; when a user is unified with it, that user's
        password too (one transaction) and the user is signed out everywhere. Returns
        the unified user's id, or None."""
        async with self._write() as (conn, events):
            await self._set_address_password(conn, events, address_id, password_hash)
            user_id = (await conn.execute(select(t.users.c.id).where(
                t.users.c.unified_address_id == address_id))).scalar_one_or_none()
            if user_id is not None:
                await conn.execute(update(t.users).where(t.users.c.id == user_id)
                                   .values(password_hash=password_hash,
                                           credential_epoch=t.users.c.credential_epoch + 1))
                await conn.execute(delete(t.web_sessions).where(
                    t.web_sessions.c.user_id == user_id))
            return int(user_id) if user_id is not None else None

    async def _set_address_password(self, conn: Any, events: list[Any], address_id: int,
                                    password_hash: str) -> None:
        res = await conn.execute(update(t.addresses).where(t.addresses.c.id == address_id)
                                 .values(password_hash=password_hash,
                                         credential_epoch=t.addresses.c.credential_epoch + 1)
                                 .returning(t.addresses.c.credential_epoch))
        epoch = res.scalar_one_or_none()
        if epoch is None:
            raise NotFound("no such address")
        events.append(CredentialsChanged(address_id, int(epoch)))

    async def unify(self, user_id: int, address_id: int, password_hash: str) -> None:
        """Start unification (the caller checked the rule with
        ``policy.permissions.unification``): both passwords become ``password_hash``
        in one transaction; the address's sessions end, the user's other browsers are
        signed out."""
        async with self._write() as (conn, events):
            await self._set_address_password(conn, events, address_id, password_hash)
            await conn.execute(update(t.users).where(t.users.c.id == user_id).values(
                password_hash=password_hash, unified_address_id=address_id))
            await conn.execute(delete(t.web_sessions).where(
                t.web_sessions.c.user_id == user_id))
            if await end_broken_unification(conn, address_id, self.clock()):
                raise Conflict("the address's grants changed; unification is not allowed")

    async def end_unification(self, user_id: int) -> None:
        async with self._write() as (conn, _):
            await conn.execute(update(t.users).where(t.users.c.id == user_id)
                               .values(unified_address_id=None))

    # --- two-factor -----------------------------------------------------------------
    async def enable_totp(self, user_id: int, secret: str, step: int,
                          code_hashes: list[str], *, keep_session: str = "") -> None:
        """Turn two-factor on with ``secret`` (its confirming code was of ``step``) and
        replace the emergency codes; the user's other browsers (signed in without a
        second factor) are signed out, all but the session ``keep_session``."""
        now = self.clock()
        async with self._write() as (conn, _):
            await conn.execute(update(t.users).where(t.users.c.id == user_id).values(
                totp_secret=secret, totp_last_step=step))
            await self._replace_codes(conn, user_id, code_hashes, now)
            await conn.execute(delete(t.web_sessions).where(and_(
                t.web_sessions.c.user_id == user_id,
                t.web_sessions.c.token_hash != keep_session)))

    async def _replace_codes(self, conn: Any, user_id: int, code_hashes: list[str],
                             now: float) -> None:
        await conn.execute(delete(t.emergency_codes).where(
            t.emergency_codes.c.user_id == user_id))
        if code_hashes:
            await conn.execute(insert(t.emergency_codes), [
                {"user_id": user_id, "code_hash": h, "created_at": now}
                for h in code_hashes])

    async def replace_emergency_codes(self, user_id: int, code_hashes: list[str]) -> None:
        async with self._write() as (conn, _):
            await self._replace_codes(conn, user_id, code_hashes, self.clock())

    async def reset_totp(self, user_id: int) -> None:
        """Two-factor off, emergency codes gone, signed out everywhere (support's
        ``mailstack user 2fa reset`` and the user's own switch-off)."""
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.users).where(t.users.c.id == user_id)
                                     .values(totp_secret=None))
            if res.rowcount == 0:
                raise NotFound("no such user")
            await self._replace_codes(conn, user_id, [], self.clock())
            await conn.execute(delete(t.web_sessions).where(
                t.web_sessions.c.user_id == user_id))

    async def claim_totp_step(self, user_id: int, step: int) -> bool:
        """Accept a code of time step ``step`` only if no code of this step or a later
        one was accepted before (RFC 6238 §5.2). Atomic across sessions and nodes."""
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.users).where(and_(
                t.users.c.id == user_id, t.users.c.totp_last_step < step))
                .values(totp_last_step=step))
            return bool(res.rowcount)

    async def use_emergency_code(self, user_id: int, code_hash: str) -> bool:
        """Spend one emergency code; False if it does not exist or was used."""
        c = t.emergency_codes.c
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.emergency_codes).where(and_(
                c.user_id == user_id, c.code_hash == code_hash, c.used_at.is_(None)))
                .values(used_at=self.clock()))
            return bool(res.rowcount)

    async def emergency_codes_left(self, user_id: int) -> int:
        c = t.emergency_codes.c
        async with self._read() as conn:
            return int((await conn.execute(select(func.count()).select_from(
                t.emergency_codes).where(and_(c.user_id == user_id, c.used_at.is_(None))))
                ).scalar_one())

    async def note_user_network(self, user_id: int, network: str) -> bool:
        """Like ``note_network`` for a user's web sign-ins: True for a network never
        seen before, except the very first sign-in (the baseline)."""
        insert_fn = sqlite_insert if self.is_sqlite else pg_insert
        c = t.user_networks.c
        async with self._write() as (conn, _):
            known = (await conn.execute(select(func.count()).select_from(t.user_networks)
                                        .where(c.user_id == user_id))).scalar_one()
            res = await conn.execute(insert_fn(t.user_networks).values(
                user_id=user_id, network=network, first_seen=self.clock())
                .on_conflict_do_nothing())
            return bool(res.rowcount) and known > 0

    # --- web sessions ---------------------------------------------------------------
    async def create_web_session(self, token_hash: str, user_id: int, stage: str,
                                 csrf: str) -> None:
        now = self.clock()
        async with self._write() as (conn, _):
            await conn.execute(insert(t.web_sessions).values(
                token_hash=token_hash, user_id=user_id, stage=stage, csrf=csrf,
                created_at=now, last_seen=now))

    async def get_web_session(self, token_hash: str) -> WebSession | None:
        row = await self.run_read(lambda conn: conn.execute(select(t.web_sessions).where(
            t.web_sessions.c.token_hash == token_hash)).first(), rows=1)
        if row is None:
            return None
        return WebSession(row.token_hash, int(row.user_id), row.stage, row.csrf,
                          float(row.created_at), float(row.last_seen), row.pending_totp)

    async def update_web_session(self, token_hash: str, **values: Any) -> None:
        """Set ``last_seen``, ``stage`` or ``pending_totp`` of a session."""
        async with self._write() as (conn, _):
            await conn.execute(update(t.web_sessions).where(
                t.web_sessions.c.token_hash == token_hash).values(**values))

    async def delete_web_session(self, token_hash: str) -> None:
        async with self._write() as (conn, _):
            await conn.execute(delete(t.web_sessions).where(
                t.web_sessions.c.token_hash == token_hash))

    async def delete_user_web_sessions(self, user_id: int) -> int:
        async with self._write() as (conn, _):
            res = await conn.execute(delete(t.web_sessions).where(
                t.web_sessions.c.user_id == user_id))
            return int(res.rowcount)

    async def web_session_count(self, user_id: int) -> int:
        return await self.run_read(lambda conn: int(conn.execute(select(func.count()).select_from(
            t.web_sessions).where(t.web_sessions.c.user_id == user_id)).scalar_one()), rows=1)

    async def prune_web_sessions(self, idle_before: float, created_before: float) -> int:
        async with self._write() as (conn, _):
            res = await conn.execute(delete(t.web_sessions).where(
                (t.web_sessions.c.last_seen < idle_before)
                | (t.web_sessions.c.created_at < created_before)))
            return int(res.rowcount)

"""Domains, addresses, aliases, users and grants, app passwords, activity, send log.

Addresses compare case-insensitively (docs/behaviour.md §3): every lookup goes through the
lowercased ``local_key`` and the lowercase domain name. Callers validate local parts
with ``mailstack.policy.addresses`` before they get here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .base import (
    ActivityEntry,
    Address,
    Alias,
    AlreadyExists,
    Conflict,
    Domain,
    LimitReached,
    NotFound,
    StoreBase,
    StoreError,
)
from .credentials import senders_changed
from .events import AddressDeleted, CredentialsChanged
from .users import end_broken_unification

SPECIAL_FOLDERS = (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
                   ("Junk", "\\Junk"), ("Archive", "\\Archive"))
KINDS = ("mailbox", "no-reply", "catchall")


@dataclass(frozen=True)
class NewAddressRecord:
    """One address to create (its local part already checked by the policy)."""

    local_part: str
    domain: str
    password_hash: str | None = None
    display_name: str = ""
    kind: str = "mailbox"

    @property
    def email(self) -> str:
        return f"{self.local_part}@{self.domain}"


def split_address(address: str) -> tuple[str, str]:
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise NotFound(f"not an address: {address!r}")
    return local, domain.lower().rstrip(".")


def _address_cols() -> list[Any]:
    return [t.addresses, t.domains.c.name.label("domain_name"), t.domains.c.plan]


def _to_address(row: Any) -> Address:
    return address_from(row._mapping)


def address_from(m: Mapping[str, Any]) -> Address:
    """An Address from the columns of ``_address_cols`` by name."""
    return Address(id=m["id"], domain_id=m["domain_id"], local_part=m["local_part"],
                   domain=m["domain_name"], kind=m["kind"], display_name=m["display_name"],
                   password_hash=m["password_hash"],
                   forward_to=tuple(json.loads(m["forward_to"])),
                   keep_copy=bool(m["keep_copy"]),
                   app_passwords_only=bool(m["app_passwords_only"]),
                   credential_epoch=m["credential_epoch"], plan=m["plan"])


class AccountsMixin(StoreBase):
    # Credentials of sessions (app password revoke, app-only switch), user support
    # operations and the failed-notice claim live in store/credentials.py.

    # --- domains -------------------------------------------------------------------
    async def add_domain(self, name: str, plan: str) -> Domain:
        name = name.lower().rstrip(".")
        async with self._write() as (conn, _):
            try:
                res = await conn.execute(insert(t.domains).values(
                    name=name, plan=plan, created_at=self.clock()).returning(t.domains.c.id))
            except IntegrityError as exc:
                raise AlreadyExists(f"domain {name} already exists") from exc
            return Domain(res.scalar_one(), name, plan)

    async def get_domain(self, name: str) -> Domain | None:
        row = await self.run_read(lambda conn: conn.execute(select(t.domains).where(
            t.domains.c.name == name.lower().rstrip("."))).first(), rows=1)
        return Domain(row.id, row.name, row.plan) if row else None

    async def list_domains(self) -> list[Domain]:
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.domains).order_by(t.domains.c.name)).all())
        return [Domain(r.id, r.name, r.plan) for r in rows]

    async def set_domain_plan(self, name: str, plan: str) -> None:
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.domains).where(
                t.domains.c.name == name.lower()).values(plan=plan))
            if res.rowcount == 0:
                raise NotFound(f"no domain {name}")

    async def remove_domain(self, name: str) -> None:
        """Remove a domain that holds no addresses or aliases."""
        dom = await self.get_domain(name)
        if dom is None:
            raise NotFound(f"no domain {name}")
        async with self._write() as (conn, _):
            n = (await conn.execute(select(func.count()).select_from(t.addresses).where(
                t.addresses.c.domain_id == dom.id))).scalar_one()
            n += (await conn.execute(select(func.count()).select_from(t.aliases).where(
                t.aliases.c.domain_id == dom.id))).scalar_one()
            if n:
                raise Conflict(f"domain {dom.name} still has {n} addresses or aliases; "
                               "remove them first")
            await conn.execute(delete(t.domains).where(t.domains.c.id == dom.id))

    # --- addresses -----------------------------------------------------------------
    async def add_address(self, local_part: str, domain: str, *, kind: str = "mailbox",
                          password_hash: str | None = None, display_name: str = "",
                          max_addresses: int | None = None) -> Address:
        if kind not in KINDS:
            raise Conflict(f"unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
        dom = await self.get_domain(domain)
        if dom is None:
            raise NotFound(f"domain {domain} is not hosted here; add it first")
        async with self._write() as (conn, _):
            address_id = await self._insert_address(
                conn, dom, NewAddressRecord(local_part, domain, password_hash, display_name,
                                            kind), max_addresses, self.clock())
        found = await self.get_address_by_id(address_id)
        assert found is not None
        return found

    async def add_addresses(self, records: Sequence[NewAddressRecord], *,
                            max_addresses: Mapping[str, int] | None = None,
                            activity_detail: str = "") -> list[Address]:
        """Create every address of ``records`` (with its folders and an
        ``address_created`` activity entry) in ONE transaction: all or nothing, even if
        the process dies half-way (docs/behaviour.md §3, bulk creation).
        ``max_addresses`` maps a domain name to its plan's cap. A refusal names the
        record: ``StoreError("<address>: <reason>")``; nothing is stored then."""
        caps = {k.lower(): v for k, v in (max_addresses or {}).items()}
        domains: dict[str, Domain] = {}
        for rec in records:
            name = rec.domain.lower().rstrip(".")
            if name not in domains:
                dom = await self.get_domain(name)
                if dom is None:
                    raise NotFound(f"{rec.email}: domain {rec.domain} is not hosted here")
                domains[name] = dom
            if rec.kind not in KINDS:
                raise Conflict(f"{rec.email}: unknown kind {rec.kind!r}")
        now = self.clock()
        ids: list[int] = []
        async with self._write() as (conn, _):
            for rec in records:
                dom = domains[rec.domain.lower().rstrip(".")]
                try:
                    ids.append(await self._insert_address(conn, dom, rec,
                                                          caps.get(dom.name), now))
                except StoreError as exc:
                    if str(exc).startswith(f"{rec.local_part}@"):
                        raise
                    raise type(exc)(f"{rec.email}: {exc}") from exc
                await conn.execute(insert(t.activity).values(
                    at=now, address=f"{rec.local_part}@{dom.name}".lower(), client_ip=None,
                    protocol="cli", event="address_created", detail=activity_detail))
        out: list[Address] = []
        for address_id in ids:
            found = await self.get_address_by_id(address_id)
            assert found is not None
            out.append(found)
        return out

    async def _insert_address(self, conn: Any, dom: Domain, rec: NewAddressRecord,
                              max_addresses: int | None, now: float) -> int:
        """Insert one address and its folders inside the caller's write transaction."""
        local_part, key, kind = rec.local_part, rec.local_part.lower(), rec.kind
        count = (await conn.execute(select(func.count()).select_from(t.addresses).where(
            t.addresses.c.domain_id == dom.id))).scalar_one()
        if max_addresses is not None and count >= max_addresses:
            raise LimitReached(f"domain {dom.name} is on plan {dom.plan!r}, which "
                               f"allows {max_addresses} addresses")
        if (await conn.execute(select(t.aliases.c.id).where(and_(
                t.aliases.c.domain_id == dom.id, t.aliases.c.local_key == key)))).first():
            raise AlreadyExists(f"{local_part}@{dom.name} is already an alias")
        if kind == "catchall" and (await conn.execute(select(t.addresses.c.id).where(and_(
                t.addresses.c.domain_id == dom.id, t.addresses.c.kind == "catchall")))
                ).first():
            raise AlreadyExists(f"domain {dom.name} already has a catchall address")
        if (await conn.execute(select(t.addresses.c.id).where(and_(
                t.addresses.c.domain_id == dom.id, t.addresses.c.local_key == key)))).first():
            raise AlreadyExists(f"{local_part}@{dom.name} already exists")
        try:
            res = await conn.execute(insert(t.addresses).values(
                domain_id=dom.id, local_part=local_part, local_key=key, kind=kind,
                password_hash=rec.password_hash, display_name=rec.display_name,
                forward_to="[]", keep_copy=True, app_passwords_only=False,
                credential_epoch=0, created_at=now).returning(t.addresses.c.id))
        except IntegrityError as exc:
            raise AlreadyExists(f"{local_part}@{dom.name} already exists") from exc
        address_id = int(res.scalar_one())
        if kind != "no-reply":
            await self._create_default_folders(conn, address_id, now)
        return address_id

    async def _create_default_folders(self, conn: Any, address_id: int, now: float) -> None:
        for name, use in (("INBOX", None), *SPECIAL_FOLDERS):
            await conn.execute(insert(t.folders).values(
                address_id=address_id, name=name, special_use=use, subscribed=True,
                uidvalidity=await self._next_uidvalidity(conn), uidnext=1, highestmodseq=1,
                created_at=now))

    async def _next_uidvalidity(self, conn: Any) -> int:
        res = await conn.execute(update(t.counters).where(t.counters.c.name == "uidvalidity")
                                 .values(value=t.counters.c.value + 1)
                                 .returning(t.counters.c.value))
        return int(res.scalar_one()) & 0xFFFFFFFF or 1

    async def get_address(self, address: str) -> Address | None:
        try:
            local, domain = split_address(address)
        except NotFound:
            return None
        row = await self.run_read(lambda conn: conn.execute(
            select(*_address_cols()).join(t.domains).where(and_(
            t.domains.c.name == domain, t.addresses.c.local_key == local.lower()))).first(), rows=1)
        return _to_address(row) if row else None

    async def get_address_by_id(self, address_id: int) -> Address | None:
        row = await self.run_read(lambda conn: conn.execute(
            select(*_address_cols()).join(t.domains).where(
            t.addresses.c.id == address_id)).first(), rows=1)
        return _to_address(row) if row else None

    async def list_addresses(self, domain: str | None = None) -> list[Address]:
        q = select(*_address_cols()).join(t.domains)
        if domain:
            q = q.where(t.domains.c.name == domain.lower())
        rows = await self.run_read(lambda conn: conn.execute(q.order_by(t.domains.c.name,
                                              t.addresses.c.local_key)).all())
        return [_to_address(r) for r in rows]

    async def catchall_for(self, domain: str) -> Address | None:
        row = await self.run_read(lambda conn: conn.execute(
            select(*_address_cols()).join(t.domains).where(and_(
            t.domains.c.name == domain.lower(), t.addresses.c.kind == "catchall"))).first(), rows=1)
        return _to_address(row) if row else None

    async def set_password(self, address_id: int, password_hash: str) -> int:
        """Replace the address's password; returns the new credential epoch. Sessions
        opened with the old secret are told through ``CredentialsChanged``."""
        return await self._bump_epoch(address_id, password_hash=password_hash)

    async def _bump_epoch(self, address_id: int, **values: Any) -> int:
        async with self._write() as (conn, events):
            res = await conn.execute(update(t.addresses).where(t.addresses.c.id == address_id)
                                     .values(credential_epoch=t.addresses.c.credential_epoch
                                             + 1, **values)
                                     .returning(t.addresses.c.credential_epoch))
            epoch = res.scalar_one_or_none()
            if epoch is None:
                raise NotFound("no such address")
            events.append(CredentialsChanged(address_id, int(epoch)))
            return int(epoch)

    async def set_forwarding(self, address_id: int, targets: list[str], keep_copy: bool) -> None:
        async with self._write() as (conn, _):
            await conn.execute(update(t.addresses).where(t.addresses.c.id == address_id)
                               .values(forward_to=json.dumps(targets), keep_copy=keep_copy))

    async def remove_address(self, address_id: int) -> None:
        """Delete the address with all its folders and messages (cascade)."""
        async with self._write() as (conn, events):
            res = await conn.execute(delete(t.addresses).where(t.addresses.c.id == address_id))
            if res.rowcount == 0:
                raise NotFound("no such address")
            events.append(AddressDeleted(address_id))

    # --- aliases ------------------------------------------------------------------
    async def add_alias(self, local_part: str, domain: str, targets: list[str]) -> Alias:
        dom = await self.get_domain(domain)
        if dom is None:
            raise NotFound(f"domain {domain} is not hosted here; add it first")
        key = local_part.lower()
        async with self._write() as (conn, _):
            if (await conn.execute(select(t.addresses.c.id).where(and_(
                    t.addresses.c.domain_id == dom.id, t.addresses.c.local_key == key)))
                    ).first():
                raise AlreadyExists(f"{local_part}@{dom.name} is already an address")
            try:
                res = await conn.execute(insert(t.aliases).values(
                    domain_id=dom.id, local_part=local_part, local_key=key,
                    targets=json.dumps(targets), created_at=self.clock())
                    .returning(t.aliases.c.id))
            except IntegrityError as exc:
                raise AlreadyExists(f"alias {local_part}@{dom.name} already exists") from exc
            return Alias(res.scalar_one(), local_part, dom.name, tuple(targets))

    async def get_alias(self, address: str) -> Alias | None:
        try:
            local, domain = split_address(address)
        except NotFound:
            return None
        row = await self.run_read(lambda conn: conn.execute(
            select(t.aliases, t.domains.c.name.label("dn")).join(
            t.domains).where(and_(t.domains.c.name == domain,
                                  t.aliases.c.local_key == local.lower()))).first(), rows=1)
        if row is None:
            return None
        return Alias(row.id, row.local_part, row.dn, tuple(json.loads(row.targets)))

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        q = select(t.aliases, t.domains.c.name.label("dn")).join(t.domains)
        if domain:
            q = q.where(t.domains.c.name == domain.lower())
        async with self._read() as conn:
            rows = (await conn.execute(q.order_by(t.domains.c.name, t.aliases.c.local_key))
                    ).all()
        return [Alias(r.id, r.local_part, r.dn, tuple(json.loads(r.targets))) for r in rows]

    async def remove_alias(self, address: str) -> None:
        alias = await self.get_alias(address)
        if alias is None:
            raise NotFound(f"no alias {address}")
        async with self._write() as (conn, _):
            await conn.execute(delete(t.aliases).where(t.aliases.c.id == alias.id))

    async def aliases_pointing_to(self, address: str) -> list[Alias]:
        """Aliases with ``address`` among their targets (the login may send as them)."""
        want = address.lower()
        return [a for a in await self.list_aliases()
                if any(x.lower() == want for x in a.targets)]

    # --- users and grants ----------------------------------------------------------
    async def add_user(self, login: str, password_hash: str) -> int:
        async with self._write() as (conn, _):
            try:
                res = await conn.execute(insert(t.users).values(
                    login=login.lower(), password_hash=password_hash,
                    created_at=self.clock()).returning(t.users.c.id))
            except IntegrityError as exc:
                raise AlreadyExists(f"user {login} already exists") from exc
            return int(res.scalar_one())

    async def grant(self, user_id: int, address_id: int, permissions: list[str]) -> None:
        async with self._write() as (conn, events):
            await senders_changed(conn, events, user_id)
            await conn.execute(delete(t.grants).where(and_(
                t.grants.c.user_id == user_id, t.grants.c.address_id == address_id)))
            await conn.execute(insert(t.grants).values(
                user_id=user_id, address_id=address_id, permissions=",".join(permissions)))
            await end_broken_unification(conn, address_id, self.clock())  # docs/behaviour.md §2

    async def get_user_id(self, login: str) -> int | None:
        return await self.run_read(lambda conn: conn.execute(select(t.users.c.id).where(
            t.users.c.login == login.lower())).scalar_one_or_none(), rows=1)

    async def list_users(self) -> list[tuple[str, list[tuple[str, frozenset[str]]]]]:
        """Every user with its grants: [(login, [(address, permissions)])]."""
        async with self._read() as conn:
            users = (await conn.execute(select(t.users.c.id, t.users.c.login)
                                        .order_by(t.users.c.login))).all()
            rows = (await conn.execute(
                select(t.grants.c.user_id, t.addresses.c.local_part, t.domains.c.name,
                       t.grants.c.permissions)
                .select_from(t.grants.join(t.addresses).join(t.domains)))).all()
        by_user: dict[int, list[tuple[str, frozenset[str]]]] = {}
        for r in rows:
            by_user.setdefault(r.user_id, []).append(
                (f"{r.local_part}@{r.name}",
                 frozenset(p for p in r.permissions.split(",") if p)))
        return [(u.login, sorted(by_user.get(u.id, []))) for u in users]

    async def revoke_grant(self, user_id: int, address_id: int) -> None:
        async with self._write() as (conn, events):
            await senders_changed(conn, events, user_id)
            res = await conn.execute(delete(t.grants).where(and_(
                t.grants.c.user_id == user_id, t.grants.c.address_id == address_id)))
            if res.rowcount == 0:
                raise NotFound("no such grant")
            await end_broken_unification(conn, address_id, self.clock())  # docs/behaviour.md §2

    async def grants_for_address(self, address_id: int) -> list[tuple[str, frozenset[str]]]:
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.users.c.login, t.grants.c.permissions).join(
            t.users).where(t.grants.c.address_id == address_id)).all())
        return [(r.login, frozenset(p for p in r.permissions.split(",") if p)) for r in rows]

    # --- app passwords --------------------------------------------------------------
    async def add_app_password(self, address_id: int, name: str, password_hash: str) -> None:
        async with self._write() as (conn, _):
            try:
                await conn.execute(insert(t.app_passwords).values(
                    address_id=address_id, name=name, password_hash=password_hash,
                    created_at=self.clock()))
            except IntegrityError as exc:
                raise AlreadyExists(f"an app password named {name!r} exists") from exc

    async def app_password_hashes(self, address_id: int) -> list[tuple[int, str]]:
        rows = await self.run_read(lambda conn: conn.execute(select(t.app_passwords.c.id,
                                          t.app_passwords.c.password_hash).where(
            t.app_passwords.c.address_id == address_id)).all())
        return [(r.id, r.password_hash) for r in rows]

    async def list_app_passwords(self, address_id: int) -> list[tuple[str, float, float | None]]:
        rows = await self.run_read(lambda conn: conn.execute(select(t.app_passwords).where(
            t.app_passwords.c.address_id == address_id).order_by(
            t.app_passwords.c.name)).all())
        return [(r.name, r.created_at, r.last_used_at) for r in rows]

    async def touch_app_password(self, app_id: int) -> None:
        async with self._write() as (conn, _):
            await conn.execute(update(t.app_passwords).where(t.app_passwords.c.id == app_id)
                               .values(last_used_at=self.clock()))

    # --- activity log and security facts ---------------------------------------------
    async def log_activity(self, event: str, *, address: str | None = None,
                           client_ip: str | None = None, protocol: str | None = None,
                           detail: str = "") -> None:
        async with self._write() as (conn, _):
            await conn.execute(insert(t.activity).values(
                at=self.clock(), address=address.lower() if address else None,
                client_ip=client_ip, protocol=protocol, event=event, detail=detail))

    async def list_activity(self, address: str | None = None,
                            limit: int = 50) -> list[ActivityEntry]:
        q = select(t.activity).order_by(t.activity.c.at.desc(), t.activity.c.id.desc())
        if address:
            q = q.where(t.activity.c.address == address.lower())
        rows = await self.run_read(lambda conn: conn.execute(q.limit(limit)).all())
        return [ActivityEntry(r.at, r.address, r.client_ip, r.protocol, r.event, r.detail,
                              int(r._mapping["count"])) for r in rows]

    async def note_network(self, address_id: int, network: str) -> bool:
        """Remember that ``address_id`` logged in from ``network``. True when this is a
        new location for an address that logged in before (the very first login sets
        the baseline and is not "new"). Concurrent first logins from one network are
        safe: the insert ignores a row another session just added."""
        insert_fn = sqlite_insert if self.is_sqlite else pg_insert
        async with self._write() as (conn, _):
            known = (await conn.execute(select(func.count()).select_from(t.seen_networks)
                                        .where(t.seen_networks.c.address_id == address_id))
                     ).scalar_one()
            res = await conn.execute(insert_fn(t.seen_networks).values(
                address_id=address_id, network=network, first_seen=self.clock())
                .on_conflict_do_nothing())
            return bool(res.rowcount) and known > 0

    async def last_event_at(self, address: str, event: str) -> float | None:
        """When ``event`` was last logged for ``address`` (None: never)."""
        async with self._read() as conn:
            at = (await conn.execute(select(func.max(t.activity.c.at)).where(and_(
                t.activity.c.address == address.lower(), t.activity.c.event == event)))
                ).scalar_one_or_none()
        return float(at) if at is not None else None

    async def record_send(self, address_id: int, recipients: int) -> None:
        async with self._write() as (conn, _):
            await conn.execute(insert(t.send_log).values(
                address_id=address_id, at=self.clock(), recipients=recipients))

    async def sends_since(self, address_id: int, since: float) -> list[tuple[float, int]]:
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.send_log.c.at, t.send_log.c.recipients).where(
            and_(t.send_log.c.address_id == address_id, t.send_log.c.at > since))
            .order_by(t.send_log.c.at)).all())
        return [(r.at, r.recipients) for r in rows]

"""Per-domain settings of inbound sender authentication (docs/behaviour.md §5): the
DMARC action override of a hosted domain. Read only when a message failed DMARC, so
the MX path costs nothing extra for mail that passes."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, insert, select

from . import schema as t
from .accounts import split_address
from .base import NotFound, StoreBase

DMARC_ACTIONS = ("reject", "quarantine", "mark")


class SenderAuthMixin(StoreBase):
    async def set_dmarc_action(self, domain: str, action: str | None) -> None:
        """Set (or with None, remove) the DMARC action override of a hosted domain."""
        if action is not None and action not in DMARC_ACTIONS:
            raise ValueError(f"DMARC action must be one of {', '.join(DMARC_ACTIONS)}")
        name = domain.lower().rstrip(".")
        s = t.domain_auth_settings
        async with self._write() as (conn, _):
            domain_id = (await conn.execute(select(t.domains.c.id).where(
                t.domains.c.name == name))).scalar_one_or_none()
            if domain_id is None:
                raise NotFound(f"no domain {name} is hosted here")
            await conn.execute(delete(s).where(s.c.domain_id == domain_id))
            if action is not None:
                await conn.execute(insert(s).values(domain_id=domain_id, dmarc_action=action))

    async def dmarc_actions(self, domains: Collection[str]) -> dict[str, str]:
        """domain -> its DMARC action override, for the hosted domains that have one."""
        names = sorted({d.lower().rstrip(".") for d in domains})
        if not names:
            return {}
        s = t.domain_auth_settings
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.domains.c.name, s.c.dmarc_action)
            .select_from(s.join(t.domains, s.c.domain_id == t.domains.c.id))
            .where(t.domains.c.name.in_(names))).all())
        return {str(r.name): str(r.dmarc_action) for r in rows}

    async def junk_folders(self, keys: Collection[str]) -> dict[str, tuple[int, str]]:
        """address key -> (its ``\\Junk`` folder id, the address as written), for the
        keys that have one (RFC 6154 special-use; quarantined mail goes there)."""
        out: dict[str, tuple[int, str]] = {}
        async with self._read() as conn:
            for key in keys:
                try:
                    local, domain = split_address(key)
                except NotFound:
                    continue
                row = (await conn.execute(
                    select(t.folders.c.id, t.addresses.c.local_part, t.domains.c.name)
                    .select_from(t.folders.join(t.addresses).join(t.domains))
                    .where(t.folders.c.special_use == "\\Junk",
                           t.domains.c.name == domain,
                           t.addresses.c.local_key == local.lower())
                    .order_by(t.folders.c.id).limit(1))).first()
                if row is not None:
                    out[key] = (int(row.id), f"{row.local_part}@{row.name}")
        return out

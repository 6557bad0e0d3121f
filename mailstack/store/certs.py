"""The ACME certificate shared by all nodes, and the renewal lock (docs/behaviour.md §1).

Invariants:
- Taking the lock is one conditional UPDATE (held by nobody, by us, or expired), so two
  nodes can never both hold it, on SQLite as on PostgreSQL.
- A certificate is saved together with its key in one row update; readers get both or
  neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .base import StoreBase


@dataclass(frozen=True)
class StoredCertificate:
    cert_pem: str
    key_pem: str
    updated_at: float
    holder: str
    locked_until: float


class CertsMixin(StoreBase):
    async def _ensure_cert_row(self, name: str) -> None:
        try:
            async with self._write() as (conn, _):
                row = (await conn.execute(select(t.tls_certificates.c.name).where(
                    t.tls_certificates.c.name == name))).first()
                if row is None:
                    await conn.execute(insert(t.tls_certificates).values(name=name))
        except IntegrityError:
            pass  # another node inserted it at the same moment

    async def acquire_cert_lock(self, name: str, holder: str, ttl: float) -> bool:
        """Take the renewal lock for ``ttl`` seconds; False if another holder has it."""
        await self._ensure_cert_row(name)
        c = t.tls_certificates.c
        now = self.clock()
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.tls_certificates).where(and_(
                c.name == name, or_(c.holder == "", c.holder == holder,
                                    c.locked_until < now))).values(
                holder=holder, locked_until=now + ttl))
            return bool(res.rowcount)

    async def release_cert_lock(self, name: str, holder: str) -> None:
        c = t.tls_certificates.c
        async with self._write() as (conn, _):
            await conn.execute(update(t.tls_certificates).where(and_(
                c.name == name, c.holder == holder)).values(holder="", locked_until=0.0))

    async def save_certificate(self, name: str, cert_pem: str, key_pem: str) -> None:
        await self._ensure_cert_row(name)
        async with self._write() as (conn, _):
            await conn.execute(update(t.tls_certificates).where(
                t.tls_certificates.c.name == name).values(
                cert_pem=cert_pem, key_pem=key_pem, updated_at=self.clock()))

    async def load_certificate(self, name: str) -> StoredCertificate | None:
        row = await self.run_read(lambda conn: conn.execute(select(t.tls_certificates).where(
            t.tls_certificates.c.name == name)).first(), rows=1)
        if row is None:
            return None
        return StoredCertificate(row.cert_pem, row.key_pem, row.updated_at, row.holder,
                                 row.locked_until)

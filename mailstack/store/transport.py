"""Transport-security state shared by every node: the MTA-STS policy cache (RFC 8461
§5.1) and TLS reporting counts (RFC 8460 §4.3). docs/behaviour.md §6.

Invariants:
- One cached policy per domain; ``put_mta_sts_policy`` replaces it in one transaction.
- Counts only grow; ``add_tls_results`` adds to existing rows (an UPDATE first, an
  INSERT when none matched, the UPDATE again if another node inserted meanwhile).
- A day's reports are sent by one node: ``claim_tls_report_day`` is one conditional
  UPDATE (not sent yet, and held by nobody, by the caller, or expired), so two nodes can
  never both hold it; ``finish_tls_report_day`` marks the day sent for good.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from . import schema as t
from .base import StoreBase


@dataclass(frozen=True)
class CachedStsPolicy:
    domain: str
    policy_id: str
    policy_text: str
    fetched_at: float
    expires_at: float


@dataclass(frozen=True)
class TlsResultKey:
    day: str
    policy_domain: str
    policy_type: str
    result_type: str
    mx_host: str = ""


class TransportMixin(StoreBase):
    async def get_mta_sts_policy(self, domain: str) -> CachedStsPolicy | None:
        c = t.mta_sts_policies.c
        row = await self.run_read(lambda conn: conn.execute(select(t.mta_sts_policies).where(
            c.domain == domain.lower())).first(), rows=1)
        if row is None:
            return None
        return CachedStsPolicy(row.domain, row.policy_id, row.policy_text, row.fetched_at,
                               row.expires_at)

    async def put_mta_sts_policy(self, policy: CachedStsPolicy) -> None:
        c = t.mta_sts_policies.c
        async with self._write() as (conn, _):
            await conn.execute(delete(t.mta_sts_policies).where(
                c.domain == policy.domain.lower()))
            await conn.execute(insert(t.mta_sts_policies).values(
                domain=policy.domain.lower(), policy_id=policy.policy_id,
                policy_text=policy.policy_text, fetched_at=policy.fetched_at,
                expires_at=policy.expires_at))

    async def add_tls_results(self, counts: Mapping[TlsResultKey, int]) -> None:
        c = t.tls_report_counts.c
        for key, n in counts.items():
            where = and_(c.day == key.day, c.policy_domain == key.policy_domain,
                         c.policy_type == key.policy_type, c.result_type == key.result_type,
                         c.mx_host == key.mx_host)
            for _attempt in range(2):
                try:
                    async with self._write() as (conn, _):
                        res = await conn.execute(update(t.tls_report_counts).where(where)
                                                 .values(count=c.count + n))
                        if not res.rowcount:
                            await conn.execute(insert(t.tls_report_counts).values(
                                day=key.day, policy_domain=key.policy_domain,
                                policy_type=key.policy_type, result_type=key.result_type,
                                mx_host=key.mx_host, count=n))
                    break
                except IntegrityError:  # another node inserted the row first
                    continue

    async def tls_results(self, day: str) -> dict[TlsResultKey, int]:
        c = t.tls_report_counts.c
        rows = await self.run_read(lambda conn: conn.execute(
            select(t.tls_report_counts).where(c.day == day)
                                   .order_by(c.policy_domain, c.policy_type,
                                             c.result_type, c.mx_host)).all())
        return {TlsResultKey(r.day, r.policy_domain, r.policy_type, r.result_type,
                             r.mx_host): int(r._mapping["count"]) for r in rows}

    async def claim_tls_report_day(self, day: str, holder: str, ttl: float) -> bool:
        """Take the sending of ``day``'s TLS reports for ``ttl`` seconds; False when the
        day was sent already or another node holds it."""
        c = t.tls_report_days.c
        now = self.clock()
        insert_fn = sqlite_insert if self.is_sqlite else pg_insert
        async with self._write() as (conn, _):
            # a row another node inserted at the same moment is left alone
            await conn.execute(insert_fn(t.tls_report_days).values(day=day)
                               .on_conflict_do_nothing())
            res = await conn.execute(update(t.tls_report_days).where(and_(
                c.day == day, c.sent_at == 0.0,
                or_(c.holder == "", c.holder == holder, c.locked_until < now))).values(
                holder=holder, locked_until=now + ttl))
            return bool(res.rowcount)

    async def finish_tls_report_day(self, day: str, holder: str, summary: str) -> None:
        c = t.tls_report_days.c
        async with self._write() as (conn, _):
            await conn.execute(update(t.tls_report_days).where(and_(
                c.day == day, c.holder == holder)).values(
                sent_at=self.clock(), summary=summary, locked_until=0.0))

    async def release_tls_report_day(self, day: str, holder: str) -> None:
        c = t.tls_report_days.c
        async with self._write() as (conn, _):
            await conn.execute(update(t.tls_report_days).where(and_(
                c.day == day, c.holder == holder, c.sent_at == 0.0)).values(
                holder="", locked_until=0.0))

    async def tls_report_day(self, day: str) -> tuple[float, str] | None:
        """(sent_at, summary) of ``day``'s reports; sent_at 0 while not sent."""
        c = t.tls_report_days.c
        row = await self.run_read(lambda conn: conn.execute(select(c.sent_at, c.summary).where(
            c.day == day)).first(), rows=1)
        return None if row is None else (float(row.sent_at), str(row.summary))

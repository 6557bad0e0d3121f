"""Login throttle state and aggregated refusals (docs/behaviour.md §2, §12).

Failure counters live in the database, so they survive a restart and every worker and
node shares them. One row per (client network, address) that failed: ``failures`` in
the window that began at ``window_start``; ``locked_until`` refuses that pair only.
A row whose address is ``*`` holds a lock of the whole network (a spray over many
addresses). The decisions (when to slow, when to lock) are ``mailstack.policy.auth``'s;
this module only counts and stores.

Refused attempts are not logged one row each (an attack could fill the disk): one
activity row per (event, network, address, minute) carries a ``count``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, delete, func, insert, select, update

from . import schema as t
from .base import StoreBase

NETWORK_WIDE = "*"  # the address of a row that locks a whole network


@dataclass(frozen=True)
class ThrottleFacts:
    """What the login guard knows about (network, address) at one moment."""

    pair_failures: int = 0  # failures of this address from this network, in the window
    pair_locked_until: float = 0.0
    net_failures: int = 0  # failures from this network, all addresses, in the window
    net_addresses: int = 0  # distinct addresses that failed from this network
    net_locked_until: float = 0.0
    addr_failures: int = 0  # failures against this address from every network


class ThrottleMixin(StoreBase):
    async def throttle_facts(self, network: str, address: str, since: float) -> ThrottleFacts:
        """Counts of failures newer than ``since`` and the locks that concern a login of
        ``address`` from ``network``."""
        th = t.login_throttle.c
        async with self._read() as conn:
            rows = (await conn.execute(select(th.address, th.failures, th.window_start,
                                              th.last_at, th.locked_until).where(
                th.network == network))).all()
            addr_failures = (await conn.execute(select(func.coalesce(
                func.sum(th.failures), 0)).where(and_(
                    th.address == address, th.last_at > since)))).scalar_one()
        pair = next((r for r in rows if r.address == address), None)
        whole = next((r for r in rows if r.address == NETWORK_WIDE), None)
        live = [r for r in rows if r.address != NETWORK_WIDE and r.last_at > since]
        return ThrottleFacts(
            pair_failures=pair.failures if pair is not None and pair.last_at > since else 0,
            pair_locked_until=pair.locked_until if pair is not None else 0.0,
            net_failures=sum(r.failures for r in live),
            net_addresses=len(live),
            net_locked_until=whole.locked_until if whole is not None else 0.0,
            addr_failures=int(addr_failures))

    async def record_login_failure(self, network: str, address: str, now: float,
                                   window: float) -> None:
        """Count one failure of (network, address); a window older than ``window``
        seconds starts over."""
        th = t.login_throttle.c
        async with self._write() as (conn, _):
            row = (await conn.execute(select(th.failures, th.window_start).where(and_(
                th.network == network, th.address == address)))).first()
            if row is None:
                await conn.execute(insert(t.login_throttle).values(
                    network=network, address=address, failures=1, window_start=now,
                    last_at=now, locked_until=0.0))
                return
            fresh = row.window_start < now - window
            await conn.execute(update(t.login_throttle).where(and_(
                th.network == network, th.address == address)).values(
                failures=1 if fresh else th.failures + 1,
                window_start=now if fresh else th.window_start, last_at=now))

    async def lock_logins(self, network: str, address: str, until: float, now: float
                          ) -> None:
        """Refuse ``address`` (or ``NETWORK_WIDE``) from ``network`` until ``until``."""
        th = t.login_throttle.c
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.login_throttle).where(and_(
                th.network == network, th.address == address)).values(locked_until=until))
            if not res.rowcount:
                await conn.execute(insert(t.login_throttle).values(
                    network=network, address=address, failures=0, window_start=now,
                    last_at=now, locked_until=until))

    async def clear_login_failures(self, network: str, address: str) -> None:
        """A correct login: the pair's failures are forgiven."""
        th = t.login_throttle.c
        async with self._write() as (conn, _):
            await conn.execute(delete(t.login_throttle).where(and_(
                th.network == network, th.address == address)))

    async def unlock_logins(self, *, address: str | None = None,
                            network: str | None = None) -> int:
        """Forget failures and locks of an address (every network) or of a network
        (every address); returns how many rows went."""
        th = t.login_throttle.c
        cond = th.address == address.lower() if address else th.network == network
        async with self._write() as (conn, _):
            res = await conn.execute(delete(t.login_throttle).where(cond))
            return int(res.rowcount or 0)

    async def prune_login_throttle(self, older_than: float, now: float) -> int:
        """Forget rows whose failures are older than ``older_than`` and whose lock is
        over (the table stays as small as the attacks of the last window)."""
        th = t.login_throttle.c
        async with self._write() as (conn, _):
            res = await conn.execute(delete(t.login_throttle).where(and_(
                th.last_at < older_than, th.locked_until < now)))
            return int(res.rowcount or 0)

    async def list_login_throttle(self) -> list[tuple[str, str, int, float]]:
        """(network, address, failures, locked_until) of every row, locked first."""
        th = t.login_throttle.c
        rows = await self.run_read(lambda conn: conn.execute(
            select(th.network, th.address, th.failures,
                                          th.locked_until).order_by(
            th.locked_until.desc(), th.network, th.address)).all())
        return [(r.network, r.address, r.failures, r.locked_until) for r in rows]

    async def log_attempt(self, event: str, *, address: str, network: str, client_ip: str,
                          protocol: str, detail: str = "", bucket: float = 60.0) -> None:
        """One activity row per (event, network, address, ``bucket`` seconds) with a
        count, instead of one row per attempt."""
        a = t.activity.c
        now = self.clock()
        start = now - now % bucket
        key = address.lower()
        async with self._write() as (conn, _):
            res = await conn.execute(update(t.activity).where(and_(
                a.event == event, a.network == network, a.address == key,
                a.at >= start, a.at < start + bucket)).values(
                count=a.count + 1, at=now, client_ip=client_ip, protocol=protocol))
            if not res.rowcount:
                await conn.execute(insert(t.activity).values(
                    at=now, address=key, client_ip=client_ip, protocol=protocol,
                    event=event, detail=detail, network=network, count=1))

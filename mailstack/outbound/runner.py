"""The queue runner: claims due rows, delivers them per destination with connection
reuse, records every attempt, sends reports (docs/behaviour.md §6).

Implementation notes (invariants):
- Rows are claimed with a lease (``Store.claim_due``); every node may run a runner.
  Within one process passes are serialised (``run_once`` holds a lock), so a test or
  the CLI may call ``run_once`` while the background loop runs.
- A pass groups the claimed rows by destination (the domain, or the transport route
  shared by several domains), and each destination's messages go over at most
  ``max_connections_per_destination`` connections (``max_connections`` over all), each
  carrying up to ``max_messages_per_connection`` messages (RSET in between).
- The rows of one acceptance going to one destination travel as ONE transaction with
  several RCPTs; each recipient gets its own outcome (the RCPT refusal or the reply to
  the final dot).
- An outcome is written right after its transaction, before the next message: a crash
  loses at most the knowledge of one transaction (the row is retried: a duplicate is
  possible, a loss is not).
- Any failure of a connection (timeout, reset, garbage, a message file that cannot be
  read mid-DATA: then the dot is never sent) defers only the rows concerned.
- The TLS requirement per MX host comes from ``tls_policy`` (DANE/MTA-STS decide
  elsewhere); the client executes it (``transport.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .. import metrics
from ..config import Settings
from ..store import Store
from ..store.queue import Outcome, QueueRow
from .client import Session, SmtpError, Timeouts, TlsFailed, open_session
from .decide import AttemptResult, Schedule, decide, wants_delay_notice
from .reports import send_delay_notice, send_reports
from .routing import (
    DnsNoDomain,
    DnsResolver,
    DnsTemporary,
    Resolver,
    Route,
    RouteFailure,
    addresses_of,
    resolve_route,
)
from .smtpproto import Envelope, Reply, has_controls, needs_smtputf8
from .transport import OPPORTUNISTIC, TlsRequirement

log = logging.getLogger("mailstack.outbound")

TlsPolicy = Callable[[str, str, bool], Awaitable[TlsRequirement]]
MessageGroup = list[QueueRow]


def security_note(result: AttemptResult) -> str:
    """" via HOST (policy dane, TLSv1.3, peer authenticated)" for the delivery log."""
    if not result.remote_mta:
        return ""
    parts = [f"policy {result.tls_policy}"] if result.tls_policy else []
    parts.append(result.tls.split(" ")[0] if result.tls else "no TLS")
    if result.tls:
        parts.append("peer authenticated" if result.authenticated
                     else "peer not authenticated")
    return f" via {result.remote_mta} ({', '.join(parts)})"


async def opportunistic(_domain: str, _mx_host: str, _mx_secure: bool) -> TlsRequirement:
    return OPPORTUNISTIC


class RouteUnusable(Exception):
    """No server of the route could be reached (``result`` says why)."""

    def __init__(self, result: AttemptResult) -> None:
        super().__init__(result.text)
        self.result = result


class QueueRunner:
    def __init__(self, store: Store, settings: Settings, *, resolver: Resolver | None = None,
                 clock: Callable[[], float] = time.time, rand: random.Random | None = None,
                 tls_policy: TlsPolicy = opportunistic, node: str | None = None) -> None:
        self.store = store
        self.settings = settings
        o = self.o = settings.outbound
        self.hostname = settings.server.hostname
        self.helo = o.helo_name or self.hostname
        self.resolver: Resolver = resolver or DnsResolver(
            o.dns_timeout_seconds, settings.outbound_tls.dns_resolver)
        self.clock = clock
        self.rand = rand or random.Random()
        self.tls_policy = tls_policy
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{store.node_id[:8]}"
        self.timeouts = Timeouts.from_settings(o)
        self.schedule = Schedule(o.retry_schedule(), o.retry_min_hours * 3600,
                                 o.retry_max_hours * 3600)
        # For metrics: attempts, outcomes ("delivered", "deferred", "failed", "expired"),
        # "reports", "delay_notices", "connections" since start.
        self.counters: Counter[str] = Counter()
        self._connections = asyncio.Semaphore(o.max_connections)
        self._pass_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[int] = set()
        self._last_prune = 0.0
        self._finish_queue: list[tuple[list[Outcome], asyncio.Future[None]]] = []
        self._finisher: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._finisher is not None:  # outcomes already decided still get written
            with contextlib.suppress(Exception):
                await self._finisher
        if self._in_flight:  # interrupted attempts: due again at once, here or elsewhere
            with contextlib.suppress(Exception):
                await self.store.release(self.node, list(self._in_flight))
            self._in_flight.clear()

    def wake(self) -> None:
        self.store.queue_wakeup.set()

    async def _loop(self) -> None:
        wakeup = self.store.queue_wakeup
        while True:
            wakeup.clear()
            try:
                await self.run_once()
            except Exception:
                log.exception("outbound: queue pass failed; trying again later")
            idle = await self._idle_time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), idle)

    async def _idle_time(self) -> float:
        wait = self.o.poll_interval_seconds
        with contextlib.suppress(Exception):
            due = await self.store.next_due()
            if due is not None:
                wait = min(wait, max(0.0, due - self.clock()))
        return max(wait, 0.01)

    # --- one pass --------------------------------------------------------------------
    async def run_once(self) -> int:
        """Deliver every due row, then send the reports owed. Returns rows attempted."""
        async with self._pass_lock:
            done = 0
            while True:
                rows = await self.store.claim_due(self.node, self.o.lease_seconds,
                                                  self.o.batch_size)
                if not rows:
                    break
                self._in_flight.update(r.id for r in rows)
                await self._deliver(rows)
                done += len(rows)
                if len(rows) < self.o.batch_size:
                    break
            await self._reports()
            await self._prune()
            return done

    async def _reports(self) -> None:
        while True:
            rows = await self.store.claim_reports(self.node, self.o.lease_seconds,
                                                  self.o.batch_size)
            if not rows:
                return
            try:
                sent = await send_reports(self.store, rows, hostname=self.hostname,
                                          now=self.clock(), lifetime=self.o.lifetime_seconds)
            except Exception:
                log.exception("outbound: sending reports failed; retried later")
                await self.store.release(self.node, [r.id for r in rows])
                return
            self.counters["reports"] += sent
            await self.store.reports_done(self.node, [r.id for r in rows])

    async def _prune(self) -> None:
        now = self.clock()
        if now - self._last_prune < 3600:
            return
        self._last_prune = now
        removed = await self.store.prune_queue(now - self.o.keep_finished_seconds)
        if removed:
            log.info("outbound: %d finished queue rows removed", removed)

    async def _deliver(self, rows: Sequence[QueueRow]) -> None:
        by_domain: dict[str, list[QueueRow]] = {}
        for r in rows:
            by_domain.setdefault(r.domain, []).append(r)
        routes: dict[str, tuple[Route, list[QueueRow]]] = {}
        found = await asyncio.gather(*(
            resolve_route(domain, self.o.transport, self.resolver, self.rand, self.o.mx_port)
            for domain in by_domain))  # DNS lookups of all domains side by side
        for domain_rows, route in zip(by_domain.values(), found, strict=True):
            if isinstance(route, RouteFailure):
                result = AttemptResult(0, route.status, route.text,
                                       permanent=route.permanent)
                await self._record([(r, result) for r in domain_rows])
                continue
            key = route.key
            if key in routes:
                routes[key][1].extend(domain_rows)
            else:
                routes[key] = (route, list(domain_rows))
        await asyncio.gather(*(self._destination(route, dest_rows)
                               for route, dest_rows in routes.values()))

    async def _destination(self, route: Route, rows: list[QueueRow]) -> None:
        groups: dict[tuple[object, ...], MessageGroup] = {}
        for r in rows:
            groups.setdefault((*r.message_key, r.dsn_ret, r.dsn_envid, r.prefix),
                              []).append(r)
        pending: deque[MessageGroup] = deque(groups.values())
        workers = min(self.o.max_connections_per_destination, len(pending))
        await asyncio.gather(*(self._worker(route, pending) for _ in range(workers)))

    async def _worker(self, route: Route, pending: deque[MessageGroup]) -> None:
        session: Session | None = None
        async with self._connections:
            try:
                while pending:
                    if session is not None and (
                            session.broken
                            or session.messages >= self.o.max_messages_per_connection):
                        await session.quit()
                        session = None
                    if session is None:
                        try:
                            session = await self._connect(route, pending[0][0].domain)
                        except RouteUnusable as exc:
                            stuck = list(pending)
                            pending.clear()
                            await self._record([(r, exc.result) for g in stuck for r in g])
                            return
                    group = pending.popleft()
                    await self._send(session, group)
            except BaseException:
                if session is not None:
                    session.abort()
                    session = None
                raise
            finally:
                if session is not None:
                    await session.quit()

    async def _connect(self, route: Route, domain: str) -> Session:
        last = AttemptResult(0, "4.4.1", f"no server of {route.key} could be reached")
        addressless = 0
        auth = None
        if route.auth_user:
            try:
                text = await asyncio.to_thread(Path(route.auth_password_file).read_text)
                password = text.splitlines()[0]
            except (OSError, IndexError) as exc:
                raise RouteUnusable(AttemptResult(
                    0, "4.7.0", f"cannot read the relay password file: {exc}")) from exc
            auth = (route.auth_user, password)
        for hop in route.hops:
            try:
                addresses = await addresses_of(hop, self.resolver)
            except DnsTemporary as exc:
                last = AttemptResult(0, "4.4.3", f"DNS lookup of {hop.host} failed: {exc}")
                continue
            except DnsNoDomain:
                addresses = []
            if not addresses:
                addressless += 1
                last = AttemptResult(0, "4.4.4", f"{hop.host} has no address records")
                continue
            tls = await self.tls_policy(domain, hop.host, hop.mx_secure)
            if tls.defer_reason:  # TLSA lookup failed / not in the MTA-STS policy
                last = AttemptResult(0, "4.7.5", tls.defer_reason, remote_mta=hop.host,
                                     tls_policy=tls.policy)
                continue
            if route.require_tls and not tls.require_tls:
                tls = replace(tls, require_tls=True,
                              policy="required" if tls.policy == "opportunistic"
                              else tls.policy)
            for address in addresses:
                try:
                    return await self._open(hop.host, address, hop.port, tls, auth)
                except SmtpError as exc:
                    log.info("outbound: %s", exc)
                    last = AttemptResult(exc.reply.code if exc.reply else 0, exc.status,
                                         str(exc), remote_mta=hop.host,
                                         tls_policy=tls.policy)
                    if last.code >= 500:  # one server's 5xx greeting: try the next
                        last = replace(last, code=0)
        if route.implicit and addressless == len(route.hops):
            # RFC 5321 §5.1: no MX and no address records: the domain takes no mail.
            last = AttemptResult(0, "5.1.2", f"{domain} has neither MX nor address "
                                 "records", permanent=True)
        raise RouteUnusable(last)

    async def _open(self, host: str, address: str, port: int, tls: TlsRequirement,
                    auth: tuple[str, str] | None) -> Session:
        self.counters["connections"] += 1
        try:
            return await open_session(host, address, port, helo=self.helo, tls=tls,
                                      timeouts=self.timeouts, auth=auth)
        except TlsFailed as exc:
            if tls.require_tls:
                raise
            log.info("outbound: %s; trying again without STARTTLS", exc)
            return await open_session(host, address, port, helo=self.helo, tls=tls,
                                      timeouts=self.timeouts, auth=auth,
                                      use_starttls=False)

    async def _send(self, session: Session, group: MessageGroup) -> None:
        first = group[0]
        caps = session.caps
        base = AttemptResult(0, "4.0.0", "", remote_mta=session.remote_mta, tls=session.tls,
                             tls_policy=session.policy, authenticated=session.authenticated,
                             dsn_relayed=caps.dsn)
        bad = [r for r in group if has_controls(r.recipient) or has_controls(r.sender)
               or has_controls(r.dsn_orcpt)]
        if bad:  # never written into a command (header/command injection)
            await self._record([(r, replace(
                base, code=0, status="5.1.3", permanent=True,
                text="control character in an envelope address")) for r in bad])
            group = [r for r in group if r not in bad]
            if not group:
                return
            first = group[0]
        utf8 = needs_smtputf8([first.sender, *(r.recipient for r in group)])
        if utf8 and not caps.smtputf8:  # RFC 6531 §3.4: no downgrade of addresses
            await self._record([(r, replace(
                base, code=0, status="5.6.7", permanent=True,
                text=f"{session.remote_mta} does not support SMTPUTF8, needed for the "
                     "address")) for r in group])
            return
        if caps.size and first.size > caps.size:
            await self._record([(r, replace(
                base, code=0, status="5.3.4", permanent=True,
                text=f"message size {first.size} exceeds the limit {caps.size} of "
                     f"{session.remote_mta}")) for r in group])
            return
        env = Envelope(first.sender, tuple(r.recipient for r in group), first.size,
                       eightbit=True, smtputf8=utf8, ret=first.dsn_ret,
                       envid=first.dsn_envid, notify=tuple(r.dsn_notify for r in group),
                       orcpt=tuple(r.dsn_orcpt for r in group))
        try:
            results = await session.send(env, self.store.queue_chunks(first))
        except SmtpError as exc:
            session.broken = True
            await self._record([(r, replace(base, status=exc.status, text=str(exc)))
                                for r in group])
            return
        except Exception as exc:  # e.g. the message file unreadable mid-DATA
            log.exception("outbound: sending to %s failed", session.remote_mta)
            session.broken = True  # the dot was not sent: nothing was delivered
            await self._record([(r, replace(base, status="4.3.0", text=f"local error: "
                                            f"{exc}")) for r in group])
            return
        await self._record([(r, self._from_reply(base, results.get(i)))
                            for i, r in enumerate(group)])

    async def _finish(self, outcomes: list[Outcome]) -> None:
        """Write outcomes; those of concurrent connections share one transaction (one
        commit), each caller returning only after the commit holding its rows."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._finish_queue.append((outcomes, fut))
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.create_task(self._flush_finishes())
        await fut

    async def _flush_finishes(self) -> None:
        while self._finish_queue:
            batch, self._finish_queue = self._finish_queue, []
            try:
                await self.store.finish(self.node, [o for outs, _ in batch for o in outs])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    @staticmethod
    def _from_reply(base: AttemptResult, reply: Reply | None) -> AttemptResult:
        if reply is None:
            return replace(base, status="4.4.2", text="no reply for this recipient")
        return replace(base, code=reply.code, status=reply.enhanced, text=str(reply))

    async def _record(self, results: Sequence[tuple[QueueRow, AttemptResult]]) -> None:
        now = self.clock()
        outcomes: list[Outcome] = [decide(row, result, now=now, schedule=self.schedule,
                                          rand=self.rand) for row, result in results]
        await self._finish(outcomes)
        for (row, result), out in zip(results, outcomes, strict=True):
            self._in_flight.discard(row.id)
            self.counters["deferred" if out.state == "queued" else out.state] += 1
            self.counters["attempts"] += 1
            metrics.delivery({"queued": "deferred", "delivered": "delivered"}.get(
                out.state, "bounced"))
            log.info("outbound: %s <%s> -> <%s>: %s %s%s", out.state, row.sender,
                     row.recipient, out.status, out.error, security_note(result))
        waiting: dict[tuple[str, str, float], list[QueueRow]] = {}
        for (row, _), out in zip(results, outcomes, strict=True):
            if out.state == "queued":
                waiting.setdefault(row.message_key, []).append(row)
        for key, rows in waiting.items():
            if wants_delay_notice(rows, now=now, after=self.o.delay_notice_after_seconds):
                if await send_delay_notice(self.store, key, hostname=self.hostname, now=now,
                                           lifetime=self.o.lifetime_seconds):
                    self.counters["delay_notices"] += 1

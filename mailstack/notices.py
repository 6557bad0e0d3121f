"""Security notices mailed to an address (docs/behaviour.md §2).

- A successful login from a network never seen for the address (not the first login
  ever: that one sets the baseline).
- Failed password attempts: at most one notice per address per
  ``auth.failed_notice_interval_seconds`` (default one hour), whatever the concurrency:
  ``Store.claim_failed_notice`` decides and records it (in the activity log) in one
  transaction holding the address's row, so the limit holds across restarts, processes
  and nodes.

A notice goes to the address's INBOX and to the login address of every user granted
access to it when that login is elsewhere (hosted here: its INBOX; otherwise the
outbound queue). Notices are ``Auto-Submitted: auto-generated`` (RFC 3834 §5) with a
null return path, so autoresponders never answer them.

Storage warnings (docs/behaviour.md §3): when a delivery or an APPEND/COPY takes an
address's storage past ``[quota] warning_percent`` of its plan's storage quota, one
warning goes to that address's INBOX. The store claims it with one conditional UPDATE
(concurrent deliveries: exactly one wins); deleting mail below
``warning_rearm_percent`` re-arms it.

Sending runs in the background: a login reply or a 250 never waits for it. ``drain()``
waits for pending notices (tests, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .config import AuthSettings, PlanSettings, QuotaSettings
from .headerkeys import header_keys_async
from .policy.quota import warning_due, warning_levels
from .store import DeliveryTarget, Store

log = logging.getLogger("mailstack.notices")

HEADROOM_SECONDS = 60.0  # how long a looked-up distance to the warning level is trusted
HEADROOM_MARGIN = 4096  # counted per stored message beyond its size (per-copy headers)


def compose_notice(*, hostname: str, to: str, subject: str, body: str, now: float,
                   from_name: str = "Mail security") -> bytes:
    """A plain-text notice. Only ASCII header values; the body is UTF-8."""
    headers = [
        f"From: {from_name} <postmaster@{hostname}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now, usegmt=True)}",
        f"Message-ID: <{uuid.uuid4().hex}@{hostname}>",
        "Auto-Submitted: auto-generated",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    text = body.replace("\r\n", "\n").replace("\n", "\r\n")
    return ("\r\n".join(headers) + "\r\n\r\n" + text + "\r\n").encode()


def _mib(octets: int) -> str:
    return f"{octets / (1 << 20):.1f} MiB"


def _when(now: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))


class Notifier:
    def __init__(self, store: Store, hostname: str, settings: AuthSettings,
                 clock: Callable[[], float] = time.time, *,
                 quota: QuotaSettings | None = None,
                 plan_of: Callable[[str], PlanSettings] | None = None) -> None:
        self.store = store
        self.hostname = hostname
        self.settings = settings
        self.clock = clock
        self.quota = quota or QuotaSettings()
        self.plan_of = plan_of
        # address -> (until, octets left below the warning level), see after_storing
        self._headroom: dict[str, tuple[float, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def login_from_new_network(self, address_id: int, email_addr: str, client_ip: str,
                               protocol: str) -> None:
        if self.settings.notify_new_network:
            self._spawn(self._new_network(address_id, email_addr, client_ip, protocol))

    def failed_login(self, address_id: int, email_addr: str, client_ip: str,
                     protocol: str) -> None:
        if self.settings.notify_failed_logins:
            self._spawn(self._failed(address_id, email_addr, client_ip, protocol))

    def after_storing(self, emails: Sequence[str], size: int) -> None:
        """``size`` octets were stored for each of these addresses (delivery, APPEND,
        COPY): send the storage warning to each one that just went past its level.
        Never raises, never waits.

        The store is asked only when an address may be near its level: after each look
        the octets left below it are remembered for ``HEADROOM_SECONDS`` and counted
        down by what this process stores (with a margin), so a mailbox far from full
        costs one query per minute, not one per delivery. Stores by other processes
        are seen at the latest when the remembered figure expires."""
        if not (self.quota.warning_percent and self.plan_of is not None and emails):
            return
        now = self.clock()
        cost = size + HEADROOM_MARGIN
        due = []
        for email_addr in emails:
            key = email_addr.lower()
            left = self._headroom.get(key)
            if left is not None and left[0] > now and left[1] > cost:
                self._headroom[key] = (left[0], left[1] - cost)
                continue
            self._headroom.pop(key, None)
            due.append(email_addr)
        if due:
            self._spawn(self._storage_warnings(due))

    def _remember(self, email_addr: str, left: float) -> None:
        if len(self._headroom) >= 100_000:
            self._headroom.clear()
        self._headroom[email_addr.lower()] = (self.clock() + HEADROOM_SECONDS, left)

    async def _storage_warnings(self, emails: list[str]) -> None:
        assert self.plan_of is not None
        for email_addr in emails:
            try:
                state = await self.store.storage_state(email_addr)
                if state is None:
                    continue
                address_id, plan, used, armed = state
                quota = self.plan_of(plan).storage_quota
                levels = warning_levels(quota, self.quota.warning_percent,
                                        self.quota.warning_rearm_percent)
                # what must be added before a warning can be due: up to the level, or
                # once warned, from below the re-arm level up to it again (deletes in
                # between only make that more)
                if levels is None:
                    self._remember(email_addr, math.inf)
                    continue
                self._remember(email_addr, levels.over - used if armed and used <= levels.over
                               else levels.over - levels.rearm)
                if not warning_due(used, levels, armed):
                    continue
                if not await self.store.claim_quota_warning(address_id, levels.over,
                                                            levels.rearm):
                    continue  # another delivery sent it
                addr = await self.store.get_address_by_id(address_id)
                if addr is None:
                    continue
                body = (f"Your mailbox {addr.email} uses {_mib(used)} of its "
                        f"{_mib(quota)} ({used * 100 // quota} %).\n\nWhen it is full, new "
                        "mail to it is refused (senders are told to try again later) "
                        "and messages cannot be saved to it. Delete messages you no longer "
                        "need, and empty the Trash and Junk folders, to make room.\n\n"
                        "You get this warning once; another one only after the usage has "
                        f"dropped below {self.quota.warning_rearm_percent} % and risen "
                        "again.\n")
                data = compose_notice(hostname=self.hostname, to=addr.email,
                                      subject="Your mailbox is almost full", body=body,
                                      now=self.clock(), from_name="Mail storage")
                await self._deliver(addr.email, data)
                log.info("storage warning sent to %s (%d of %d octets)", addr.email, used,
                         quota)
            except Exception:  # a warning must never break a delivery
                log.exception("storage warning for %s failed", email_addr)

    async def _new_network(self, address_id: int, email_addr: str, client_ip: str,
                           protocol: str) -> None:
        now = self.clock()
        body = (f"Your mailbox {email_addr} was just signed in to from a network it has "
                f"not used before.\n\n  When:     {_when(now)}\n  From:     {client_ip}\n"
                f"  Protocol: {protocol.upper()}\n\nIf this was you (a new phone, another "
                "Wi-Fi), there is nothing to do.\nIf not, change the password of this "
                "address now: every open session is closed when it changes.\n")
        await self._send(address_id, email_addr, "New sign-in to your mailbox", body,
                         "notice_new_network")

    async def _failed(self, address_id: int, email_addr: str, client_ip: str,
                      protocol: str) -> None:
        now = self.clock()
        try:
            # decided and recorded in one transaction: one notice per interval however
            # many failures arrive at once, on however many processes
            won = await self.store.claim_failed_notice(
                address_id, email_addr, self.settings.failed_notice_interval_seconds)
        except Exception:  # a notice must never break a login
            log.exception("security notice for %s failed", email_addr)
            return
        if not won:
            return
        body = (f"Someone tried to sign in to {email_addr} with a wrong password.\n\n"
                f"  When:     {_when(now)}\n  From:     {client_ip}\n"
                f"  Protocol: {protocol.upper()}\n\nRepeated attempts are slowed down and "
                "then refused for a while. If these attempts were not yours, choose a "
                "strong password. You get at most one such notice per hour.\n")
        await self._send(address_id, email_addr, "Failed sign-in attempts on your mailbox",
                         body, None)

    async def _send(self, address_id: int, email_addr: str, subject: str, body: str,
                    event: str | None) -> None:
        """Deliver a notice; ``event``: the activity entry to log (None: already logged
        by the claim that decided to send it)."""
        try:
            if event is not None:
                await self.store.log_activity(event, address=email_addr, protocol="notice")
            recipients = [email_addr]
            for login, _perms in await self.store.grants_for_address(address_id):
                if login.lower() != email_addr.lower() and "@" in login:
                    recipients.append(login)
            for rcpt in recipients:
                data = compose_notice(hostname=self.hostname, to=email_addr,
                                      subject=subject, body=body, now=self.clock())
                await self._deliver(rcpt, data)
        except Exception:  # a notice must never break a login
            log.exception("security notice for %s failed", email_addr)

    async def _deliver(self, rcpt: str, data: bytes) -> None:
        target = await self.store.get_address(rcpt)
        prefix = f"Return-Path: <>\r\nDelivered-To: {rcpt}\r\n".encode()
        if target is not None:
            inbox = await self.store.get_folder(target.id, "INBOX")
            if inbox is None:  # a no-reply address keeps no mail
                return
            blob = await self.store.put_blob(data)
            await self.store.deliver(blob, len(data), [DeliveryTarget(
                inbox.id, prefix, keys=await header_keys_async(data))])
        elif await self.store.get_domain(rcpt.rpartition("@")[2]) is None:
            blob = await self.store.put_blob(data)
            await self.store.enqueue("", [rcpt], blob, len(data))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class UserNotices:
    """Security notices about a user's own sign-in to the web pages, mailed to the
    user's login when it is an email address (hosted here: its INBOX; elsewhere: the
    outbound queue). Same format and background sending as ``Notifier``."""

    def __init__(self, notifier: Notifier) -> None:
        self.n = notifier

    def signin_from_new_network(self, login: str, client_ip: str) -> None:
        if self.n.settings.notify_new_network:
            self.n._spawn(self._send(
                login, "New sign-in to your mail account",
                f"Your account {login} was just signed in to on the web pages from a "
                f"network it has not used before.\n\n  When:     {_when(self.n.clock())}\n"
                f"  From:     {client_ip}\n  Protocol: HTTPS\n\nIf this was you, there is "
                "nothing to do.\nIf not, change your password now: every browser signed "
                "in to your account is signed out when it changes.\n",
                "notice_new_network"))

    def emergency_code_used(self, login: str, client_ip: str, left: int) -> None:
        self.n._spawn(self._send(
            login, "An emergency code was used to sign in",
            f"One of the emergency codes of your account {login} was just used to sign "
            f"in.\n\n  When:     {_when(self.n.clock())}\n  From:     {client_ip}\n\n"
            f"That code no longer works; {left} unused codes are left. If this was not "
            "you, change your password and ask support to reset two-factor.\n",
            "notice_emergency_code"))

    async def _send(self, login: str, subject: str, body: str, event: str) -> None:
        try:
            await self.n.store.log_activity(event, address=login, protocol="notice")
            if "@" not in login:
                return
            data = compose_notice(hostname=self.n.hostname, to=login, subject=subject,
                                  body=body, now=self.n.clock())
            await self.n._deliver(login, data)
        except Exception:  # a notice must never break a sign-in
            log.exception("security notice for user %s failed", login)

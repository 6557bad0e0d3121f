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

Sending runs in the background: a login reply never waits for it. ``drain()`` waits for
pending notices (tests, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from .config import AuthSettings
from .store import DeliveryTarget, Store

log = logging.getLogger("mailstack.notices")


def compose_notice(*, hostname: str, to: str, subject: str, body: str, now: float) -> bytes:
    """A plain-text notice. Only ASCII header values; the body is UTF-8."""
    headers = [
        f"From: Mail security <postmaster@{hostname}>",
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


def _when(now: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))


class Notifier:
    def __init__(self, store: Store, hostname: str, settings: AuthSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.hostname = hostname
        self.settings = settings
        self.clock = clock
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
            await self.store.deliver(blob, len(data), [DeliveryTarget(inbox.id, prefix)])
        elif await self.store.get_domain(rcpt.rpartition("@")[2]) is None:
            blob = await self.store.put_blob(data)
            await self.store.enqueue("", [rcpt], blob, len(data))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

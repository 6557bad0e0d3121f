"""Out-of-office replies after local delivery (docs/behaviour.md §7, RFC 3834).

``Autoresponder.after_delivery`` is called by the SMTP acceptance AFTER the delivery's
commit; it only starts a background task, so it can neither delay nor fail the ``250``.
The task, for each final mailbox with an active responder:

1. gathers the facts (header fields, return path, the address and its aliases, whether
   the mailbox was reached only through its catchall) and asks the pure rules
   (``policy.autoresponder.decide``) without the throttle: most mail stops here
   (lists, bulk, reports, Bcc) without a write;
2. builds the reply (``outbound.autoreply``) and stores its blob;
3. decides again inside the store's write transaction that records the reply in the
   throttle (``Store.claim_autoreply``): two deliveries from one sender arriving
   together produce one reply, on any number of nodes;
4. delivers the reply with an empty envelope sender (RFC 3834 §3.3), routed like any
   recipient: hosted addresses get it in their INBOX at once, others through the
   outbound queue. Replies do not count against the daily sending limit (no send-log
   entry); the per-address hourly cap (``autoresponder.max_replies_per_hour``) limits
   them instead.

The alternate From is checked again here (the address may have lost the right to use
it since it was saved): if it is no longer allowed the reply goes out from the address
itself, and the log says so.

Failures are logged and swallowed: a reply is never worth a failed delivery. ``drain()``
waits for pending replies (tests, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.header
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from .config import AutoresponderSettings
from .headerkeys import header_keys_async
from .outbound.autoreply import ReplyFacts, build_reply
from .policy.autoresponder import (
    DAY,
    AutoreplyVerdict,
    MessageFacts,
    ThrottleRules,
    decide,
    message_facts,
)
from .policy.envelope import AddressError, parse_mailbox
from .policy.headers import delivered_to_header, return_path_header
from .policy.relay import AddressFacts, AliasFacts, address_key, route_recipient
from .store import Address, AutoResponder, NotFound, Store

log = logging.getLogger("mailstack.autoreply")

MAX_CONCURRENT = 8  # reply tasks doing store work at once (the rest wait their turn)
PRUNE_EVERY = 3600.0
INLINE_HEADER_PARSE = 16 * 1024  # bigger header blocks are parsed in a thread


async def sendable_as(store: Store, email_addr: str) -> tuple[str, ...]:
    """What ``email_addr`` may send as (docs/behaviour.md §4): itself, the aliases
    pointing to it, and addresses granted with ``send`` to a user whose login it is.
    The same rule as the SMTP sender check."""
    found = [email_addr]
    found += [a.key for a in await store.aliases_pointing_to(email_addr)]
    found += await store.addresses_granted_to(email_addr, "send")
    return tuple(dict.fromkeys(found))


async def from_allowed(store: Store, email_addr: str, candidate: str) -> bool:
    key = address_key(candidate)
    return key is not None and key in {address_key(a) or a.lower()
                                       for a in await sendable_as(store, email_addr)}


class _Directory:
    """``relay.Directory`` over the store, to route a reply like any recipient."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def domain_exists(self, domain: str, /) -> bool:
        return await self.store.get_domain(domain) is not None

    async def get_address(self, key: str, /) -> AddressFacts | None:
        return await self.store.get_address(key)

    async def get_alias(self, key: str, /) -> AliasFacts | None:
        return await self.store.get_alias(key)

    async def catchall_for(self, domain: str, /) -> AddressFacts | None:
        return await self.store.catchall_for(domain)


MAX_HEADER_BLOCK = 1024 * 1024  # far above smtp.max_header_bytes; a bound, not a limit


def header_block(content: bytes) -> bytes:
    """The header section (up to the empty line), at most ``MAX_HEADER_BLOCK`` octets."""
    end = content.find(b"\r\n\r\n", 0, MAX_HEADER_BLOCK)
    return content[:MAX_HEADER_BLOCK] if end < 0 else content[:end + 2]


def decoded(value: str | None) -> str | None:
    """A header value with RFC 2047 encoded words decoded (as written if they are bad)."""
    if value is None:
        return None
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


# Another process's responder change reaches deliveries within this many seconds.
ACTIVE_KEYS_TTL = 1.0


class Autoresponder:
    def __init__(self, store: Store, settings: AutoresponderSettings, hostname: str,
                 clock: Callable[[], float] = time.time, *,
                 make_id: Callable[[], str] = lambda: uuid.uuid4().hex,
                 signer: Callable[[bytes], Awaitable[bytes]] | None = None) -> None:
        """``await signer(message)`` gives the header lines (DKIM-Signature) put in
        front of replies that leave for the internet (the queued copies' prefix), e.g.
        ``DkimSigner(store).sign``; None: replies go out unsigned."""
        self.store = store
        self.settings = settings
        self.hostname = hostname
        self.clock = clock
        self.make_id = make_id
        self.signer = signer
        self.rules = ThrottleRules(window=settings.throttle_days * DAY,
                                   hourly_cap=settings.max_replies_per_hour,
                                   exclude_subdomains=settings.exclude_subdomains)
        self._tasks: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)
        self._last_prune = float("-inf")
        self._keys: frozenset[str] | None = None  # who has an active responder
        self._keys_at = 0.0
        self._keys_changes = -1

    # --- entry point ---------------------------------------------------------------
    def after_delivery(self, *, sender: str | None, content: bytes,
                       mailboxes: Sequence[str], catchall_only: Collection[str]) -> None:
        """Called after the delivery of ``content`` to ``mailboxes`` was committed.
        ``sender``: the envelope return path (None for ``<>``); ``catchall_only``: the
        mailboxes reached only through a catchall. Never raises, never waits."""
        if not self.settings.enabled or not mailboxes:
            return
        keys = self._fresh_keys()
        if keys is not None and not any(m.lower() in keys for m in mailboxes):
            return  # the usual case: nobody here is away; no task, no header scan
        try:
            task = asyncio.get_running_loop().create_task(self._run(
                sender, header_block(content), tuple(mailboxes), frozenset(catchall_only)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:  # never let a reply break a delivery
            log.exception("autoreply: could not start")

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _fresh_keys(self) -> frozenset[str] | None:
        """The cached set of who has an active responder while it is still valid (the
        same rule as ``_active_keys``), else None (a query is due)."""
        if (self._keys is None or self.store.autoresponder_changes != self._keys_changes
                or time.monotonic() - self._keys_at > ACTIVE_KEYS_TTL):
            return None
        return self._keys

    async def _active_keys(self) -> frozenset[str]:
        """Who has an active responder: one query per ``ACTIVE_KEYS_TTL`` seconds, and at
        once after this process changed a responder."""
        now = time.monotonic()
        changes = self.store.autoresponder_changes
        if (self._keys is None or changes != self._keys_changes
                or now - self._keys_at > ACTIVE_KEYS_TTL):
            self._keys_changes = changes  # read before the query: a change meanwhile
            self._keys = await self.store.active_autoresponder_keys()  # re-reads next time
            self._keys_at = now
        return self._keys

    # --- the work ------------------------------------------------------------------
    async def _run(self, sender: str | None, headers: bytes, mailboxes: tuple[str, ...],
                   catchall_only: frozenset[str]) -> None:
        try:
            async with self._limit:
                keys = await self._active_keys()
                mailboxes = tuple(m for m in mailboxes if m.lower() in keys)
                if not mailboxes:  # the usual case: no query per delivery
                    return
                active = await self.store.active_autoresponders(mailboxes)
                if not active:
                    return
                parsed = (_parse(headers) if len(headers) <= INLINE_HEADER_PARSE
                          else await asyncio.to_thread(_parse, headers))
                for key, responder in active:
                    try:
                        await self._answer(key, responder, parsed, sender,
                                           key in catchall_only)
                    except Exception:
                        log.exception("autoreply for %s failed", key)
                await self._maybe_prune()
        except Exception:
            log.exception("autoreply failed")

    async def _maybe_prune(self) -> None:
        now = self.clock()
        if now - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = now
        removed = await self.store.prune_autoreply_throttle(now - self.rules.window)
        if removed:
            log.info("autoreply: %d expired throttle records pruned", removed)

    async def _answer(self, key: str, responder: AutoResponder, headers: Message,
                      sender: str | None, via_catchall: bool) -> None:
        address = await self.store.get_address(key)
        if address is None:
            return
        own = [key, *(a.key for a in await self.store.aliases_pointing_to(address.email))]
        facts = message_facts(headers, sender, own, via_catchall=via_catchall)
        now = self.clock()
        first = decide(facts, responder, now=now, rules=self.rules)
        if not first.reply:
            self._note(key, facts, first)
            return
        data = await self._compose(address, responder, headers, facts)
        blob_id = await self.store.put_blob(data)

        def final(r: AutoResponder, last: float | None, recent: int) -> AutoreplyVerdict:
            return decide(facts, r, now=now, last_reply_at=last, replies_last_hour=recent,
                          rules=self.rules)

        claimed = await self.store.claim_autoreply(responder.id, facts.sender, final)
        if claimed is None:
            return
        verdict = claimed[1]
        self._note(key, facts, verdict)
        if verdict.reply:
            await self._deliver(facts.sender_raw, blob_id, data)

    def _note(self, key: str, facts: MessageFacts, verdict: AutoreplyVerdict) -> None:
        if verdict.reply:
            log.info("autoreply %s -> <%s>: sent", key, facts.sender)
        else:
            log.info("autoreply %s -> <%s>: not sent (%s: %s)", key, facts.sender,
                     verdict.reason, verdict.text)

    async def _compose(self, address: Address, responder: AutoResponder, headers: Message,
                       facts: MessageFacts) -> bytes:
        from_address, from_name = address.email, address.display_name
        if responder.from_address:
            if await from_allowed(self.store, address.email, responder.from_address):
                from_address, from_name = responder.from_address, ""
            else:
                log.warning("autoreply %s: alternate From <%s> no longer allowed; "
                            "replying from the address itself", address.email,
                            responder.from_address)
        data = build_reply(ReplyFacts(
            to=facts.sender_raw, from_address=from_address, from_name=from_name,
            subject=responder.subject, body=responder.body, html=responder.html,
            original_subject=decoded(_get(headers, "Subject")),
            original_message_id=_get(headers, "Message-ID"),
            original_references=_get(headers, "References"),
            date=self.clock(), message_id=f"<{self.make_id()}@{self.hostname}>"))
        return data

    async def _deliver(self, to: str, blob_id: str, data: bytes) -> None:
        try:
            rcpt = parse_mailbox(to, smtputf8=False)
        except AddressError:
            log.warning("autoreply: return path <%s> does not parse; not sent", to)
            return
        verdict = await route_recipient(rcpt, True, _Directory(self.store))
        if not verdict.accepted:
            log.info("autoreply to <%s> not delivered: %s", to, verdict.text)
            return
        prefix = return_path_header(None)
        remote_prefix = b""
        if verdict.remote and self.signer is not None:
            try:
                remote_prefix = await self.signer(data)
            except Exception:  # an unsigned reply beats none (DMARC may still pass SPF)
                log.exception("autoreply to <%s>: DKIM signing failed; sent unsigned", to)
        try:
            await self.store.accept_message(
                blob_id, len(data), sender="", remote=list(verdict.remote),
                remote_prefix=remote_prefix, at=self.clock(),
                inboxes=verdict.mailboxes, keys=await header_keys_async(data),
                inbox_prefix=lambda email_addr: prefix + delivered_to_header(email_addr))
        except NotFound:
            log.info("autoreply to <%s>: mailbox gone; not sent", to)


def _parse(headers: bytes) -> Message:
    return BytesHeaderParser(policy=compat32).parsebytes(headers)


def _get(headers: Message, name: str) -> str | None:
    """A header value as text; raw 8-bit bytes (RFC 6532 UTF-8 headers) are decoded as
    UTF-8 (the compat32 parser keeps them as surrogate escapes)."""
    want = name.lower()
    for key, value in headers.raw_items():
        if key.lower() == want:
            raw = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return " ".join(raw.split())  # unfolded
    return None

"""Recipient routing and sender authorisation (docs/behaviour.md §4, §5): facts in, verdicts out.

The policy asks the store only through the narrow async ``Directory`` protocol below
(four look-ups; the store's ``get_address`` / ``get_alias`` / ``catchall_for`` records
already satisfy the record protocols) and never touches SQL or sockets.

Invariants:
- No open relay: without authentication a recipient is accepted only if its domain is
  hosted (``Directory.domain_exists``); anything else is ``550 5.7.1`` whatever its
  spelling. The domain checked is ``EnvelopeAddress.domain``, which envelope.py
  guarantees is the only possible next hop (no ``%`` hack, no bang path, no route).
- Address literals (``user@[10.0.0.1]``) are never hosted and never accepted as
  destinations, even after AUTH: queueing to a literal would let any user make the
  queue connect to internal addresses. Refused with 550 5.7.1.
- Routing order for a hosted recipient (docs/behaviour.md §5): existing address -> alias ->
  catchall -> ``550 5.1.1`` at RCPT time. A no-reply address refuses with 550 5.7.1.
- Expansion (aliases, forwarding, catchall) visits each key once: a loop contributes
  nothing and cannot recurse; each final mailbox appears once. Chains deeper than
  ``max_depth`` are refused (550 5.4.6, RFC 3463 X.4.6 routing loop), fan-out past
  ``max_destinations`` too (550 5.3.0).
- Inside an expansion, a no-reply address, a nonexistent address (with no catchall),
  an address literal or a target string that does not parse is dropped; if nothing
  deliverable remains the recipient is refused (550 5.1.1). Store errors propagate:
  the SMTP layer answers ``451 4.3.0`` and nothing is accepted.
- Sender checks compare keys (case-insensitive local part, A-label domain).

Decision: a null reverse-path ``<>`` on submission is accepted (``allow_null_sender``)
because an MUA legitimately sends MDNs with ``MAIL FROM:<>`` (RFC 8098 §2.1, RFC 3798
§3) and client-side vacation replies (RFC 3834 §3.3); the ``From:`` header check still
applies to such a message, so the login cannot impersonate anyone with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .envelope import AddressError, EnvelopeAddress, parse_mailbox
from .replies import HasReply

__all__ = [
    "AddressFacts",
    "AddressInfo",
    "AliasFacts",
    "AliasInfo",
    "Destinations",
    "Directory",
    "RcptVerdict",
    "SenderVerdict",
    "address_key",
    "check_envelope_sender",
    "check_header_senders",
    "merge_destinations",
    "route_recipient",
]

NO_REPLY = "no-reply"


# --- what the policy needs from the store ---------------------------------------------


class AddressFacts(Protocol):
    """A hosted address (the store's ``Address`` record satisfies this)."""

    @property
    def key(self) -> str: ...
    @property
    def kind(self) -> str: ...  # "mailbox" | "no-reply" | "catchall"
    @property
    def forward_to(self) -> tuple[str, ...]: ...
    @property
    def keep_copy(self) -> bool: ...


class AliasFacts(Protocol):
    """An alias (the store's ``Alias`` record satisfies this)."""

    @property
    def key(self) -> str: ...
    @property
    def targets(self) -> tuple[str, ...]: ...


class Directory(Protocol):
    """The look-ups routing needs. Keys are ``EnvelopeAddress.key`` spellings."""

    async def domain_exists(self, domain: str, /) -> bool: ...
    async def get_address(self, key: str, /) -> AddressFacts | None: ...
    async def get_alias(self, key: str, /) -> AliasFacts | None: ...
    async def catchall_for(self, domain: str, /) -> AddressFacts | None: ...


@dataclass(frozen=True)
class AddressInfo:
    """A plain ``AddressFacts`` value (tests, adapters)."""

    key: str
    kind: str = "mailbox"
    forward_to: tuple[str, ...] = ()
    keep_copy: bool = True


@dataclass(frozen=True)
class AliasInfo:
    key: str
    targets: tuple[str, ...] = ()


# --- verdicts --------------------------------------------------------------------------


@dataclass(frozen=True)
class RcptVerdict(HasReply):
    accepted: bool
    code: int
    enhanced: str
    text: str
    mailboxes: tuple[str, ...] = ()  # final hosted mailbox keys, deduplicated
    remote: tuple[str, ...] = ()  # addresses to queue for the internet, deduplicated
    via_catchall: bool = False  # docs/behaviour.md §7: no autoreply for catchall deliveries


@dataclass(frozen=True)
class SenderVerdict(HasReply):
    allowed: bool
    code: int
    enhanced: str
    text: str


@dataclass(frozen=True)
class Destinations:
    mailboxes: tuple[str, ...]
    remote: tuple[str, ...]
    catchall_only: frozenset[str] = field(default_factory=frozenset)


def _refuse(code: int, enhanced: str, text: str) -> RcptVerdict:
    return RcptVerdict(False, code, enhanced, text)


# RFC 5321 §4.2.2 / RFC 3463 X.7.1: delivery not authorised.
RELAY_DENIED = "Relay access denied: authentication required to send to this domain"


# --- routing ---------------------------------------------------------------------------


class _TooDeep(Exception):
    pass


class _TooMany(Exception):
    pass


class _Expansion:
    def __init__(self, directory: Directory, max_depth: int, max_destinations: int) -> None:
        self.directory = directory
        self.max_depth = max_depth
        self.max_destinations = max_destinations
        self.seen: set[str] = set()
        self.mailboxes: dict[str, None] = {}
        self.remote: dict[str, str] = {}  # key -> address as written
        self.via_catchall = False

    def _count(self) -> None:
        if len(self.mailboxes) + len(self.remote) > self.max_destinations:
            raise _TooMany

    async def target(self, text: str, depth: int) -> None:
        """Resolve one alias/forwarding target string (local or remote)."""
        try:
            addr = parse_mailbox(text.strip().removeprefix("<").removesuffix(">"), smtputf8=True)
        except AddressError:
            return  # a broken stored target delivers nothing
        await self.resolve(addr, depth)

    async def resolve(self, addr: EnvelopeAddress, depth: int) -> None:
        if depth > self.max_depth:
            raise _TooDeep
        key = addr.key
        if key in self.seen:
            return  # loop or diamond: already handled once
        self.seen.add(key)
        if addr.is_literal:
            return
        if not await self.directory.domain_exists(addr.domain):
            self.remote.setdefault(key, str(addr))
            self._count()
            return
        found = await self.directory.get_address(key)
        if found is not None:
            await self.deliver(found, depth)
            return
        alias = await self.directory.get_alias(key)
        if alias is not None:
            for t in alias.targets:
                await self.target(t, depth + 1)
            return
        catchall = await self.directory.catchall_for(addr.domain)
        if catchall is not None and catchall.kind != NO_REPLY:
            self.via_catchall = True
            if catchall.key not in self.seen:
                self.seen.add(catchall.key)
                await self.deliver(catchall, depth + 1)

    async def deliver(self, found: AddressFacts, depth: int) -> None:
        self.seen.add(found.key)
        if found.kind == NO_REPLY:
            return
        if not found.forward_to or found.keep_copy:
            self.mailboxes.setdefault(found.key.lower(), None)
            self._count()
        for t in found.forward_to:
            await self.target(t, depth + 1)


async def route_recipient(
    rcpt: EnvelopeAddress,
    authenticated: bool,
    directory: Directory,
    *,
    max_depth: int = 8,
    max_destinations: int = 1000,
) -> RcptVerdict:
    """Decide one RCPT TO (docs/behaviour.md §4, §5). ``authenticated``: the session did AUTH."""
    if rcpt.is_literal:
        if not authenticated:
            return _refuse(550, "5.7.1", RELAY_DENIED)
        return _refuse(550, "5.7.1", "Address literals are not accepted as destinations")
    if not await directory.domain_exists(rcpt.domain):
        if not authenticated:
            return _refuse(550, "5.7.1", RELAY_DENIED)
        return RcptVerdict(True, 250, "2.1.5", "OK", remote=(str(rcpt),))

    found = await directory.get_address(rcpt.key)
    if found is not None and found.kind == NO_REPLY:
        return _refuse(550, "5.7.1", f"<{rcpt}> is a no-reply address and does not accept mail")
    exp = _Expansion(directory, max_depth, max_destinations)
    exp.seen.add(rcpt.key)
    try:
        if found is not None:
            await exp.deliver(found, 0)
        elif (alias := await directory.get_alias(rcpt.key)) is not None:
            for t in alias.targets:
                await exp.target(t, 1)
        else:
            catchall = await directory.catchall_for(rcpt.domain)
            if catchall is None or catchall.kind == NO_REPLY:
                return _refuse(550, "5.1.1", f"<{rcpt}>: no such user here")
            exp.via_catchall = True
            await exp.deliver(catchall, 1)
    except _TooDeep:
        return _refuse(550, "5.4.6", f"<{rcpt}>: alias or forwarding chain too deep (loop?)")
    except _TooMany:
        return _refuse(550, "5.3.0", f"<{rcpt}>: alias expands to too many destinations")
    if not exp.mailboxes and not exp.remote:
        return _refuse(550, "5.1.1", f"<{rcpt}>: address has no deliverable destination")
    return RcptVerdict(
        True,
        250,
        "2.1.5",
        "OK",
        mailboxes=tuple(exp.mailboxes),
        remote=tuple(exp.remote.values()),
        via_catchall=exp.via_catchall,
    )


def merge_destinations(verdicts: Iterable[RcptVerdict]) -> Destinations:
    """One copy per final mailbox and per remote address across all accepted RCPTs.

    ``catchall_only`` names the mailboxes reached *only* through a catchall (docs/behaviour.md §7:
    the autoresponder never answers those).
    """
    mailboxes: dict[str, None] = {}
    remote: dict[str, str] = {}
    direct: set[str] = set()
    caught: set[str] = set()
    for v in verdicts:
        if not v.accepted:
            continue
        for m in v.mailboxes:
            mailboxes.setdefault(m, None)
            (caught if v.via_catchall else direct).add(m)
        for r in v.remote:
            remote.setdefault(address_key(r) or r.lower(), r)
    return Destinations(tuple(mailboxes), tuple(remote.values()), frozenset(caught - direct))


# --- sender checks (docs/behaviour.md §4) ---------------------------------------------------------


def address_key(text: str) -> str | None:
    """The canonical key of an address string, or None if it does not parse."""
    try:
        return parse_mailbox(text.strip().removeprefix("<").removesuffix(">"), smtputf8=True).key
    except AddressError:
        return None


def _keys(allowed: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for a in allowed:
        out.add(address_key(a) or a.lower())
    return out


_OK = SenderVerdict(True, 250, "2.1.0", "OK")


def check_envelope_sender(
    sender: EnvelopeAddress | None, allowed: Iterable[str], *, allow_null_sender: bool = True
) -> SenderVerdict:
    """MAIL FROM after AUTH: ``allowed`` is every address the login may send as (its
    own, aliases pointing to it, granted addresses). Refusal: 553 5.7.1 (docs/behaviour.md §4)."""
    if sender is None:
        if allow_null_sender:
            return _OK
        return SenderVerdict(False, 553, "5.7.1", "Null sender <> not allowed on submission")
    if sender.key in _keys(allowed):
        return _OK
    return SenderVerdict(
        False, 553, "5.7.1", f"Sender address <{sender}> not allowed for this login"
    )


def check_header_senders(from_addresses: Sequence[str], allowed: Iterable[str]) -> SenderVerdict:
    """After DATA on submission: every ``From:`` address must be one the login may send
    as (docs/behaviour.md §4: 553 5.7.1). A message without any From: address is refused with
    550 5.6.0 (RFC 5322 §3.6 requires From:)."""
    if not from_addresses:
        return SenderVerdict(False, 550, "5.6.0", "Message has no From: address (RFC 5322 §3.6)")
    keys = _keys(allowed)
    for a in from_addresses:
        k = address_key(a)
        if k is None or k not in keys:
            shown = "".join(c if c.isprintable() else "?" for c in a)[:200]
            return SenderVerdict(
                False, 553, "5.7.1", f"From: address <{shown}> not allowed for this login"
            )
    return SenderVerdict(True, 250, "2.6.0", "OK")

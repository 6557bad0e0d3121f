"""Sending limits: recipients per message, daily recipients, connections per client.

Pure: counts, timestamps and a clock come in as parameters; verdicts come out.

Invariants:
- Recipient cap (docs/behaviour.md §4, RFC 5321 §4.5.3.1.10): the Nth accepted RCPT of a
  transaction is allowed while ``n <= cap``; past it ``452 4.5.3 Too many
  recipients``. 452 is temporary on purpose: the client sends the rest in another
  transaction, and the message still goes to the first ``cap`` recipients.
- Daily limit (docs/behaviour.md §4): a rolling window ``(now - 24h, now]``: a send exactly 24 h
  old no longer counts. Recipients are counted, not messages. When the limit is
  reached the refusal is ``450 4.7.1``: RFC 5321 §4.2.3 defines 450 for a mailbox
  "temporarily blocked for policy reasons" (RFC 3463 X.7.1 delivery not authorised),
  so clients keep the message and retry; the text says when sending resumes, in UTC.
  A partial allowance (``allowed < requested``) lets the first recipients through.
- Connection cap: ``ConnectionCounter`` counts open connections per client IP
  (IPv6 grouped by /64 by default: one host usually owns a whole /64); ``acquire``
  past the cap answers ``421 4.7.0`` and changes nothing; ``release`` never goes
  below zero and forgets idle clients, so memory stays bounded by open connections.
- Naive datetimes are taken as UTC; floats are POSIX timestamps (as the store keeps).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from .replies import HasReply

__all__ = [
    "ConnVerdict",
    "ConnectionCounter",
    "DailyVerdict",
    "RcptCapVerdict",
    "check_daily_limit",
    "check_recipient_cap",
    "format_utc",
]

DAY = timedelta(hours=24)


@dataclass(frozen=True)
class RcptCapVerdict(HasReply):
    allowed: bool
    code: int
    enhanced: str
    text: str


@dataclass(frozen=True)
class DailyVerdict(HasReply):
    allowed: int  # how many of the requested recipients may be sent now (0..requested)
    requested: int
    used: int  # recipients already sent in the window (plus ``pending``)
    limit: int
    resume_at: datetime | None  # when the next recipient may be sent, if refused
    code: int
    enhanced: str
    text: str

    @property
    def ok(self) -> bool:
        """All requested recipients may be sent."""
        return self.allowed >= self.requested


@dataclass(frozen=True)
class ConnVerdict(HasReply):
    allowed: bool
    code: int
    enhanced: str
    text: str


# --- recipients per message ----------------------------------------------------------


def check_recipient_cap(n: int, cap: int) -> RcptCapVerdict:
    """Verdict for the ``n``-th recipient (1-based) of a transaction under ``cap``.

    ``n`` counts recipients accepted so far plus this one (docs/behaviour.md §4: every envelope
    recipient, To, Cc and Bcc alike). RFC 5321 §4.5.3.1.10: 452 4.5.3 past the cap.
    """
    if n < 1:
        raise ValueError("n is 1-based")
    if n <= cap:
        return RcptCapVerdict(True, 250, "2.1.5", "OK")
    return RcptCapVerdict(False, 452, "4.5.3", f"Too many recipients (at most {cap} per message)")


# --- daily limit ---------------------------------------------------------------------


def _utc(t: datetime | float) -> datetime:
    if isinstance(t, datetime):
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return datetime.fromtimestamp(t, UTC)


def format_utc(t: datetime) -> str:
    """``2024-05-01 13:05:07 UTC``, rounded up to the whole second."""
    t = _utc(t)
    if t.microsecond:
        t = t.replace(microsecond=0) + timedelta(seconds=1)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def check_daily_limit(
    history: Iterable[tuple[datetime | float, int]],
    limit: int,
    now: datetime | float,
    requested: int = 1,
    *,
    pending: int = 0,
    window: timedelta = DAY,
) -> DailyVerdict:
    """How many of ``requested`` recipients may be sent now under ``limit`` per window.

    ``history``: past sends as (when, recipient count), any order, may include old
    entries. ``pending``: recipients already accepted in the current transaction and
    not yet in the history (call with ``requested=1, pending=k`` at the (k+1)-th RCPT).
    """
    if requested < 0 or pending < 0 or limit < 0:
        raise ValueError("counts must not be negative")
    now_dt = _utc(now)
    start = now_dt - window
    recent = sorted(
        (when, count)
        for when, count in ((_utc(w), c) for w, c in history)
        if start < when <= now_dt and count > 0
    )
    used = sum(c for _, c in recent) + pending
    free = max(0, limit - used)
    allowed = min(requested, free)
    if allowed >= requested:
        return DailyVerdict(allowed, requested, used, limit, None, 250, "2.1.5", "OK")
    # The next recipient may go once enough old sends leave the window that
    # used - expired < limit (pending ones never expire before the transaction ends).
    resume: datetime | None = None
    expired = 0
    for when, count in recent:
        expired += count
        if used - expired < limit:
            resume = when + window
            break
    when_text = (
        f"sending resumes at {format_utc(resume)}"
        if resume is not None
        else "sending resumes when this message is done"
    )
    if allowed:
        text = (
            f"Daily sending limit of {limit} recipients: only {allowed} more allowed now; "
            f"{when_text}"
        )
    else:
        text = f"Daily sending limit of {limit} recipients reached; {when_text}"
    return DailyVerdict(allowed, requested, used, limit, resume, 450, "4.7.1", text)


# --- connections per client ----------------------------------------------------------


class ConnectionCounter:
    """Open connections per client network; single event loop, no locking needed."""

    def __init__(self, per_client: int, *, ipv6_prefix: int = 64) -> None:
        if per_client < 1:
            raise ValueError("per_client must be at least 1")
        self.per_client = per_client
        self.ipv6_prefix = ipv6_prefix
        self._open: dict[str, int] = {}

    def client_key(self, ip: str) -> str:
        """IPv4 as is (IPv4-mapped IPv6 unwrapped), IPv6 by its /``ipv6_prefix``."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return ip  # a unix socket path or test name: counted as given
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            net = ipaddress.IPv6Network((addr, self.ipv6_prefix), strict=False)
            return str(net)
        return str(addr)

    def count(self, ip: str) -> int:
        return self._open.get(self.client_key(ip), 0)

    def acquire(self, ip: str) -> ConnVerdict:
        key = self.client_key(ip)
        n = self._open.get(key, 0)
        if n >= self.per_client:
            # RFC 5321 §3.8 / §4.2.3: 421 closes the channel; RFC 3463 X.7.0.
            return ConnVerdict(
                False, 421, "4.7.0", "Too many connections from your address, try again later"
            )
        self._open[key] = n + 1
        return ConnVerdict(True, 220, "2.0.0", "OK")

    def release(self, ip: str) -> None:
        key = self.client_key(ip)
        n = self._open.get(key, 0)
        if n <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = n - 1

    def __len__(self) -> int:
        return len(self._open)

"""Storage quotas (RFC 9208): may an address take more mail? Pure; no I/O.

Invariants:
- A limit of 0 means "no limit" for that resource.
- Storing is refused when the result would exceed a limit (IMAP APPEND/COPY:
  ``NO [OVERQUOTA]``); SMTP refuses a recipient already at or over a limit (the size of
  the coming message is not known at RCPT): ``452 4.2.2`` by default, ``552 5.2.2``
  when set permanent (RFC 3463 §3.3: X.2.2 mailbox full). Reading is never limited.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuotaVerdict:
    allowed: bool
    resource: str = ""  # "STORAGE" or "MESSAGE" when refused


def may_store(used_bytes: int, used_messages: int, add_bytes: int, add_messages: int,
              storage_quota: int, message_quota: int) -> QuotaVerdict:
    if storage_quota and used_bytes + add_bytes > storage_quota:
        return QuotaVerdict(False, "STORAGE")
    if message_quota and used_messages + add_messages > message_quota:
        return QuotaVerdict(False, "MESSAGE")
    return QuotaVerdict(True)


def rcpt_reply(key: str, used_bytes: int, used_messages: int, storage_quota: int,
               message_quota: int, permanent: bool) -> str | None:
    """The SMTP reply refusing a recipient whose mailbox is full, or None."""
    full = (storage_quota and used_bytes >= storage_quota) or (
        message_quota and used_messages >= message_quota)
    if not full:
        return None
    if permanent:
        return f"552 5.2.2 Mailbox full: <{key}> is over its storage quota"
    return f"452 4.2.2 Mailbox full: <{key}> is over its storage quota; try again later"


def usage_kib(octets: int) -> int:
    """RFC 9208 §5.1: STORAGE is counted in units of 1024 octets (rounded up)."""
    return (octets + 1023) // 1024


@dataclass(frozen=True)
class WarningLevels:
    """When a storage warning is due (docs/behaviour.md §3): usage above ``over``
    octets warns once; the warning is re-armed when usage drops below ``rearm``."""

    over: int
    rearm: int


def warning_levels(storage_quota: int, percent: int, rearm_percent: int
                   ) -> WarningLevels | None:
    """The octet levels of the storage warning for a plan, or None (no quota, or
    warnings off)."""
    if not storage_quota or not percent:
        return None
    over = storage_quota * percent // 100
    return WarningLevels(over, min(over, storage_quota * rearm_percent // 100))


def warning_due(used_bytes: int, levels: WarningLevels | None, armed: bool) -> bool:
    """Is a warning owed now? (The store then claims it atomically.)"""
    return levels is not None and armed and used_bytes > levels.over

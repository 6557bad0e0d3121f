"""QUOTA (RFC 9208): one quota root "" per address with the plan's limits, STORAGE
(in KiB) and MESSAGE resources; the usage comes from the store's counter.

Invariants:
- Limits are the plan's (``storage_quota``, ``message_quota``; 0 = no limit, and then
  the resource is not listed). SETQUOTA is refused: the plan decides.
- APPEND and COPY that would go over a limit get ``NO [OVERQUOTA]`` before anything is
  stored (``check``); MOVE within the account changes nothing and is allowed; reading
  is never limited.
"""

from __future__ import annotations

from mailstack.imap import respond
from mailstack.imap import types as t
from mailstack.imap.session import Session
from mailstack.policy.quota import may_store, usage_kib

ROOT = ""


async def quota_line(s: Session) -> bytes:
    used_bytes, used_msgs = await s.store.quota_usage(s.address_id)
    parts = []
    if s.plan.storage_quota:
        parts.append(f"STORAGE {usage_kib(used_bytes)} {usage_kib(s.plan.storage_quota)}")
    if s.plan.message_quota:
        parts.append(f"MESSAGE {used_msgs} {s.plan.message_quota}")
    return b'* QUOTA "" (' + " ".join(parts).encode() + b")\r\n"


async def check(s: Session, add_bytes: int, add_messages: int) -> None:
    """NO [OVERQUOTA] (RFC 9208 §4.6) if storing this much would exceed a limit."""
    if not s.plan.storage_quota and not s.plan.message_quota:
        return
    used_bytes, used_msgs = await s.store.quota_usage(s.address_id)
    verdict = may_store(used_bytes, used_msgs, add_bytes, add_messages,
                        s.plan.storage_quota, s.plan.message_quota)
    if not verdict.allowed:
        raise respond.No(f"Over quota ({verdict.resource})", "OVERQUOTA")


async def getquota(s: Session, c: t.GetQuota) -> str | None:
    if c.root != ROOT:
        raise respond.No(f"No such quota root: {c.root}", "NONEXISTENT")
    s.send(await quota_line(s))
    return None


async def getquotaroot(s: Session, c: t.GetQuotaRoot) -> str | None:
    if await s.store.get_folder(s.address_id, c.mailbox) is None:
        raise respond.No(f"No such mailbox: {c.mailbox}", "NONEXISTENT")
    s.send(b"* QUOTAROOT " + respond.mailbox(c.mailbox, s.utf8) + b' ""\r\n')
    s.send(await quota_line(s))
    return None


async def setquota(s: Session, c: t.SetQuota) -> str | None:
    raise respond.No("Quotas are set by the plan", "NOPERM")

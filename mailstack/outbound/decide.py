"""Pure delivery decisions: when to try again (RFC 5321 §4.5.4.1) and what one
attempt's result means for a queue row (docs/behaviour.md §6).

- A 2xx for a recipient: delivered. A report is owed only when the sender asked
  NOTIFY=SUCCESS and the next hop does not speak DSN (Action "relayed", RFC 3461
  §6.2.2); a DSN-capable next hop got the NOTIFY and reports itself.
- A 5xx (or a permanent routing verdict): failed at once; a report is owed unless the
  return path is empty or NOTIFY excludes FAILURE.
- A 4xx, a connection failure, a timeout, a DNS failure: wait per the schedule; the
  last attempt is made when the row's lifetime ends, and if that one fails too the row
  is given up ("expired", a report owed as for a failure).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..store.queue import Outcome, QueueRow
from .dsn import notify_wants


@dataclass(frozen=True)
class Schedule:
    steps: tuple[float, ...]  # seconds before attempt 2, 3, ... (after a failure)
    min_after: float  # then a random wait in [min_after, max_after]
    max_after: float

    def next_attempt(self, attempts_done: int, now: float, rand: random.Random) -> float:
        """When to try again after ``attempts_done`` attempts (>= 1)."""
        if attempts_done <= len(self.steps):
            return now + self.steps[max(attempts_done, 1) - 1]
        return now + rand.uniform(self.min_after, self.max_after)


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt learned about one recipient."""

    code: int  # SMTP reply code; 0 when no reply decided (connection, DNS, timeout)
    status: str  # RFC 3463
    text: str  # the reply or the error
    remote_mta: str = ""
    tls: str = ""  # "TLSv1.3 TLS_AES_256_GCM_SHA384"; "" when not encrypted
    tls_policy: str = ""  # the TlsRequirement's policy: dane, mta-sts, opportunistic...
    authenticated: bool = False  # the peer matched DANE / MTA-STS (transport.py)
    dsn_relayed: bool = False  # the next hop offered DSN (NOTIFY/ORCPT went with it)
    permanent: bool = False  # for code 0: a permanent verdict (null MX, NXDOMAIN...)

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300

    @property
    def failed(self) -> bool:
        return self.code >= 500 or (self.code == 0 and self.permanent)


def decide(row: QueueRow, result: AttemptResult, *, now: float, schedule: Schedule,
           rand: random.Random) -> Outcome:
    attempt = {"at": now, "host": result.remote_mta, "tls": result.tls,
               "policy": result.tls_policy, "authenticated": result.authenticated,
               "status": result.status, "reply" if result.code else "error": result.text}

    def outcome(state: str, error: str, report: str = "", status: str = result.status,
                nxt: float = 0.0) -> Outcome:
        return Outcome(row.id, state, attempt, error=error, status=status,
                       remote_mta=result.remote_mta, next_attempt_at=nxt,
                       report_action=report)

    if result.delivered:
        owed = (bool(row.sender) and not result.dsn_relayed
                and notify_wants(row.dsn_notify, "SUCCESS"))
        return outcome("delivered", "", "relayed" if owed else "")
    report = "failed" if row.sender and notify_wants(row.dsn_notify, "FAILURE") else ""
    if result.failed:
        return outcome("failed", result.text, report)
    nxt = schedule.next_attempt(row.attempts + 1, now, rand)
    if nxt >= row.expires_at and now < row.expires_at:
        nxt = row.expires_at  # one last attempt when the lifetime ends
    elif nxt >= row.expires_at:
        status = result.status if result.status.startswith("4.") else "4.4.7"
        return outcome("expired", f"gave up after the queue lifetime: {result.text}",
                       report, status)
    return outcome("queued", result.text, nxt=nxt)


def wants_delay_notice(rows: Sequence[QueueRow], *, now: float, after: float) -> bool:
    """A message waiting longer than ``after`` whose sender has not been told yet."""
    return after > 0 and any(
        r.state == "queued" and r.sender and not r.delay_notified
        and now - r.created_at >= after and notify_wants(r.dsn_notify, "DELAY")
        for r in rows)

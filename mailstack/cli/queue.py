"""``mailstack queue``: the outbound queue for the operator (docs/behaviour.md §6, §10).

- ``list [--domain D] [--failed]``: one line per recipient: id, age, sender, recipient,
  state, attempts, next try, last error.
- ``show ID``: every field and the history of attempts (time, server, the TLS policy
  that applied (dane / mta-sts / opportunistic ...), TLS version and cipher, whether
  the peer was authenticated, reply).
- ``retry ID|--all``: waiting rows become due now (a running server picks them up at
  its next poll).
- ``delete ID --yes``: removed without any report to the sender.
- ``bounce ID``: given up now; the RFC 3464 report goes out at once (to the sender's
  INBOX when hosted here, else queued for delivery).

Errors follow the other commands: an unknown id exits 1 with one line on stderr; a
missing ``--yes`` exits 2.
"""

from __future__ import annotations

import argparse
import datetime as dt

from ..store import Store
from ..store.queue import QueueRow
from .common import CliError, Ctx, Parsers, with_store


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _one_line(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


async def _row(store: Store, row_id: str) -> QueueRow:
    if not row_id.isdigit():
        raise CliError(f"queue id {row_id!r} is not a number (see `mailstack queue list`)")
    row = await store.queue_row_by_id(int(row_id))
    if row is None:
        raise CliError(f"no queue entry {row_id}")
    return row


@with_store
async def queue_list(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    rows = await store.queue_rows(domain=args.domain, failed=args.failed)
    if not rows:
        ctx.print("queue is empty" if not (args.domain or args.failed)
                  else "no matching queue entries")
        return 0
    now = store.clock()
    ctx.print(f"{'ID':>6}  {'AGE':>6}  {'STATE':9}  {'TRIES':>5}  {'NEXT TRY':20}  "
              "SENDER -> RECIPIENT  LAST ERROR")
    for r in rows:
        nxt = _when(r.next_attempt_at) if r.state == "queued" else "-"
        ctx.print(f"{r.id:>6}  {_age(now - r.created_at):>6}  {r.state:9}  "
                  f"{r.attempts:>5}  {nxt:20}  <{r.sender}> -> <{r.recipient}>  "
                  f"{_one_line(r.last_error)}")
    stats = await store.queue_stats()
    ctx.print(f"{stats.waiting} waiting; oldest waiting {_age(stats.oldest_age)}")
    return 0


def _security(attempt: dict[str, object]) -> str:
    """"dane; TLSv1.3 TLS_AES_256_GCM_SHA384; peer authenticated" for one attempt (older
    attempts recorded only the TLS version)."""
    tls = str(attempt.get("tls") or "")
    policy = str(attempt.get("policy") or "")
    parts = [f"policy {policy}"] if policy else []
    parts.append(tls or "no TLS")
    if tls and "authenticated" in attempt:
        parts.append("peer authenticated" if attempt.get("authenticated")
                     else "peer not authenticated")
    return "; ".join(parts)


@with_store
async def queue_show(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    r = await _row(store, args.id)
    ctx.print(f"id:          {r.id}")
    ctx.print(f"state:       {r.state}")
    ctx.print(f"sender:      <{r.sender}>")
    ctx.print(f"recipient:   <{r.recipient}>")
    ctx.print(f"queued:      {_when(r.created_at)}")
    ctx.print(f"size:        {r.size}")
    ctx.print(f"attempts:    {r.attempts}")
    if r.state == "queued":
        ctx.print(f"next try:    {_when(r.next_attempt_at)}")
        ctx.print(f"gives up:    {_when(r.expires_at)}")
    else:
        ctx.print(f"finished:    {_when(r.finished_at)}")
    if r.status:
        ctx.print(f"status:      {r.status}")
    if r.last_error:
        ctx.print(f"last error:  {_one_line(r.last_error, 300)}")
    if r.dsn_notify or r.dsn_ret or r.dsn_envid:
        ctx.print(f"dsn:         NOTIFY={r.dsn_notify or '-'} RET={r.dsn_ret or '-'} "
                  f"ENVID={r.dsn_envid or '-'} ORCPT={r.dsn_orcpt or '-'}")
    ctx.print(f"report owed: {r.report_action or 'no'}")
    ctx.print("history:" if r.history else "history:     (no attempt yet)")
    for h in r.history:
        at = h.get("at")
        when = _when(float(at)) if isinstance(at, (int, float)) else "?"
        host = h.get("host") or "-"
        ctx.print(f"  {when}  {host}  [{_security(h)}]  "
                  f"{_one_line(str(h.get('reply') or h.get('error') or ''), 200)}")
    return 0


@with_store
async def queue_retry(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    if args.all == bool(args.id):
        raise CliError("give a queue id or --all", code=2)
    if args.all:
        n = await store.retry_now()
        ctx.print(f"{n} waiting entries are due now")
        return 0
    r = await _row(store, args.id)
    if r.state != "queued":
        raise CliError(f"queue entry {r.id} is {r.state}, not waiting")
    await store.retry_now(r.id)
    ctx.print(f"queue entry {r.id} is due now")
    return 0


@with_store
async def queue_delete(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    r = await _row(store, args.id)
    if not args.yes:
        raise CliError(f"not deleted: entry {r.id} (<{r.sender}> -> <{r.recipient}>) would "
                       "be dropped without any report to the sender; run again with --yes "
                       "to confirm", code=2)
    await store.delete_queued(r.id)
    ctx.print(f"queue entry {r.id} deleted (no report sent)")
    return 0


@with_store
async def queue_bounce(ctx: Ctx, store: Store, args: argparse.Namespace) -> int:
    from ..outbound.reports import send_reports

    r = await _row(store, args.id)
    if not await store.bounce_now(r.id, "given up by the operator"):
        raise CliError(f"queue entry {r.id} is {r.state}, not waiting")
    node = f"cli-{store.node_id[:8]}"
    o = ctx.settings.outbound
    claimed = await store.claim_reports(node, o.lease_seconds, 1, row_id=r.id)
    if not claimed:
        ctx.print(f"queue entry {r.id} given up (no report: the return path is empty or "
                  "the sender asked for none)")
        return 0
    await send_reports(store, claimed, hostname=ctx.settings.server.hostname,
                       now=store.clock(), lifetime=o.lifetime_seconds)
    await store.reports_done(node, [r.id])
    ctx.print(f"queue entry {r.id} given up; report sent to <{r.sender}>")
    return 0


def register(p: Parsers) -> None:
    q = p.group("queue", "The outbound queue: mail waiting for delivery to the internet.")
    sp = p.cmd(q, "list", queue_list, "List queue entries (one per recipient).")
    sp.add_argument("--domain", metavar="DOMAIN", help="only recipients in DOMAIN")
    sp.add_argument("--failed", action="store_true",
                    help="only entries that failed or are retrying after an error")
    sp = p.cmd(q, "show", queue_show, "Show one entry with its history of attempts.")
    sp.add_argument("id", metavar="ID")
    sp = p.cmd(q, "retry", queue_retry, "Make waiting entries due now.")
    sp.add_argument("id", nargs="?", metavar="ID")
    sp.add_argument("--all", action="store_true", help="every waiting entry")
    sp = p.cmd(q, "delete", queue_delete, "Drop an entry without a report (needs --yes).")
    sp.add_argument("id", metavar="ID")
    sp.add_argument("--yes", action="store_true", help="confirm")
    sp = p.cmd(q, "bounce", queue_bounce,
               "Give an entry up now and send the failure report to its sender.")
    sp.add_argument("id", metavar="ID")

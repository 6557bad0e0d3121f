"""Sending delivery reports and delay notices (the I/O around ``dsn``).

A report goes to the original sender with an empty return path (RFC 3464 §2, RFC 5321
§4.5.5: never a report about a report). A sender hosted here gets it in the INBOX at
once (one local delivery); any other sender through the outbound queue, like any mail.
Rows with an empty return path never reach this module (``decide`` owes no report).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..headerkeys import header_keys_async
from ..policy.headers import delivered_to_header, return_path_header
from ..store import NotFound, Store
from ..store.queue import QueueRow
from .dsn import RecipientStatus, Report, build_report, notify_wants

log = logging.getLogger("mailstack.outbound")

MAX_HEADER_READ = 256 * 1024


async def original_of(store: Store, row: QueueRow, full: bool) -> bytes:
    """The original header block (bounded), or the whole message for RET=FULL."""
    out = bytearray()
    async for chunk in store.queue_chunks(row):
        out += chunk
        if not full and (b"\r\n\r\n" in out or b"\n\n" in out or len(out) > MAX_HEADER_READ):
            break
    return bytes(out)


def recipient_statuses(rows: Sequence[QueueRow], *, delayed: bool = False
                       ) -> list[RecipientStatus]:
    out = []
    for r in rows:
        last = r.history[-1] if r.history else {}
        at = last.get("at")
        diag = str(last.get("reply") or "") or (r.last_error if not delayed else
                                                 str(last.get("error") or ""))
        out.append(RecipientStatus(
            final_recipient=r.recipient,
            action="delayed" if delayed else (r.report_action or "failed"),
            status=r.status or ("4.0.0" if delayed else "5.0.0"),
            original_recipient=r.dsn_orcpt, remote_mta=r.remote_mta,
            diagnostic=diag, last_attempt=float(at) if isinstance(at, (int, float)) else None,
            will_retry_until=r.expires_at if delayed else None))
    return out


async def report_for(store: Store, rows: Sequence[QueueRow], *, hostname: str, now: float,
                     delayed: bool = False) -> bytes:
    """The report about ``rows`` (all of one message)."""
    first = rows[0]
    full = first.dsn_ret == "FULL" and not delayed
    original = await original_of(store, first, full)
    return build_report(Report(
        reporting_mta=hostname, to=first.sender, arrival=first.created_at,
        recipients=recipient_statuses(rows, delayed=delayed), original=original,
        ret_full=full, envid=first.dsn_envid, now=now))


async def deliver_report(store: Store, to: str, data: bytes, *, lifetime: float) -> str:
    """Put ``data`` in ``to``'s INBOX when hosted here, else queue it with an empty
    return path. Returns "local" or "queued"."""
    blob_id = await store.put_blob(data)
    local, _, domain = to.rpartition("@")
    _, address = await store.route_facts(domain, to) if local else (None, None)
    if address is not None:
        try:
            await store.accept_message(
                blob_id, len(data), sender="", remote=[], inboxes=[address.key],
                keys=await header_keys_async(data),
                inbox_prefix=lambda email: return_path_header("") + delivered_to_header(
                    email))
            return "local"
        except NotFound:
            pass  # removed meanwhile: the queue (and its MX) decide
    await store.enqueue("", [to], blob_id, len(data), lifetime=lifetime)
    return "queued"


async def send_reports(store: Store, rows: Sequence[QueueRow], *, hostname: str,
                       now: float, lifetime: float) -> int:
    """One report per message for ``rows`` (finished rows owing a report, already
    claimed by the caller). Returns how many reports went out."""
    by_message: dict[tuple[str, str, float], list[QueueRow]] = {}
    for r in rows:
        by_message.setdefault(r.message_key, []).append(r)
    sent = 0
    for group in by_message.values():
        owed = [r for r in group if r.sender and r.report_action]
        if not owed:
            continue
        data = await report_for(store, owed, hostname=hostname, now=now)
        how = await deliver_report(store, owed[0].sender, data, lifetime=lifetime)
        log.info("outbound: report (%s) about %d recipient(s) to <%s> %s",
                 ",".join(sorted({r.report_action for r in owed})), len(owed),
                 owed[0].sender, how)
        sent += 1
    return sent


async def send_delay_notice(store: Store, key: tuple[str, str, float], *, hostname: str,
                            now: float, lifetime: float) -> bool:
    """The one delay notice of a message (claimed in the store, so whichever runner
    gets here first sends it, and only it)."""
    rows = [r for r in await store.take_delay_notice(key)
            if notify_wants(r.dsn_notify, "DELAY")]
    if not rows or not rows[0].sender:
        return False
    data = await report_for(store, rows, hostname=hostname, now=now, delayed=True)
    await deliver_report(store, rows[0].sender, data, lifetime=lifetime)
    log.info("outbound: delay notice about %d recipient(s) to <%s>", len(rows),
             rows[0].sender)
    return True

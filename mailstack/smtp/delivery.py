"""Durable acceptance of one SMTP transaction (RFC 5321 §6.1, docs/behaviour.md §4, §5).

Order (docs/behaviour.md §12 "durability"): build the blob (our ``Received:`` + the message
with every ``Bcc:`` removed) -> ``put_blob`` (fsynced, renamed, directory fsynced) ->
ONE transaction with every local copy, every queued remote recipient and the send
count (``Store.accept_message``, which may share that transaction and its commit with
other sessions' messages: group commit) -> only then the caller answers ``250``. Any
failure on the way answers ``451 4.3.0`` and leaves no message row; at worst an
unreferenced blob remains for the store's garbage collection.

Routing is not repeated here: the final mailbox keys decided at RCPT time go to the
store, which resolves their INBOX folders inside the write transaction.

Per-copy bytes: each local copy gets its own prefix ``Return-Path`` + ``Delivered-To``
(RFC 5321 §4.4); the shared blob holds the one ``Received:`` field.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .. import metrics
from ..outbound.dkim import DkimSigner, SigningError
from ..policy.envelope import EnvelopeAddress, MailParams, RcptParams
from ..policy.headers import (
    TlsInfo,
    delivered_to_header,
    received_header,
    received_protocol,
    return_path_header,
    strip_bcc,
)
from ..policy.relay import RcptVerdict, merge_destinations
from ..services import Services
from ..store import NO_DSN, DsnRequest, NotFound, Unavailable
from . import replies

log = logging.getLogger("mailstack.smtp")


@dataclass(frozen=True)
class Transaction:
    """The facts of one accepted transaction, as the session gathered them."""

    queue_id: str
    helo: str | None
    esmtp: bool
    client_ip: str
    tls: TlsInfo | None
    sender: EnvelopeAddress | None
    smtputf8: bool
    recipients: Sequence[EnvelopeAddress]
    verdicts: Sequence[RcptVerdict]
    content: bytes
    auth_address_id: int | None = None
    mail_params: MailParams | None = None
    rcpt_params: Sequence[RcptParams] = ()


NOTIFY_ORDER = ("NEVER", "SUCCESS", "FAILURE", "DELAY")


def dsn_request(tx: Transaction, remote: Sequence[str]) -> DsnRequest:
    """The DSN parameters (RFC 3461 §4) to keep on the queued rows of ``remote``.

    A remote address reached through an alias or a forward inherits the NOTIFY of the
    RCPT that led to it; without an ORCPT from the client it gets ``rfc822;<the RCPT
    address>`` so a report names the address the sender used (RFC 3461 §4.2). The
    first RCPT that reaches an address wins (the queue holds one row per address)."""
    params = tx.mail_params
    ret = (params.ret or "") if params else ""
    envid = (params.envid or "") if params else ""
    wanted = set(remote)
    rcpt: dict[str, tuple[str, str]] = {}
    for address, verdict, rp in zip(tx.recipients, tx.verdicts, tx.rcpt_params, strict=False):
        notify = ",".join(n for n in NOTIFY_ORDER if rp.notify and n in rp.notify)
        for r in verdict.remote:
            if r not in wanted or r in rcpt:
                continue
            if rp.orcpt is not None:
                orcpt = f"{rp.orcpt[0]};{rp.orcpt[1]}"
            elif r.lower() != str(address).lower():
                orcpt = f"rfc822;{address}"
            else:
                orcpt = ""
            rcpt[r] = (notify, orcpt)
    if not ret and not envid and not any(n or o for n, o in rcpt.values()):
        return NO_DSN
    return DsnRequest(ret, envid, rcpt)


async def accept(services: Services, tx: Transaction,
                 signer: DkimSigner | None = None) -> str:
    """Store the message for every destination; returns the reply to send.

    With a ``signer``, a message from an authenticated sender that has remote
    recipients is DKIM-signed (docs/behaviour.md §6); the signature lines go into the
    remote copies' prefix only (local copies need none, and the blob stays shared)."""
    store = services.store
    dest = merge_destinations(tx.verdicts)
    now = services.clock()
    received = received_header(
        helo=tx.helo, client_ip=tx.client_ip, client_host=None,
        server_host=services.hostname,
        protocol=received_protocol(esmtp=tx.esmtp, tls=tx.tls is not None,
                                   authenticated=tx.auth_address_id is not None,
                                   smtputf8=tx.smtputf8),
        queue_id=tx.queue_id, recipients=list(tx.recipients),
        now=datetime.fromtimestamp(now, UTC), tls=tx.tls)
    blob = received + strip_bcc(tx.content)
    return_path = return_path_header(tx.sender)
    if not dest.mailboxes and not dest.remote:
        return replies.TEMP_FAILURE
    try:
        remote_prefix = b""
        if signer is not None and tx.auth_address_id is not None and dest.remote:
            try:
                remote_prefix = await signer.sign(blob)
            except SigningError as exc:  # a broken key must not stop the mail
                log.error("smtp %s: DKIM signing failed, sent unsigned: %s", tx.queue_id, exc)
        blob_id = await store.put_blob(blob)
        # The INBOX of each final mailbox is found inside the write transaction (one
        # query per group commit); a mailbox removed since RCPT is skipped there.
        copies = await store.accept_message(
            blob_id, len(blob), sender=str(tx.sender) if tx.sender else "",
            remote=list(dest.remote), remote_prefix=remote_prefix,
            sender_address_id=tx.auth_address_id,
            dsn=dsn_request(tx, dest.remote),
            counted_recipients=len(tx.recipients), at=now, inboxes=dest.mailboxes,
            inbox_prefix=lambda email: return_path + delivered_to_header(email))
    except NotFound:
        log.warning("smtp %s: every mailbox vanished before delivery", tx.queue_id)
        return replies.TEMP_FAILURE
    except Unavailable as exc:
        log.error("smtp %s: store unavailable, message not accepted: %s", tx.queue_id, exc)
        return replies.store_failure(exc)
    metrics.message_accepted(len(blob))
    log.info("smtp %s: accepted %d octets for %d local, %d remote", tx.queue_id, len(blob),
             len(copies), len(dest.remote))
    # docs/behaviour.md §7: out-of-office replies, only after the commit; this starts a
    # background task and never raises, so the 250 neither waits for nor depends on it.
    services.autoreplies.after_delivery(
        sender=str(tx.sender) if tx.sender else None, content=blob,
        mailboxes=dest.mailboxes, catchall_only=dest.catchall_only)
    # docs/behaviour.md §3: the storage warning at 90 % (background, never raises)
    services.notifier.after_storing(dest.mailboxes, len(blob))
    return f"250 2.0.0 OK: queued as {tx.queue_id}"

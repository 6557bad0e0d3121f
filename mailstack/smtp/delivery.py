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

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .. import metrics
from ..headerkeys import header_keys_async
from ..outbound.dkim import DkimSigner, SigningError
from ..policy.authres.results import remove_forged
from ..policy.envelope import EnvelopeAddress, MailParams, RcptParams
from ..policy.headers import (
    TlsInfo,
    delivered_to_header,
    received_header,
    received_protocol,
    return_path_header,
    split_header,
    strip_bcc,
)
from ..policy.relay import RcptVerdict, merge_destinations
from ..services import Services
from ..store import NO_DSN, DeliveryTarget, DsnRequest, NotFound, Unavailable
from . import replies
from .spool import BIG_WORK, MessageContent, SpoolFile, spool_path

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
    # From sender authentication (smtp/senderauth.py): Authentication-Results and
    # Received-SPF, prepended above our Received: (RFC 7208 §9.1); the verified reverse
    # DNS name; the mailboxes whose copy goes to their Junk folder (DMARC quarantine).
    trace: bytes = b""
    client_host: str | None = None
    junk: frozenset[str] = frozenset()
    # A big message arrives in a spool file (smtp/spool.py) instead of ``content``;
    # ``added_header`` is what the server puts in front of it (RFC 6409 §8 fields).
    spooled: MessageContent | None = None
    added_header: bytes = b""
    # A spooled message's forged Authentication-Results (ours) are removed when its
    # header is rewritten (sender authentication ran on the MX listener).
    strip_forged: bool = False


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
        helo=tx.helo, client_ip=tx.client_ip, client_host=tx.client_host,
        server_host=services.hostname,
        protocol=received_protocol(esmtp=tx.esmtp, tls=tx.tls is not None,
                                   authenticated=tx.auth_address_id is not None,
                                   smtputf8=tx.smtputf8),
        queue_id=tx.queue_id, recipients=list(tx.recipients),
        now=datetime.fromtimestamp(now, UTC), tls=tx.tls)
    return_path = return_path_header(tx.sender)
    if not dest.mailboxes and not dest.remote:
        return replies.TEMP_FAILURE
    # What every copy shows in front of the stored blob: in memory the blob itself
    # starts with the Received: field; a spooled message is stored as it arrived (Bcc
    # removed) and the Received: field (and any added fields) go into each copy's
    # per-copy prefix instead, so a reader gets the same octets either way.
    spooled = tx.spooled
    front = blob = b""
    try:
        if spooled is None:
            blob = tx.trace + received + strip_bcc(tx.content)
            size = len(blob)
            head = blob
        else:
            front = tx.trace + received + tx.added_header
            head = front + await _clean_spooled_header(
                spooled, services.hostname if tx.strip_forged else None)
            size = len(front) + spooled.size
        # sort/thread keys (RFC 5256), stored with the rows: parsed once, header only
        keys = await header_keys_async(head)
        remote_prefix = b""
        if signer is not None and tx.auth_address_id is not None and dest.remote:
            try:
                if spooled is None:
                    remote_prefix = await signer.sign(blob)
                else:  # the whole message once, one big message at a time
                    async with BIG_WORK:
                        remote_prefix = await signer.sign(front + await spooled.read())
            except SigningError as exc:  # a broken key must not stop the mail
                log.error("smtp %s: DKIM signing failed, sent unsigned: %s", tx.queue_id, exc)
        inboxes, junk_targets = await _junk_split(services, tx, dest.mailboxes,
                                                  return_path, front)
        if spooled is None:
            blob_id = await store.put_blob(blob)
        else:
            assert spooled.spool is not None
            blob_id = await store.put_blob_file(spooled.spool.path, spooled.spool.blob_id)
        # The INBOX of each final mailbox is found inside the write transaction (one
        # query per group commit); a mailbox removed since RCPT is skipped there.
        copies = await store.accept_message(
            blob_id, size - len(front), junk_targets,
            sender=str(tx.sender) if tx.sender else "",
            remote=list(dest.remote), remote_prefix=remote_prefix + front,
            sender_address_id=tx.auth_address_id,
            dsn=dsn_request(tx, dest.remote),
            counted_recipients=len(tx.recipients), at=now, inboxes=inboxes, keys=keys,
            inbox_prefix=lambda email: return_path + delivered_to_header(email) + front)
    except NotFound:
        log.warning("smtp %s: every mailbox vanished before delivery", tx.queue_id)
        return replies.TEMP_FAILURE
    except Unavailable as exc:
        log.error("smtp %s: store unavailable, message not accepted: %s", tx.queue_id, exc)
        return replies.store_failure(exc)
    metrics.message_accepted(size)
    log.info("smtp %s: accepted %d octets for %d local, %d remote%s", tx.queue_id, size,
             len(copies), len(dest.remote), " (spooled)" if spooled is not None else "")
    # docs/behaviour.md §7: out-of-office replies, only after the commit; this starts a
    # background task and never raises, so the 250 neither waits for nor depends on it.
    services.autoreplies.after_delivery(
        sender=str(tx.sender) if tx.sender else None, content=head,
        mailboxes=inboxes, catchall_only=dest.catchall_only)
    # docs/behaviour.md §3: the storage warning at 90 % (background, never raises)
    services.notifier.after_storing(dest.mailboxes, size)
    return f"250 2.0.0 OK: queued as {tx.queue_id}"


async def _junk_split(services: Services, tx: Transaction, mailboxes: Sequence[str],
                      return_path: bytes, front: bytes = b""
                      ) -> tuple[tuple[str, ...], list[DeliveryTarget]]:
    """(mailboxes delivered to their INBOX, copies for Junk folders): a quarantined
    copy (DMARC, docs/behaviour.md §5) goes to the address's ``\\Junk`` folder, or to
    its INBOX when it has none."""
    if not tx.junk:
        return tuple(mailboxes), []
    found = await services.store.junk_folders([k for k in mailboxes if k in tx.junk])
    targets = [DeliveryTarget(fid, return_path + delivered_to_header(email) + front)
               for fid, email in found.values()]
    return tuple(k for k in mailboxes if k not in found), targets


async def _clean_spooled_header(message: MessageContent, authserv_id: str | None = None) -> bytes:
    """Remove Bcc:/Resent-Bcc: (docs/behaviour.md §4) and, with ``authserv_id``, forged
    Authentication-Results (RFC 8601 §5) from a spooled message: when its header has
    any, the file is rewritten without them (a copy on disk, hashed again, in a
    thread). Returns the message's header section as stored."""
    spool = message.spool
    assert spool is not None
    header, _ = split_header(message.head)
    stripped = strip_bcc(header)
    if authserv_id is not None:  # RFC 8601 §5: results claiming our authserv-id go
        stripped = remove_forged(stripped, authserv_id)[0]
    if stripped == header:
        return header
    new = SpoolFile(spool_path(spool.path.parent))
    try:
        await asyncio.to_thread(_rewrite_sync, spool, new, stripped, len(header))
    except OSError as exc:
        new.discard()
        raise Unavailable(f"cannot store message: {exc.strerror}") from exc
    spool.discard()
    message.spool = new
    message.size = new.size
    return stripped


def _rewrite_sync(old: SpoolFile, new: SpoolFile, header: bytes, skip: int) -> None:
    new._write_sync(header)
    with open(old.path, "rb") as f:
        f.seek(skip)
        while piece := f.read(1024 * 1024):
            new._write_sync(piece)
    new._close_sync()

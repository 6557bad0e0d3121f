"""Delivery status notifications (RFC 3464) as pure functions: facts in, message bytes
out (docs/behaviour.md §6).

A report is ``multipart/report; report-type=delivery-status`` (RFC 6522) with three
parts: a human-readable text, ``message/delivery-status`` (one per-message block, then
one block per recipient) and the original message's header (``text/rfc822-headers``),
or the whole original (``message/rfc822``) when the sender asked RET=FULL (RFC 3461
§4.3).

Invariants: every value copied from outside (reply texts, addresses, ENVID) is stripped
of CR, LF and other controls before it goes into a header or a status field, so a
remote server's reply can never add a field; the report is sent with an empty return
path, so a report about a report is never made (RFC 3464 §2, RFC 5321 §4.5.5).
"""

from __future__ import annotations

import email.utils
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's per-recipient fields (RFC 3464 §2.3)."""

    final_recipient: str
    action: str  # one of ACTIONS
    status: str  # RFC 3463, e.g. "5.1.1"
    original_recipient: str = ""  # ORCPT as "type;address" (RFC 3461 §4.2), "" if none
    remote_mta: str = ""
    diagnostic: str = ""  # the remote reply ("550 5.1.1 no such user"), "" if none
    last_attempt: float | None = None
    will_retry_until: float | None = None


@dataclass(frozen=True)
class Report:
    """Everything a report says; ``original`` is the original header block (or the
    whole message with ``ret_full``)."""

    reporting_mta: str
    to: str
    arrival: float
    recipients: Sequence[RecipientStatus]
    original: bytes
    ret_full: bool = False
    envid: str = ""
    now: float = 0.0


def _clean(value: str, limit: int = 900) -> str:
    """Controls (CR, LF, NUL...) become spaces; length bounded."""
    return "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)[:limit]


def _addr_type(addr: str) -> str:
    return "rfc822" if addr.isascii() else "utf-8"  # RFC 6533 §3


def _date(t: float) -> str:
    return email.utils.formatdate(t, usegmt=True)


def kind_of(recipients: Sequence[RecipientStatus]) -> str:
    """"failure" if any recipient failed, else "delay" if any is delayed, else
    "success"."""
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return "failure"
    if "delayed" in actions:
        return "delay"
    return "success"


_SUBJECTS = {
    "failure": "Undelivered Mail Returned to Sender",
    "delay": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
}


def human_text(r: Report) -> str:
    kind = kind_of(r.recipients)
    lines = [f"This is the mail system at {r.reporting_mta}.", ""]
    if kind == "failure":
        lines += ["Your message could not be delivered to the recipients below. This is",
                  "a permanent error; the server has stopped trying.", ""]
    elif kind == "delay":
        until = max((x.will_retry_until or 0.0) for x in r.recipients)
        lines += ["Your message has not been delivered yet to the recipients below.",
                  "There is no need to send it again: the server keeps trying until",
                  f"{_date(until)}, and you will be told if it finally fails.", ""]
    else:
        lines += ["Your message was delivered (or handed to a server that does not",
                  "report delivery) for the recipients below.", ""]
    for x in r.recipients:
        where = f" (remote server {x.remote_mta})" if x.remote_mta else ""
        lines.append(f"<{_clean(x.final_recipient, 320)}>{where}: {x.action}")
        if x.diagnostic:
            lines.append(f"    {_clean(x.diagnostic)}")
        if x.will_retry_until is not None and x.action == "delayed":
            lines.append(f"    retried until {_date(x.will_retry_until)}")
    return "\r\n".join(lines) + "\r\n"


def delivery_status(r: Report) -> str:
    """The ``message/delivery-status`` body (RFC 3464 §2.1)."""
    block = [f"Reporting-MTA: dns; {_clean(r.reporting_mta, 255)}"]
    if r.envid:
        block.append(f"Original-Envelope-Id: {_clean(r.envid, 100)}")
    block.append(f"Arrival-Date: {_date(r.arrival)}")
    blocks = ["\r\n".join(block)]
    for x in r.recipients:
        if x.action not in ACTIONS:
            raise ValueError(f"bad action {x.action!r}")
        fields = []
        if x.original_recipient:
            kind, _, addr = x.original_recipient.partition(";")
            fields.append(f"Original-Recipient: {_clean(kind, 20)};{_clean(addr, 320)}")
        rcpt = _clean(x.final_recipient, 320)
        fields += [f"Final-Recipient: {_addr_type(rcpt)}; {rcpt}",
                   f"Action: {x.action}", f"Status: {_clean(x.status, 16)}"]
        if x.remote_mta:
            fields.append(f"Remote-MTA: dns; {_clean(x.remote_mta, 255)}")
        if x.diagnostic:
            fields.append(f"Diagnostic-Code: smtp; {_clean(x.diagnostic)}")
        if x.last_attempt is not None:
            fields.append(f"Last-Attempt-Date: {_date(x.last_attempt)}")
        if x.will_retry_until is not None:
            fields.append(f"Will-Retry-Until: {_date(x.will_retry_until)}")
        blocks.append("\r\n".join(fields))
    return "\r\n\r\n".join(blocks) + "\r\n"


def original_headers(message: bytes) -> bytes:
    """The header block of ``message`` (up to the empty line), line ends as CRLF."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = message.find(sep)
        if end >= 0:
            head = message[:end]
            break
    else:
        head = message
    return head.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n") + b"\r\n"


def build_report(r: Report) -> bytes:
    """The whole report message (headers and body, CRLF line ends)."""
    kind = kind_of(r.recipients)
    boundary = f"=_report_{uuid.uuid4().hex}"
    to = _clean(r.to, 320)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{_clean(r.reporting_mta, 255)}>",
        f"To: <{to}>",
        f"Subject: {_SUBJECTS[kind]}",
        f"Date: {_date(r.now)}",
        f"Message-ID: <{uuid.uuid4().hex}@{_clean(r.reporting_mta, 255)}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: never answered automatically
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; '
        f'boundary="{boundary}"',
    ]
    utf8 = not all(x.final_recipient.isascii() for x in r.recipients)
    parts = [
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + human_text(r).encode("utf-8"),
        (b"Content-Type: message/global-delivery-status\r\n" if utf8 else  # RFC 6533
         b"Content-Type: message/delivery-status\r\n") + b"\r\n"
        + delivery_status(r).encode("utf-8"),
    ]
    if r.ret_full:
        body = r.original.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        parts.append(b"Content-Type: message/rfc822\r\n\r\n" + body)
    else:
        parts.append(b"Content-Type: text/rfc822-headers\r\n\r\n"
                     + original_headers(r.original))
    sep = f"--{boundary}\r\n".encode()
    out = "\r\n".join(head).encode() + b"\r\n\r\n"
    out += b"This is a delivery status notification (RFC 3464).\r\n\r\n"
    for part in parts:
        out += sep + part
        if not part.endswith(b"\r\n"):
            out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out


def notify_wants(notify: str, what: str) -> bool:
    """Whether a recipient's NOTIFY (RFC 3461 §4.1) asks for ``what`` ("FAILURE",
    "DELAY", "SUCCESS"). Without NOTIFY: failures and delays, not successes."""
    values = {v for v in notify.upper().split(",") if v}
    if not values:
        return what in ("FAILURE", "DELAY")
    if "NEVER" in values:
        return False
    return what in values

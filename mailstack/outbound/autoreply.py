"""The out-of-office reply message (RFC 3834 §3, docs/behaviour.md §7). Pure: facts in,
bytes out; no sockets, no clock, no randomness of its own.

- ``To:`` the original's return path (RFC 3834 §3.1.2, §4), never its ``From:`` or
  ``Reply-To:``; ``From:`` the receiving address or the responder's alternate From
  (the caller checks that the address may send as it);
- ``Subject:`` the responder's, or ``Auto: <original subject>`` when it has none
  (RFC 3834 §3.1.5);
- ``In-Reply-To:`` / ``References:`` to the original (RFC 3834 §3.1.4, RFC 5322
  §3.6.4), when its ``Message-ID`` is well-formed;
- ``Auto-Submitted: auto-replied`` (RFC 3834 §5) and ``X-Auto-Response-Suppress: All``
  (so Exchange-style responders do not answer it);
- our ``Date:`` and ``Message-ID:``; UTF-8 text (and the optional HTML alternative)
  encoded by ``email.policy.SMTP`` (quoted-printable bodies, RFC 2047 encoded words
  in headers), CRLF line ends: 7-bit clean.

The envelope sender of the reply is empty (RFC 3834 §3.3): the caller queues or
delivers it with ``MAIL FROM:<>``.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from dataclasses import dataclass
from email.message import EmailMessage

MSGID = re.compile(r"<[!-;=?-~]{1,250}@[!-;=?-~]{1,250}>")  # printable, no '<' or '>'
MAX_REFERENCES = 10
MAX_SUBJECT = 200


@dataclass(frozen=True)
class ReplyFacts:
    """What the reply is built from. ``original_*``: header values of the message
    answered, as decoded strings (None when absent)."""

    to: str  # the original's return path
    from_address: str
    from_name: str
    subject: str  # the responder's; "" -> "Auto: <original subject>"
    body: str
    html: str | None
    original_subject: str | None
    original_message_id: str | None
    original_references: str | None
    date: float  # epoch seconds
    message_id: str  # "<unique@host>"


def _clean(text: str) -> str:
    """One line: control characters (CR, LF, TAB ...) become spaces, runs collapse."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def reply_subject(subject: str, original: str | None) -> str:
    if subject.strip():
        return _clean(subject)[:MAX_SUBJECT]
    orig = _clean(original or "")
    return f"Auto: {orig}"[:MAX_SUBJECT] if orig else "Auto: (no subject)"


def thread_ids(message_id: str | None, references: str | None) -> tuple[str | None, str]:
    """(In-Reply-To, References) per RFC 5322 §3.6.4: the original's id, and its
    references (the last few) followed by its id. Malformed ids are dropped."""
    mid = MSGID.fullmatch(message_id.strip()) if message_id else None
    if mid is None:
        return None, ""
    refs = MSGID.findall(references or "")[-(MAX_REFERENCES - 1):]
    return mid.group(0), " ".join([*refs, mid.group(0)])


def build_reply(f: ReplyFacts) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = email.utils.formataddr((_clean(f.from_name), f.from_address))
    msg["To"] = f.to
    msg["Subject"] = reply_subject(f.subject, f.original_subject)
    msg["Date"] = email.utils.formatdate(f.date, usegmt=True)
    msg["Message-ID"] = f.message_id
    in_reply_to, references = thread_ids(f.original_message_id, f.original_references)
    if in_reply_to is not None:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = references
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    text = f.body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    # quoted-printable: 7-bit safe whatever the next hop supports (no 8BITMIME needed)
    msg.set_content(text, charset="utf-8", cte="quoted-printable")
    if f.html:
        msg.add_alternative(f.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg.as_bytes()

"""RFC 3464 reports as pure functions: structure, per-recipient fields, original
headers or full message (RFC 3461 RET), hostile values cannot add fields."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from mailstack.outbound.dsn import (
    RecipientStatus,
    Report,
    build_report,
    notify_wants,
    original_headers,
)

ORIGINAL = (b"From: anna@example.com\r\nTo: x@remote.example\r\nSubject: hello\r\n"
            b"Message-ID: <m1@example.com>\r\n\r\nbody line\r\n.dot\r\n")


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def status_blocks(msg: EmailMessage) -> list[dict[str, str]]:
    part = next(p for p in msg.walk()
                if p.get_content_type() in ("message/delivery-status",
                                            "message/global-delivery-status"))
    blocks = []
    for sub in part.get_payload():  # the email package parses it as header blocks
        blocks.append({k.lower(): str(v) for k, v in sub.items()})
    return blocks


def test_failure_report_structure() -> None:
    r = Report("mail.example.net", "anna@example.com", 1_700_000_000.0, [
        RecipientStatus("x@remote.example", "failed", "5.1.1",
                        original_recipient="rfc822;X@remote.example",
                        remote_mta="mx.remote.example",
                        diagnostic="550 5.1.1 no such user", last_attempt=1_700_000_100.0)],
        ORIGINAL, envid="env-1", now=1_700_000_200.0)
    msg = parse(build_report(r))
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"].addresses[0].addr_spec == "anna@example.com"
    assert msg["Auto-Submitted"] == "auto-replied"
    types = [p.get_content_type() for p in msg.iter_parts()]
    assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    per_msg, rcpt = status_blocks(msg)
    assert per_msg["reporting-mta"] == "dns; mail.example.net"
    assert per_msg["original-envelope-id"] == "env-1"
    assert "arrival-date" in per_msg
    assert rcpt["final-recipient"] == "rfc822; x@remote.example"
    assert rcpt["original-recipient"] == "rfc822;X@remote.example"
    assert rcpt["action"] == "failed" and rcpt["status"] == "5.1.1"
    assert rcpt["remote-mta"] == "dns; mx.remote.example"
    assert rcpt["diagnostic-code"] == "smtp; 550 5.1.1 no such user"
    headers = list(msg.iter_parts())[2].get_payload()
    text = headers if isinstance(headers, str) else str(headers)
    assert "Subject: hello" in text and "body line" not in text


def test_ret_full_includes_the_whole_message_and_delay_says_until() -> None:
    until = 1_700_400_000.0
    r = Report("mail.example.net", "anna@example.com", 1_700_000_000.0, [
        RecipientStatus("x@remote.example", "delayed", "4.4.1",
                        will_retry_until=until)], ORIGINAL, ret_full=False,
               now=1_700_014_400.0)
    data = build_report(r)
    msg = parse(data)
    assert msg["Subject"].startswith("Delayed Mail")
    rcpt = status_blocks(msg)[1]
    assert rcpt["action"] == "delayed" and "will-retry-until" in rcpt
    assert email.utils.formatdate(until, usegmt=True).encode() in data
    full = parse(build_report(Report(
        "mail.example.net", "anna@example.com", 1.0,
        [RecipientStatus("x@remote.example", "failed", "5.0.0")], ORIGINAL, ret_full=True)))
    last = list(full.iter_parts())[2]
    assert last.get_content_type() == "message/rfc822"
    assert b"body line" in full.as_bytes()


def test_hostile_reply_text_cannot_add_fields() -> None:
    r = Report("mail.example.net", "anna@example.com", 1.0, [
        RecipientStatus("x@remote.example", "failed", "5.0.0",
                        diagnostic="550 bad\r\nAction: delivered\r\nX-Evil: 1")], ORIGINAL)
    msg = parse(build_report(r))
    rcpt = status_blocks(msg)[1]
    assert rcpt["action"] == "failed" and "x-evil" not in rcpt


def test_original_headers_only_the_header_block() -> None:
    assert original_headers(ORIGINAL).endswith(b"<m1@example.com>\r\n")
    assert b"body" not in original_headers(ORIGINAL)


def test_notify() -> None:
    assert notify_wants("", "FAILURE") and notify_wants("", "DELAY")
    assert not notify_wants("", "SUCCESS")
    assert not notify_wants("NEVER", "FAILURE")
    assert notify_wants("SUCCESS", "SUCCESS") and not notify_wants("SUCCESS", "FAILURE")

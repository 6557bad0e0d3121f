"""The reply message itself (RFC 3834 §3, pure): addressed to the return path, threaded
to the original, Auto-Submitted, UTF-8 encoded 7-bit clean, with the HTML alternative."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace

from mailstack.outbound.autoreply import ReplyFacts, build_reply, reply_subject, thread_ids

BASE = ReplyFacts(
    to="bob@remote.example", from_address="anna@example.com", from_name="Änna Müller",
    subject="Out of office – zurück am 3. Januar", body="Ich bin weg.\nGrüße, Änna",
    html=None, original_subject="Lunch?", original_message_id="<m1@remote.example>",
    original_references="<m0@remote.example>", date=2_000_000_000.0,
    message_id="<r1@mail.example.net>")


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_headers_and_utf8_text() -> None:
    data = build_reply(BASE)
    assert data.isascii()  # 7-bit clean: quoted-printable body, encoded words
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    msg = parse(data)
    assert msg["To"] == "bob@remote.example"
    assert msg["From"].addresses[0].addr_spec == "anna@example.com"
    assert msg["From"].addresses[0].display_name == "Änna Müller"
    assert msg["Subject"] == "Out of office – zurück am 3. Januar"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<m1@remote.example>"
    assert msg["References"] == "<m0@remote.example> <m1@remote.example>"
    assert msg["Message-ID"] == "<r1@mail.example.net>"
    assert msg["Date"] == "Wed, 18 May 2033 03:33:20 +0000"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content().replace("\r\n", "\n") == "Ich bin weg.\nGrüße, Änna\n"


def test_html_alternative() -> None:
    msg = parse(build_reply(replace(BASE, html="<p>Ich bin <b>weg</b> – Grüße</p>")))
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "Grüße" in text.get_content()
    assert html.get_content_type() == "text/html"
    assert html.get_content().strip() == "<p>Ich bin <b>weg</b> – Grüße</p>"


def test_subject_defaults_to_auto_original() -> None:
    assert reply_subject("", "Lunch?") == "Auto: Lunch?"
    assert reply_subject("  ", None) == "Auto: (no subject)"
    # no header injection through the original subject
    assert reply_subject("", "Hi\r\nBcc: evil@x.example") == "Auto: Hi Bcc: evil@x.example"
    msg = parse(build_reply(replace(BASE, subject="", original_subject="Grüezi\r\nX: y")))
    assert msg["Subject"] == "Auto: Grüezi X: y"
    assert msg["X"] is None


def test_thread_ids() -> None:
    assert thread_ids("<a@b>", None) == ("<a@b>", "<a@b>")
    assert thread_ids(" <a@b> ", "<c@d>\r\n <e@f>") == ("<a@b>", "<c@d> <e@f> <a@b>")
    assert thread_ids("not an id", "<c@d>") == (None, "")
    assert thread_ids(None, "<c@d>") == (None, "")
    many = " ".join(f"<{i}@x>" for i in range(30))
    _, refs = thread_ids("<a@b>", many)
    assert refs.split()[-1] == "<a@b>" and len(refs.split()) == 10
    msg = parse(build_reply(replace(BASE, original_message_id="<bad\r\nX: y>")))
    assert msg["In-Reply-To"] is None and msg["References"] is None and msg["X"] is None

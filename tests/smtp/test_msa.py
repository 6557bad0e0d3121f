"""Submission as an MSA (RFC 6409 §8, docs/behaviour.md §4): Date, Message-ID and, for a
minimal client, From are added on 465/587; a From that is present but not allowed is
still refused; mail from the internet on port 25 is left as it came."""

from __future__ import annotations

import asyncio
import smtplib
from email import message_from_bytes
from email.utils import parsedate_to_datetime

import pytest

from .conftest import PASSWORD, Env, Raw, message


def printer_send(env: Env, data: bytes, port_name: str = "submissions",
                 rcpt: str = "bob@example.com") -> tuple[int, bytes]:
    """A scanner: 465, EHLO, AUTH LOGIN (no initial response), one message."""
    if port_name == "submissions":
        s: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", env.port(port_name),
                                           context=env.client_ssl, timeout=30)
    else:
        s = smtplib.SMTP("127.0.0.1", env.port(port_name), timeout=30)
        s.starttls(context=env.client_ssl)
    with s:
        assert s.ehlo("SCANNER-01")[0] == 250
        s.user, s.password = "anna@example.com", PASSWORD
        code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235, text
        assert s.mail("anna@example.com")[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        return s.data(data)


@pytest.mark.parametrize("port_name", ["submissions", "submission"])
async def test_printer_without_date_message_id_from(env: Env, port_name: str) -> None:
    data = b"Subject: Scan 0002\r\nMIME-Version: 1.0\r\n\r\nscanned page\r\n"
    code, text = await asyncio.to_thread(printer_send, env, data, port_name)
    assert code == 250, text
    [raw] = await env.inbox("bob@example.com")
    msg = message_from_bytes(raw)
    assert msg.get_all("From") == ["anna@example.com"]
    assert len(msg.get_all("Date")) == 1
    date = parsedate_to_datetime(msg["Date"])
    assert date.utcoffset() is not None and date.utcoffset().total_seconds() == 0
    [mid] = msg.get_all("Message-ID")
    assert mid.startswith("<") and mid.endswith("@mail.example.net>")
    assert msg["Subject"] == "Scan 0002"
    assert msg.get_payload() == "scanned page\r\n"


async def test_message_ids_are_unique(env: Env) -> None:
    data = b"Subject: scan\r\n\r\npage\r\n"
    for _ in range(2):
        assert (await asyncio.to_thread(printer_send, env, data))[0] == 250
    ids = {message_from_bytes(m)["Message-ID"] for m in await env.inbox("bob@example.com")}
    assert len(ids) == 2


async def test_message_without_any_header(env: Env) -> None:
    """A body alone: the added fields form the header; the first line stays body."""
    code, _ = await asyncio.to_thread(printer_send, env, b"just a line of text\r\n")
    assert code == 250
    [raw] = await env.inbox("bob@example.com")
    msg = message_from_bytes(raw)
    assert msg["From"] == "anna@example.com"
    assert msg.get_payload() == "just a line of text\r\n"
    assert b"\r\n\r\njust a line of text\r\n" in raw


async def test_existing_fields_untouched(env: Env) -> None:
    data = message("Anna <anna@example.com>", "bob@example.com", "kept",
                   extra="Date: Mon, 1 Jan 2024 10:00:00 +0100\r\n")
    assert (await asyncio.to_thread(printer_send, env, data))[0] == 250
    [raw] = await env.inbox("bob@example.com")
    msg = message_from_bytes(raw)
    assert msg.get_all("From") == ["Anna <anna@example.com>"]
    assert msg.get_all("Date") == ["Mon, 1 Jan 2024 10:00:00 +0100"]
    assert msg.get_all("Message-ID") == ["<kept@test>"]


@pytest.mark.parametrize(("from_field", "code", "enhanced"), [
    (b"From: Boss <boss@example.com>\r\n", 553, b"5.7.1"),  # someone else's address
    (b"From: bob@example.com\r\n", 553, b"5.7.1"),
    (b"From: \r\n", 550, b"5.6.0"),  # present but empty: not filled in
])
async def test_present_from_not_allowed_refused(env: Env, from_field: bytes, code: int,
                                                enhanced: bytes) -> None:
    data = from_field + b"Subject: no date, no id\r\n\r\nbody\r\n"
    got, text = await asyncio.to_thread(printer_send, env, data)
    assert (got, text[:5]) == (code, enhanced)
    assert await env.total_stored() == 0


async def test_missing_from_to_remote_is_queued_with_login(env: Env) -> None:
    code, _ = await asyncio.to_thread(printer_send, env, b"Subject: out\r\n\r\nx\r\n",
                                      "submissions", "someone@remote.example")
    assert code == 250
    [row] = await env.store.list_queue()
    blob = await env.store.blobs.get(row.blob_id)
    assert b"\r\nFrom: anna@example.com\r\n" in blob


async def test_mx_leaves_messages_alone(env: Env) -> None:
    """Port 25 is no MSA: a message from the internet without Date/Message-ID is stored
    as it came (only the trace fields are added)."""
    raw = await Raw.open(env.port("smtp"))
    try:
        assert (await raw.cmd("EHLO sender.example"))[0] == 250
        assert (await raw.cmd("MAIL FROM:<x@sender.example>"))[0] == 250
        assert (await raw.cmd("RCPT TO:<bob@example.com>"))[0] == 250
        assert (await raw.cmd("DATA"))[0] == 354
        await raw.send(b"From: x@sender.example\r\nSubject: bare\r\n\r\nhi\r\n.\r\n")
        assert (await raw.reply())[0] == 250
    finally:
        await raw.close()
    [stored] = await env.inbox("bob@example.com")
    msg = message_from_bytes(stored)
    assert msg["Date"] is None and msg["Message-ID"] is None

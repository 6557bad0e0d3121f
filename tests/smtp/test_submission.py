"""Submission on 465 (implicit TLS) and 587 (STARTTLS) through real clients:
smtplib, aiosmtplib and Debian's swaks (docs/behaviour.md §4; RFC 6409, RFC 8314)."""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import ssl
from email import message_from_bytes
from typing import Any

import aiosmtplib
import pytest

from .conftest import PASSWORD, Env, message


def smtp_client(env: Env, port_name: str) -> smtplib.SMTP:
    """A logged-in smtplib client the way a mail client connects to ``port_name``."""
    if port_name == "submissions":
        s: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", env.port("submissions"),
                                           context=env.client_ssl, timeout=30)
    else:
        s = smtplib.SMTP("127.0.0.1", env.port("submission"), timeout=30)
        s.starttls(context=env.client_ssl)
    s.ehlo("client.example")
    return s


async def aio_client(env: Env, port_name: str, user: str = "anna@example.com"
                     ) -> aiosmtplib.SMTP:
    if port_name == "submissions":
        c = aiosmtplib.SMTP(hostname="127.0.0.1", port=env.port("submissions"),
                            use_tls=True, tls_context=env.client_ssl, timeout=30)
    else:
        c = aiosmtplib.SMTP(hostname="127.0.0.1", port=env.port("submission"),
                            start_tls=True, tls_context=env.client_ssl, timeout=30)
    await c.connect()
    await c.login(user, PASSWORD)
    return c


async def test_thunderbird_style_465_lands_in_inbox(env: Env) -> None:
    """docs/behaviour.md §4: 465, full address as user name, its password -> INBOX."""
    def send() -> None:
        with smtp_client(env, "submissions") as s:
            assert s.has_extn("auth")
            s.login("anna@example.com", PASSWORD)
            refused = s.sendmail("anna@example.com", ["bob@example.com"],
                                 message("Anna <anna@example.com>", "bob@example.com",
                                         "hello bob"))
            assert refused == {}
    await asyncio.to_thread(send)
    [raw] = await env.inbox("bob@example.com")
    msg = message_from_bytes(raw)
    assert msg["Return-Path"] == "<anna@example.com>"
    assert msg["Delivered-To"] == "bob@example.com"
    received = msg["Received"]
    assert "by mail.example.net" in received and "with ESMTPSA" in received
    assert "TLSv1" in received
    assert msg["Subject"] == "hello bob"
    assert msg.get_payload().strip() == "hello"
    # The bytes are CRLF throughout (the store keeps wire format).
    assert b"\n" not in raw.replace(b"\r\n", b"")


@pytest.mark.parametrize("port_name", ["submissions", "submission"])
@pytest.mark.parametrize(("user", "cap"), [("frida@free.example", 10),
                                           ("stan@std.example", 100)])
async def test_recipient_cap_per_plan(env: Env, port_name: str, user: str, cap: int) -> None:
    """RFC 5321 §4.5.3.1.10 / docs/behaviour.md §4: past the plan's cap 452 4.5.3; the message
    still goes to exactly the accepted recipients."""
    rcpts = [f"r{i}@remote.example" for i in range(cap + 1)]
    client = await aio_client(env, port_name, user)
    try:
        errors, _ = await client.sendmail(user, rcpts, message(user, "list@remote.example"))
    finally:
        await client.quit()
    assert list(errors) == [rcpts[cap]]
    assert errors[rcpts[cap]].code == 452
    assert errors[rcpts[cap]].message.startswith("4.5.3 Too many recipients")
    queued = await env.store.list_queue()
    assert sorted(q.recipient for q in queued) == sorted(rcpts[:cap])
    assert {q.sender for q in queued} == {user}
    # The send was counted: one entry with ``cap`` recipients.
    addr = await env.store.get_address(user)
    assert [n for _, n in await env.store.sends_since(addr.id, 0)] == [cap]


@pytest.mark.parametrize("port_name", ["submissions", "submission"])
async def test_sender_mismatch_553(env: Env, port_name: str) -> None:
    def run() -> None:
        with smtp_client(env, port_name) as s:
            s.login("anna@example.com", PASSWORD)
            code, text = s.mail("bob@example.com")  # another hosted address
            assert (code, text[:5]) == (553, b"5.7.1")
            code, _ = s.mail("ceo@bank.example")
            assert code == 553
            # Envelope fine, From: header someone else: refused after DATA.
            assert s.mail("anna@example.com")[0] == 250
            assert s.rcpt("carl@example.com")[0] == 250
            code, text = s.data(message("bob@example.com", "carl@example.com"))
            assert (code, text[:5]) == (553, b"5.7.1")
    await asyncio.to_thread(run)
    assert await env.total_stored() == 0


async def test_alias_pointing_to_login_may_be_sender(env: Env) -> None:
    await env.store.add_alias("sales", "example.com", ["anna@example.com"])
    client = await aio_client(env, "submissions")
    try:
        await client.sendmail("sales@example.com", ["bob@example.com"],
                              message("Sales <sales@example.com>", "bob@example.com"))
    finally:
        await client.quit()
    assert len(await env.inbox("bob@example.com")) == 1


async def test_no_reply_refuses_incoming(env: Env) -> None:
    client = await aio_client(env, "submission")
    try:
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as exc:
            await client.sendmail("anna@example.com", ["noreply@example.com"],
                                  message("anna@example.com", "noreply@example.com"))
    finally:
        await client.quit()
    [err] = exc.value.recipients
    assert err.code == 550 and err.message.startswith("5.7.1")
    assert "no-reply" in err.message
    assert await env.total_stored() == 0


async def test_no_reply_address_can_send(env: Env) -> None:
    client = await aio_client(env, "submissions", "noreply@example.com")
    try:
        await client.sendmail("noreply@example.com", ["bob@example.com"],
                              message("noreply@example.com", "bob@example.com"))
    finally:
        await client.quit()
    assert len(await env.inbox("bob@example.com")) == 1


async def test_catchall_on_and_off(env: Env) -> None:
    from tests.conftest import add_mailbox

    await add_mailbox(env.app, "catch@example.org", PASSWORD, kind="catchall")
    client = await aio_client(env, "submissions")
    try:
        await client.sendmail("anna@example.com", ["nobody@example.org"],
                              message("anna@example.com", "nobody@example.org"))
        # example.com has no catchall: 550 5.1.1 at RCPT time (docs/behaviour.md §5).
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as exc:
            await client.sendmail("anna@example.com", ["nobody@example.com"],
                                  message("anna@example.com", "nobody@example.com"))
    finally:
        await client.quit()
    [err] = exc.value.recipients
    assert err.code == 550 and err.message.startswith("5.1.1")
    [raw] = await env.inbox("catch@example.org")
    assert message_from_bytes(raw)["Delivered-To"] == "catch@example.org"
    assert await env.total_stored() == 1


async def test_alias_with_two_targets_one_copy_each(env: Env) -> None:
    await env.store.add_alias("team", "example.com", ["bob@example.com", "carl@example.com"])
    client = await aio_client(env, "submissions")
    try:
        # team and bob both: bob still gets exactly one copy.
        await client.sendmail("anna@example.com", ["team@example.com", "bob@example.com"],
                              message("anna@example.com", "team@example.com"))
    finally:
        await client.quit()
    for who in ("bob@example.com", "carl@example.com"):
        [raw] = await env.inbox(who)
        assert message_from_bytes(raw)["Delivered-To"] == who
    assert await env.total_stored() == 2


@pytest.mark.parametrize("keep_copy", [True, False])
async def test_forwarding(env: Env, keep_copy: bool) -> None:
    bob = await env.store.get_address("bob@example.com")
    await env.store.set_forwarding(bob.id, ["carl@example.com", "bob@elsewhere.example"],
                                   keep_copy)
    client = await aio_client(env, "submission")
    try:
        await client.sendmail("anna@example.com", ["bob@example.com"],
                              message("anna@example.com", "bob@example.com"))
    finally:
        await client.quit()
    assert len(await env.inbox("bob@example.com")) == (1 if keep_copy else 0)
    assert len(await env.inbox("carl@example.com")) == 1
    assert [q.recipient for q in await env.store.list_queue()] == ["bob@elsewhere.example"]


async def test_bcc_stripped_from_every_copy(env: Env) -> None:
    body = message("anna@example.com", "bob@example.com",
                   extra="Bcc: carl@example.com,\r\n secret@remote.example\r\n")
    client = await aio_client(env, "submissions")
    try:
        await client.sendmail("anna@example.com",
                              ["bob@example.com", "carl@example.com", "secret@remote.example"],
                              body)
    finally:
        await client.quit()
    copies = await env.inbox("bob@example.com") + await env.inbox("carl@example.com")
    assert len(copies) == 2
    [queued] = await env.store.list_queue()
    from mailstack.store.base import Message

    remote = await env.store.message_bytes(Message(0, 0, 0, 0, frozenset(), 0, 0,
                                                   queued.blob_id))
    for raw in [*copies, remote]:
        # no Bcc field at all (matched as a field name: the Received header's random
        # hex queue id may well contain the letters "BCC")
        assert not re.search(rb"(?im)^(resent-)?bcc:", raw)
        assert message_from_bytes(raw)["Bcc"] is None
        assert b"secret@remote.example" not in raw
        assert message_from_bytes(raw)["To"] == "bob@example.com"


async def test_daily_limit_crossed_then_resumes(app_factory: Any,
                                                client_ssl: ssl.SSLContext) -> None:
    now = [1_800_000_000.0]
    app = await app_factory(clock=lambda: now[0],
                            plans={"free": {"daily_recipients": 5}})
    from .conftest import populate

    await populate(app)
    env = Env(app, client_ssl)
    user = "frida@free.example"
    rcpts = [f"r{i}@remote.example" for i in range(4)]
    client = await aio_client(env, "submissions", user)
    try:
        await client.sendmail(user, rcpts[:3], message(user, "x@remote.example"))
        now[0] += 3600
        errors, _ = await client.sendmail(user, rcpts, message(user, "x@remote.example"))
        # 3 + 2 = 5 allowed; the 3rd and 4th of this message are refused (RFC 5321 §4.2.3
        # 450: temporarily blocked for policy reasons), saying when sending resumes.
        assert sorted(errors) == rcpts[2:]
        err = errors[rcpts[2]]
        assert err.code == 450 and err.message.startswith("4.7.1")
        assert "resumes at 2027-01-16 08:00:00 UTC" in err.message
        assert len(await env.store.list_queue()) == 5
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await client.sendmail(user, rcpts[:1], message(user, "x@remote.example"))
        assert len(await env.store.list_queue()) == 5
        now[0] += 86400 - 3600 + 1  # the first 3 left the rolling window
        await client.sendmail(user, rcpts[:3], message(user, "x@remote.example"))
    finally:
        await client.quit()
    assert len(await env.store.list_queue()) == 8


async def test_printer_auth_login_465_no_pipelining(env: Env) -> None:
    """A scanner: EHLO, AUTH LOGIN on 465, one message, QUIT; one command at a time."""
    def run() -> None:
        s = smtplib.SMTP_SSL("127.0.0.1", env.port("submissions"), context=env.client_ssl,
                             timeout=30)
        assert s.ehlo("SCANNER-01")[0] == 250
        s.user, s.password = "anna@example.com", PASSWORD
        code, text = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235, text
        assert s.mail("anna@example.com")[0] == 250
        assert s.rcpt("bob@example.com")[0] == 250
        code, _ = s.data(message("scanner <anna@example.com>", "bob@example.com",
                                 "Scan 0001", body="see attachment"))
        assert code == 250
        assert s.quit()[0] == 221
    await asyncio.to_thread(run)
    [raw] = await env.inbox("bob@example.com")
    assert message_from_bytes(raw)["Subject"] == "Scan 0001"


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
@pytest.mark.parametrize("port_name", ["submissions", "submission"])
async def test_swaks(env: Env, port_name: str) -> None:
    tls = ["--tls-on-connect"] if port_name == "submissions" else ["--tls"]
    proc = await asyncio.create_subprocess_exec(
        "swaks", "--server", f"127.0.0.1:{env.port(port_name)}", *tls,
        "--auth", "LOGIN", "--auth-user", "anna@example.com", "--auth-password", PASSWORD,
        "--from", "anna@example.com", "--to", "bob@example.com",
        "--header", f"Subject: via swaks {port_name}", "--body", "from swaks",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    [raw] = await env.inbox("bob@example.com")
    assert message_from_bytes(raw)["Subject"] == f"via swaks {port_name}"

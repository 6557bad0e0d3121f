"""Mail submitted on 465 for the internet is DKIM-signed at acceptance (docs/behaviour.md
§6; RFC 6376, RFC 8463): the queued copy's prefix holds two signatures that dkimpy
verifies, as a receiver would, against the records ``mailstack dns`` prints; local
copies, domains without keys and unauthenticated mail are not signed."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select

from mailstack.store import schema as t
from tests.cli.conftest import Cli, make_cli
from tests.outbound.zone import dkim_dnsfunc, parse_zone

from .conftest import PASSWORD, Env, Raw, message


@pytest.fixture
def cli(env: Env, tmp_path: Path, db_url: str) -> Cli:
    """The real command on the running server's database and data dir."""
    return make_cli(tmp_path, db_url)


async def queued(env: Env) -> dict[str, bytes]:
    """recipient -> the bytes the queue runner will send (prefix + shared blob)."""
    q = t.outbound_queue.c
    async with env.store.engine.connect() as conn:
        rows = (await conn.execute(select(q.recipient, q.prefix, q.blob_id, q.size))).all()
    out = {}
    for r in rows:
        data = bytes(r.prefix) + await env.store.blobs.get(r.blob_id)
        assert len(data) == r.size
        out[r.recipient] = data
    return out


def submit(env: Env, user: str, rcpts: list[str], data: bytes) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", env.port("submissions"), context=env.client_ssl,
                          timeout=30) as s:
        s.login(user, PASSWORD)
        assert s.sendmail(user, rcpts, data) == {}


def verify(data: bytes, dnsfunc: object) -> list[bool]:
    out = []
    for i in range(data.count(b"DKIM-Signature:")):
        try:
            out.append(bool(dkim.DKIM(data).verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.DKIMException:
            out.append(False)
    return out


async def test_submitted_remote_mail_is_signed(env: Env, cli: Cli) -> None:
    await asyncio.to_thread(cli.ok, "dkim", "generate", "example.com")
    zone_text = (await asyncio.to_thread(cli.ok, "dns", "example.com")).out
    dnsfunc = dkim_dnsfunc(parse_zone(zone_text, "example.com"))
    data = message("Anna <anna@example.com>", "someone@remote.example", "signed",
                   extra="Cc: bob@example.com\r\nBcc: hidden@remote.example\r\n")
    await asyncio.to_thread(submit, env, "anna@example.com",
                            ["someone@remote.example", "bob@example.com",
                             "hidden@remote.example"], data)
    rows = await queued(env)
    assert set(rows) == {"someone@remote.example", "hidden@remote.example"}
    for sent in rows.values():
        head = sent.split(b"\r\n\r\n", 1)[0]
        assert sent.startswith(b"DKIM-Signature:")
        assert head.count(b"DKIM-Signature:") == 2
        assert b"a=rsa-sha256" in head and b"a=ed25519-sha256" in head
        assert b"h=from : from : to : cc : subject : date : message-id;" in b" ".join(head.split())
        assert b"Bcc:" not in sent  # signed after Bcc was removed
        assert verify(sent, dnsfunc) == [True, True]
        # the oversigned From: a second From added in transit breaks both signatures
        forged = sent.replace(b"Received:", b"From: ceo@example.com\r\nReceived:", 1)
        assert verify(forged, dnsfunc) == [False, False]
    # the local copy carries no signature (the prefix is only on the remote copies)
    [local] = await env.inbox("bob@example.com")
    assert b"DKIM-Signature" not in local


async def test_printer_mail_signed_with_added_fields(env: Env, cli: Cli) -> None:
    """A scanner's minimal message: From/Date/Message-ID are added first, then signed."""
    await asyncio.to_thread(cli.ok, "dkim", "generate", "example.com")
    dnsfunc = dkim_dnsfunc(parse_zone(
        (await asyncio.to_thread(cli.ok, "dns", "example.com")).out, "example.com"))
    await asyncio.to_thread(submit, env, "anna@example.com", ["x@remote.example"],
                            b"Subject: scan\r\n\r\npage\r\n")
    [sent] = (await queued(env)).values()
    assert b"\r\nFrom: anna@example.com\r\n" in sent
    assert b"d=example.com" in sent and verify(sent, dnsfunc) == [True, True]


async def test_domain_without_keys_not_signed(env: Env, cli: Cli) -> None:
    await asyncio.to_thread(cli.ok, "dkim", "generate", "example.com")  # another domain
    await asyncio.to_thread(submit, env, "frida@free.example", ["x@remote.example"],
                            message("frida@free.example", "x@remote.example"))
    [sent] = (await queued(env)).values()
    assert b"DKIM-Signature" not in sent


async def test_unauthenticated_mail_never_signed(env: Env, cli: Cli) -> None:
    """Mail from the internet claiming a hosted From, forwarded to a remote address,
    gets no signature of ours."""
    await asyncio.to_thread(cli.ok, "dkim", "generate", "example.com")
    addr = await env.store.get_address("carl@example.com")
    await env.store.set_forwarding(addr.id, ["carl@elsewhere.example"], keep_copy=False)
    raw = await Raw.open(env.port("smtp"))
    try:
        assert (await raw.cmd("EHLO sender.example"))[0] == 250
        assert (await raw.cmd("MAIL FROM:<x@sender.example>"))[0] == 250
        assert (await raw.cmd("RCPT TO:<carl@example.com>"))[0] == 250
        assert (await raw.cmd("DATA"))[0] == 354
        await raw.send(message("anna@example.com", "carl@example.com") + b".\r\n")
        assert (await raw.reply())[0] == 250
    finally:
        await raw.close()
    [sent] = (await queued(env)).values()
    assert b"DKIM-Signature" not in sent

"""CHUNKING / BDAT (RFC 3030 §2-§4) on the real MX and submission listeners.

No stdlib client speaks BDAT, so these use the raw client from conftest. Every refusal
checks the reply code, that nothing was stored, and that the session stays in step
(the chunk octets were consumed: the next command gets its own reply).
"""

from __future__ import annotations

import ssl
from typing import Any

from .conftest import PASSWORD, Env, Raw, plain_auth, populate

MSG = b"From: <a@remote.example>\r\nTo: <anna@example.com>\r\nSubject: chunks\r\n\r\n"


async def _start(env: Env, rcpt: str = "anna@example.com") -> Raw:
    raw = await Raw.open(env.port("smtp"))
    await raw.cmd("EHLO sender.example")
    assert (await raw.cmd("MAIL FROM:<a@remote.example>"))[0] == 250
    assert (await raw.cmd(f"RCPT TO:<{rcpt}>"))[0] == 250
    return raw


async def _bdat(raw: Raw, chunk: bytes, last: bool = False) -> tuple[int, str]:
    await raw.send(f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk)
    return await raw.reply()


async def test_chunking_advertised_and_chunks_stored_verbatim(env: Env) -> None:
    raw = await Raw.open(env.port("smtp"))
    try:
        _, caps = await raw.cmd("EHLO sender.example")
        assert "CHUNKING" in caps.split("\n")
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        # Length framing: a "." line inside a chunk is content, never an end marker,
        # and command-looking lines inside it never run (one BDAT = one message).
        body = b"line one\r\n.\r\nMAIL FROM:<evil@remote.example>\r\n..two dots\r\n"
        assert (await _bdat(raw, MSG)) == (250, f"2.0.0 {len(MSG)} octets received")
        assert (await _bdat(raw, body[:7]))[0] == 250
        code, text = await _bdat(raw, body[7:], last=True)
        assert code == 250 and "queued as" in text
        assert (await raw.cmd("NOOP"))[0] == 250
    finally:
        await raw.close()
    [stored] = await env.inbox("anna@example.com")
    assert stored.endswith(MSG + body)  # no dot-unstuffing in BDAT (RFC 3030 §2)
    assert await env.total_stored() == 1


async def test_bdat_zero_last_ends_message(env: Env) -> None:
    raw = await _start(env)
    try:
        assert (await _bdat(raw, MSG + b"hello\r\n"))[0] == 250
        assert (await _bdat(raw, b"", last=True))[0] == 250
    finally:
        await raw.close()
    assert len(await env.inbox("anna@example.com")) == 1


async def test_pipelined_bdat_in_one_packet(env: Env) -> None:
    raw = await _start(env)
    try:
        await raw.send(b"BDAT %d\r\n%sBDAT 6 LAST\r\nhello\nNOOP\r\n" % (len(MSG), MSG))
        assert (await raw.reply())[0] == 250
        # The last chunk holds a bare LF: refused like DATA would (docs/behaviour.md §12).
        code, _ = await raw.reply()
        assert code == 554
        assert (await raw.reply())[0] == 250  # NOOP, in step after both chunks
    finally:
        await raw.close()
    assert await env.total_stored() == 0


async def test_bdat_without_mail_or_rcpt_consumes_chunk(env: Env) -> None:
    raw = await Raw.open(env.port("smtp"))
    try:
        await raw.cmd("EHLO sender.example")
        # The chunk looks like commands: it must be swallowed, not executed.
        evil = b"MAIL FROM:<x@remote.example>\r\nRCPT TO:<anna@example.com>\r\n"
        assert (await _bdat(raw, evil, last=True)) == (503, "5.5.1 Need MAIL command first")
        await raw.cmd("MAIL FROM:<a@remote.example>")
        assert (await _bdat(raw, evil, last=True)) == (503, "5.5.1 Need RCPT command first")
        assert (await raw.cmd("NOOP"))[0] == 250
    finally:
        await raw.close()
    assert await env.total_stored() == 0


async def test_bdat_after_helo_refused(env: Env) -> None:
    raw = await Raw.open(env.port("smtp"))
    try:
        await raw.cmd("HELO sender.example")
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        assert (await _bdat(raw, MSG, last=True))[0] == 503
        assert (await raw.cmd("NOOP"))[0] == 250
    finally:
        await raw.close()
    assert await env.total_stored() == 0


async def test_data_after_bdat_refused(env: Env) -> None:
    raw = await _start(env)
    try:
        assert (await _bdat(raw, MSG))[0] == 250
        assert (await raw.cmd("DATA")) == (
            503, "5.5.1 DATA not allowed after BDAT in the same transaction")
        assert (await raw.cmd("RSET"))[0] == 250
        # DATA in the next transaction of the same session is fine (RFC 3030 §2).
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        assert (await raw.cmd("DATA"))[0] == 354
        await raw.send(MSG + b"by DATA\r\n.\r\n")
        assert (await raw.reply())[0] == 250
    finally:
        await raw.close()
    [stored] = await env.inbox("anna@example.com")
    assert stored.endswith(b"by DATA\r\n")


SMALL = {name: {"max_message_size": 4096} for name in ("free", "starter", "standard")}


async def test_chunk_past_size_limit_refused_before_reading(
        app_factory: Any, client_ssl: ssl.SSLContext) -> None:
    app = await app_factory(plans=SMALL)
    await populate(app)
    env = Env(app, client_ssl)
    raw = await _start(env)
    try:
        assert (await _bdat(raw, MSG + b"x" * 2000 + b"\r\n"))[0] == 250
        # This chunk would take the message past 4096 octets: 552, its octets are
        # dropped, and the transaction is over.
        code, text = await _bdat(raw, b"y" * 3000 + b"\r\n")
        assert (code, text[:5]) == (552, "5.3.4")
        # A chunk already pipelined after the failed one is consumed and refused.
        assert (await _bdat(raw, b"tail\r\n", last=True))[0] == 503
        assert (await raw.cmd("NOOP"))[0] == 250
        # A lying chunk size on a single chunk: refused before the octets are read.
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        assert (await _bdat(raw, b"z" * 5000, last=True))[0] == 552
        # The session goes on: a small message is accepted.
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        assert (await _bdat(raw, MSG + b"small\r\n", last=True))[0] == 250
    finally:
        await raw.close()
    assert await env.total_stored() == 1


async def test_bad_bdat_syntax_closes_session(env: Env) -> None:
    for arg in ("BDAT", "BDAT x", "BDAT -1", "BDAT 10 LATER", "BDAT 1000000000000000000000"):
        raw = await _start(env)
        try:
            code, _ = await raw.cmd(arg)
            assert code == 501
            assert await raw.reader.read() == b""  # framing lost: the session ends
        finally:
            await raw.close()
    assert await env.total_stored() == 0


async def test_bdat_on_submission_with_auth(env: Env) -> None:
    raw = await Raw.open(env.port("submissions"), env.client_ssl)
    try:
        _, caps = await raw.cmd("EHLO client.example")
        assert "CHUNKING" in caps.split("\n")
        assert (await raw.cmd(f"AUTH PLAIN {plain_auth('anna@example.com', PASSWORD)}"))[0] \
            == 235
        await raw.cmd("MAIL FROM:<anna@example.com>")
        await raw.cmd("RCPT TO:<bob@example.com>")
        msg = b"From: <anna@example.com>\r\nTo: <bob@example.com>\r\nSubject: s\r\n\r\nhi\r\n"
        assert (await _bdat(raw, msg, last=True))[0] == 250
        # The From: check applies to BDAT as to DATA.
        await raw.cmd("MAIL FROM:<anna@example.com>")
        await raw.cmd("RCPT TO:<bob@example.com>")
        forged = msg.replace(b"From: <anna@", b"From: <carl@")
        assert (await _bdat(raw, forged, last=True))[0] == 553  # as for DATA
    finally:
        await raw.close()
    assert len(await env.inbox("bob@example.com")) == 1

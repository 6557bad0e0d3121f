"""Hostile input on the wire (docs/behaviour.md §12): STARTTLS injection, SMTP smuggling, open
relay spellings, oversize, AUTH abuse, store failure. Every refusal checks the reply
code AND that nothing was stored."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import ssl
from typing import Any

import pytest

from .conftest import PASSWORD, Env, Raw, message, plain_auth, populate

# --- STARTTLS command injection (RFC 3207 §4.2, CVE-2011-0411 class) ------------------------------


@pytest.mark.parametrize("port_name", ["smtp", "submission"])
@pytest.mark.parametrize("injected", [
    b"RSET\r\n",
    b"MAIL FROM:<evil@attacker.example>\r\n",
    b"EHLO evil\r\nMAIL FROM:<evil@attacker.example>\r\nRCPT TO:<anna@example.com>\r\n",
])
async def test_starttls_discards_pipelined_plaintext(env: Env, port_name: str,
                                                     injected: bytes) -> None:
    raw = await Raw.open(env.port(port_name))
    try:
        assert (await raw.cmd("EHLO client.example"))[0] == 250
        await raw.send(b"STARTTLS\r\n" + injected)  # one segment
        code, text = await raw.reply()
        assert (code, text) == (220, "2.0.0 Ready to start TLS")
        await raw.starttls(env.client_ssl)
        # The session starts over: MAIL before EHLO is refused...
        code, _ = await raw.cmd("MAIL FROM:<anna@example.com>")
        assert code == 503
        # ...and the replies line up with our own commands only: had an injected
        # command run, its reply would be read here instead.
        code, text = await raw.cmd("EHLO client.example")
        assert code == 250 and text.startswith("mail.example.net")
        assert "STARTTLS" not in text and "AUTH PLAIN LOGIN" in text
        code, _ = await raw.cmd("RCPT TO:<anna@example.com>")
        assert code == 503  # no MAIL FROM survived from the plaintext part
        assert (await raw.cmd("QUIT"))[0] == 221
    finally:
        await raw.close()
    assert await env.total_stored() == 0


async def test_587_requires_starttls_before_mail_and_auth(env: Env) -> None:
    raw = await Raw.open(env.port("submission"))
    try:
        _, text = await raw.cmd("EHLO client.example")
        assert "STARTTLS" in text and "AUTH" not in text
        assert await raw.cmd(f"AUTH PLAIN {plain_auth('anna@example.com', PASSWORD)}") == (
            530, "5.7.0 Must issue a STARTTLS command first")
        assert (await raw.cmd("MAIL FROM:<anna@example.com>"))[:1] == (530,)
    finally:
        await raw.close()


async def test_auth_not_offered_without_tls(app_factory: Any,
                                            client_ssl: ssl.SSLContext) -> None:
    app = await app_factory(server={"allow_plaintext_auth_on_loopback": False})
    await populate(app)
    raw = await Raw.open(app.ports["smtp"])
    try:
        code, text = await raw.cmd("EHLO client.example")
        assert "AUTH" not in text and "STARTTLS" in text
        code, text = await raw.cmd(f"AUTH PLAIN {plain_auth('anna@example.com', PASSWORD)}")
        assert (code, text[:6]) == (538, "5.7.11")
        assert (await raw.cmd("STARTTLS"))[0] == 220
        await raw.starttls(client_ssl)
        code, text = await raw.cmd("EHLO client.example")
        assert "AUTH PLAIN LOGIN" in text
        code, _ = await raw.cmd(f"AUTH PLAIN {plain_auth('anna@example.com', PASSWORD)}")
        assert code == 235
    finally:
        await raw.close()


async def test_submission_requires_auth(env: Env) -> None:
    raw = await Raw.open(env.port("submissions"), env.client_ssl)
    try:
        await raw.cmd("EHLO client.example")
        assert await raw.cmd("MAIL FROM:<anna@example.com>") == (
            530, "5.7.0 Authentication required")
        assert (await raw.cmd("RCPT TO:<bob@example.com>"))[0] == 503
    finally:
        await raw.close()
    assert await env.total_stored() == 0


# --- SMTP smuggling (CVE-2023-51764 class) --------------------------------------------------------

SMUGGLED = (b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nevil\r\n")


SMUGGLING_MARKERS = [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r",
                     b"\n..\n", b"\r\n\x00.\r\n"]


async def test_smuggling_variants_never_split(env: Env) -> None:
    """Each known end-of-data spelling, one transaction each on one connection."""
    raw = await Raw.open(env.port("smtp"))
    try:
        await raw.cmd("EHLO sender.example")
        for marker in SMUGGLING_MARKERS:
            assert (await raw.cmd("MAIL FROM:<someone@remote.example>"))[0] == 250
            assert (await raw.cmd("RCPT TO:<anna@example.com>"))[0] == 250
            assert (await raw.cmd("DATA"))[0] == 354
            await raw.send(b"From: someone@remote.example\r\nSubject: one\r\n\r\nfirst"
                           + marker + SMUGGLED + b".\r\n")
            code, text = await raw.reply()
            assert (code, text[:5]) == (554, "5.6.0"), (marker, text)
            # Exactly one reply for the whole DATA: no second envelope was ever read.
            assert (await raw.cmd("NOOP"))[0] == 250, marker
        assert (await raw.cmd("QUIT"))[0] == 221
    finally:
        await raw.close()
    assert await env.total_stored() == 0


async def test_dot_transparency_kept_and_only_crlf_dot_crlf_ends(env: Env) -> None:
    raw = await Raw.open(env.port("smtp"))
    try:
        await raw.cmd("EHLO sender.example")
        await raw.cmd("MAIL FROM:<someone@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        await raw.cmd("DATA")
        await raw.send(b"Subject: dots\r\n\r\n..leading dot\r\n.x\r\n.\r\n")
        assert (await raw.reply())[0] == 250
    finally:
        await raw.close()
    [stored] = await env.inbox("anna@example.com")
    assert stored.endswith(b"\r\n\r\n.leading dot\r\nx\r\n")


# --- open relay (docs/behaviour.md §4, §5) --------------------------------------------------------

RELAY_TABLE = [
    ("<user@remote.example>", 550, "5.7.1"),
    ("<USER@Remote.Example>", 550, "5.7.1"),
    ("<@example.com:user@remote.example>", 550, "5.7.1"),  # source route: final counts
    ("<@example.com,@x.example:user@remote.example>", 550, "5.7.1"),
    ("<user%remote.example@example.com>", 550, "5.1.1"),  # percent hack: local, unknown
    ("<remote.example!user@example.com>", 550, "5.1.1"),  # bang path: local, unknown
    ('<"user@remote.example"@example.com>', 550, "5.1.1"),  # quoted @: local, unknown
    ("<user@[10.0.0.1]>", 550, "5.7.1"),  # address literal
    ("<user@[IPv6:::1]>", 550, "5.7.1"),
    ("<user@example.com.>", 501, "5.1.3"),  # trailing dot: refused outright
    ("<user@remote.example.>", 501, "5.1.3"),
    ("<user@127.0.0.1>", 501, "5.1.3"),  # bare IP
    ("<user@remote.example\r>", 501, "5.5.2"),
    ("user@remote.example", 550, "5.7.1"),  # no brackets
]


async def test_open_relay_table_port_25(env: Env) -> None:
    """One transaction per spelling on one connection (keeps the suite fast)."""
    raw = await Raw.open(env.port("smtp"))
    try:
        await raw.cmd("EHLO sender.example")
        for rcpt, code, enhanced in RELAY_TABLE:
            assert (await raw.cmd("MAIL FROM:<spammer@remote.example>"))[0] == 250, rcpt
            got = await raw.cmd(f"RCPT TO:{rcpt}")
            assert (got[0], got[1][:5]) == (code, enhanced), (rcpt, got)
            assert (await raw.cmd("DATA"))[0] == 503, rcpt  # no recipient was accepted
            assert (await raw.cmd("RSET"))[0] == 250
    finally:
        await raw.close()
    assert await env.total_stored() == 0


async def test_open_relay_table_port_587(env: Env) -> None:
    """587 without AUTH accepts nothing at all; with AUTH, literals stay refused."""
    raw = await Raw.open(env.port("submission"))
    try:
        await raw.cmd("EHLO sender.example")
        await raw.cmd("STARTTLS")
        await raw.starttls(env.client_ssl)
        await raw.cmd("EHLO sender.example")
        assert (await raw.cmd("MAIL FROM:<spammer@remote.example>"))[:1] == (530,)
        for rcpt, _, _ in RELAY_TABLE:
            assert (await raw.cmd(f"RCPT TO:{rcpt}"))[0] == 503
        assert (await raw.cmd("DATA"))[0] == 503
        assert (await raw.cmd(f"AUTH PLAIN {plain_auth('anna@example.com', PASSWORD)}")
                )[0] == 235
        assert (await raw.cmd("MAIL FROM:<anna@example.com>"))[0] == 250
        for rcpt in ("<user@[10.0.0.1]>", "<user@[IPv6:::1]>"):
            assert (await raw.cmd(f"RCPT TO:{rcpt}"))[:2] == (
                550, "5.7.1 Address literals are not accepted as destinations")
    finally:
        await raw.close()
    assert await env.total_stored() == 0


# --- size (RFC 1870) ------------------------------------------------------------------------------

SMALL = {name: {"max_message_size": 4096} for name in ("free", "starter", "standard")}


async def test_oversize_552(app_factory: Any, client_ssl: ssl.SSLContext) -> None:
    app = await app_factory(plans=SMALL)
    await populate(app)
    env = Env(app, client_ssl)
    raw = await Raw.open(env.port("smtp"))
    try:
        _, caps = await raw.cmd("EHLO sender.example")
        assert "SIZE 4096" in caps
        assert (await raw.cmd("MAIL FROM:<a@remote.example> SIZE=5000"))[:1] == (552,)
        # SIZE that lies: the actual bytes are counted.
        assert (await raw.cmd("MAIL FROM:<a@remote.example> SIZE=100"))[0] == 250
        assert (await raw.cmd("RCPT TO:<anna@example.com>"))[0] == 250
        assert (await raw.cmd("DATA"))[0] == 354
        await raw.send(b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 0
                       + (b"y" * 98 + b"\r\n") * 60 + b".\r\n")
        code, text = await raw.reply()
        assert (code, text[:5]) == (552, "5.3.4")
        # The session goes on: a small message right after is accepted.
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        await raw.cmd("DATA")
        await raw.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
        assert (await raw.reply())[0] == 250
    finally:
        await raw.close()
    assert await env.total_stored() == 1


async def test_long_line_refused(env: Env) -> None:
    raw = await Raw.open(env.port("smtp"))
    try:
        await raw.cmd("EHLO sender.example")
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        await raw.cmd("DATA")
        await raw.send(b"Subject: long\r\n\r\n" + b"z" * 5000 + b"\r\n.\r\n")
        code, text = await raw.reply()
        assert (code, text[:5]) == (554, "5.6.0")
        assert (await raw.cmd("NOOP"))[0] == 250
    finally:
        await raw.close()
    assert await env.total_stored() == 0


# --- AUTH abuse (RFC 4954; docs/behaviour.md §2 brute force) --------------------------------------


async def test_auth_failures_same_reply_then_session_closed(env: Env) -> None:
    raw = await Raw.open(env.port("submissions"), env.client_ssl)
    try:
        await raw.cmd("EHLO client.example")
        unknown = await raw.cmd(f"AUTH PLAIN {plain_auth('ghost@example.com', 'x')}")
        wrong = await raw.cmd(f"AUTH PLAIN {plain_auth('anna@example.com', 'wrong')}")
        assert unknown == wrong == (535, "5.7.8 Authentication credentials invalid")
        assert (await raw.cmd("AUTH PLAIN !!notbase64")) == (501, "5.5.2 Cannot decode base64")
        assert (await raw.cmd("AUTH LOGIN")) == (334, "VXNlcm5hbWU6")
        assert (await raw.cmd("*")) == (501, "5.0.0 Authentication aborted")
        # authzid different from authcid: a failure like any other (RFC 4616 §2); the
        # third failure in one session closes it.
        import base64
        other = base64.b64encode(f"bob@example.com\0anna@example.com\0{PASSWORD}".encode())
        code, text = await raw.cmd(f"AUTH PLAIN {other.decode()}")
        assert (code, text[:5]) == (421, "4.7.0")
    finally:
        await raw.close()
    # (a security notice may be logged after the failures: it runs in the background)
    events = [e.event for e in await env.store.list_activity("anna@example.com")]
    assert events.count("login_fail") == 2 and "login_ok" not in events


async def test_auth_throttle_then_clean_network_still_works(app_factory: Any,
                                                            client_ssl: ssl.SSLContext
                                                            ) -> None:
    app = await app_factory(auth={"lock_after_failures": 3, "slow_after_failures": 2,
                                  "ipv4_prefix": 32})
    await populate(app)
    port = app.ports["submissions"]

    def attempt(password: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
        with smtplib.SMTP_SSL("127.0.0.1", port, context=client_ssl, timeout=30,
                              source_address=(source, 0)) as s:
            s.ehlo("client.example")
            s.user, s.password = "anna@example.com", password
            try:
                return s.auth("PLAIN", s.auth_plain)
            except smtplib.SMTPAuthenticationError as exc:
                return exc.smtp_code, exc.smtp_error
            except smtplib.SMTPResponseException as exc:
                return exc.smtp_code, exc.smtp_error

    for _ in range(3):
        assert (await asyncio.to_thread(attempt, "wrong"))[0] == 535
    code, text = await asyncio.to_thread(attempt, PASSWORD)  # locked: even the right one
    assert (code, text[:5]) == (454, b"4.7.0")
    assert b"try again after" in text
    # The real user elsewhere (another network) still gets in.
    code, _ = await asyncio.to_thread(attempt, PASSWORD, "127.0.0.2")
    assert code == 235


# --- durability: store failure -> 451, nothing stored ---------------------------------------------


async def test_store_failure_451_nothing_stored(env: Env) -> None:
    tmp = env.store.blobs.tmp
    shutil.rmtree(tmp)
    tmp.write_bytes(b"not a directory")  # every blob write now fails (ENOTDIR)
    raw = await Raw.open(env.port("smtp"))
    try:
        await raw.cmd("EHLO sender.example")
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        await raw.cmd("DATA")
        await raw.send(message("a@remote.example", "anna@example.com") + b".\r\n")
        code, text = await raw.reply()
        assert (code, text[:5]) == (451, "4.3.0")
        assert await env.total_stored() == 0
        tmp.unlink()
        tmp.mkdir()
        await raw.cmd("MAIL FROM:<a@remote.example>")
        await raw.cmd("RCPT TO:<anna@example.com>")
        await raw.cmd("DATA")
        await raw.send(message("a@remote.example", "anna@example.com") + b".\r\n")
        assert (await raw.reply())[0] == 250
    finally:
        await raw.close()
    assert await env.total_stored() == 1


async def test_mx_receives_for_hosted_domain(env: Env) -> None:
    def run() -> None:
        with smtplib.SMTP("127.0.0.1", env.port("smtp"), timeout=30) as s:
            s.starttls(context=env.client_ssl)
            refused = s.sendmail("x@remote.example", ["anna@example.com", "ANNA@Example.COM"],
                                 message("x@remote.example", "anna@example.com"))
            assert refused == {}
    await asyncio.to_thread(run)
    [raw] = await env.inbox("anna@example.com")  # one copy per final mailbox
    assert b"with ESMTPS id" in raw and b"Return-Path: <x@remote.example>" in raw


async def test_every_reply_has_enhanced_code(env: Env) -> None:
    raw = await Raw.open(env.port("smtp"))
    try:
        for line in ("FOO", "MAIL", "RCPT TO:<a@b.example>", "DATA", "NOOP", "RSET",
                     "VRFY anna", "HELP", "MAIL FROM:<bad", "\x01"):
            code, text = await raw.cmd(line)
            assert text[:1] == str(code)[0] and text[1:2] == ".", (line, code, text)
    finally:
        await raw.close()


async def test_connections_per_ip_capped(app_factory: Any, client_ssl: ssl.SSLContext) -> None:
    app = await app_factory(smtp={"max_connections_per_ip": 2})
    first = await Raw.open(app.ports["smtp"])
    second = await Raw.open(app.ports["smtp"])
    reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["smtp"])
    line = await reader.readline()
    assert line.startswith(b"421 4.7.0 ")
    assert await reader.read() == b""  # closed by the server
    writer.close()
    await first.close()
    await second.close()


async def test_shutdown_tells_open_sessions(env: Env) -> None:
    raw = await Raw.open(env.port("smtp"))
    await raw.cmd("EHLO sender.example")
    await env.app.stop(grace=0)
    code, text = await raw.reply()
    assert (code, text[:5]) == (421, "4.3.2")
    await raw.close()

"""MIME nesting cap on DATA (docs/behaviour.md §12 "MIME bombs") and RFC 5321 §4.1.1.3's
domain-less ``RCPT TO:<Postmaster>``, through the MX listener."""

from __future__ import annotations

import asyncio
import smtplib

from tests.conftest import add_mailbox
from tests.smtp.conftest import Env, message


def nested(depth: int) -> bytes:
    head = b"From: x@remote.example\r\nTo: anna@example.com\r\nSubject: bomb\r\n"
    parts = []
    for i in range(depth):
        parts.append(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'
                     .encode())
    tail = b"Content-Type: text/plain\r\n\r\ndeep\r\n" + b"".join(
        f"--b{i}--\r\n".encode() for i in reversed(range(depth)))
    return head + b"MIME-Version: 1.0\r\n" + b"".join(parts) + tail


def send_mx(port: int, rcpt: str, data: bytes) -> tuple[int, int, bytes]:
    """One MX transaction with smtplib (in a thread: the server shares our loop)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.example")
        c.mail("x@remote.example")
        rcpt_code, _ = c.rcpt(rcpt)
        if rcpt_code != 250:
            return rcpt_code, 0, b""
        code, text = c.data(data)
        return rcpt_code, code, text


async def test_mime_nesting_cap(env: Env) -> None:
    _, code, text = await asyncio.to_thread(send_mx, env.port("smtp"), "anna@example.com",
                                            nested(60))
    assert code == 554 and text.startswith(b"5.6.0") and b"nested" in text
    assert await env.total_stored() == 0
    _, code, _ = await asyncio.to_thread(send_mx, env.port("smtp"), "anna@example.com",
                                         nested(10))  # within the default cap of 50
    assert code == 250
    assert len(await env.inbox("anna@example.com")) == 1


async def test_domainless_postmaster(env: Env) -> None:
    # no postmaster yet on the first hosted domain: the address does not exist
    data = message("x@remote.example", "postmaster")
    rcpt_code, _, _ = await asyncio.to_thread(send_mx, env.port("smtp"), "<Postmaster>", data)
    assert rcpt_code == 550
    assert await env.total_stored() == 0
    await add_mailbox(env.app, "postmaster@example.com")
    rcpt_code, code, _ = await asyncio.to_thread(send_mx, env.port("smtp"), "<POSTMASTER>",
                                                 data)
    assert (rcpt_code, code) == (250, 250)
    assert len(await env.inbox("postmaster@example.com")) == 1

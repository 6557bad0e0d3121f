"""IMAP extensions on the wire: UTF-8 APPEND (RFC 6855 §4)."""

from __future__ import annotations

from mailstack.app import App
from tests.imapserver.conftest import Raw, inbox_id

UTF8_MSG = ("From: Jörg <jörg@exämple.org>\r\nTo: anna@example.com\r\n"
            "Subject: Grüße\r\n\r\nHallo\r\n").encode()


async def test_utf8_append(imap_app: App) -> None:
    assert imap_app.store is not None
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    # not enabled: BAD, nothing stored
    await raw.send(b"a APPEND INBOX UTF8 (~{%d}\r\n" % len(UTF8_MSG))
    out = [await raw.line()]
    if out[0].startswith(b"+"):
        await raw.send(UTF8_MSG + b")\r\n")
        out = await raw.until(b"a")
    assert out[-1].startswith(b"a BAD"), out
    assert await imap_app.store.list_messages(await inbox_id(imap_app)) == []
    out = await raw.cmd(b"e", b"ENABLE UTF8=ACCEPT")
    assert out[0] == b"* ENABLED UTF8=ACCEPT\r\n"
    await raw.send(b"b APPEND INBOX (\\Seen) UTF8 (~{%d}\r\n" % len(UTF8_MSG))
    assert (await raw.line()).startswith(b"+")
    await raw.send(UTF8_MSG + b")\r\n")
    out = await raw.until(b"b")
    assert out[-1].startswith(b"b OK [APPENDUID "), out
    (msg,) = await imap_app.store.list_messages(await inbox_id(imap_app))
    data = (await imap_app.store.read_messages([(msg.blob_id, msg.prefix)]))[0]
    assert data == UTF8_MSG and "\\Seen" in msg.flags
    # a plain literal inside UTF8 (...) is refused
    out = await raw.cmd(b"c", b'APPEND INBOX UTF8 ({3+}\r\nabc)')
    assert out[-1].startswith(b"c BAD"), out
    await raw.close()

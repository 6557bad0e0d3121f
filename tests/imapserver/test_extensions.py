"""IMAP extensions on the wire: UTF-8 APPEND (RFC 6855 §4), COMPRESS=DEFLATE (RFC 4978),
CATENATE (RFC 4469)."""

from __future__ import annotations

import asyncio
import contextlib
import zlib

from mailstack.app import App
from tests.imapserver.conftest import MESSAGE, Raw, folder_of, inbox_id

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


class Deflated:
    """A raw IMAP connection after COMPRESS DEFLATE (RFC 4978), client side."""

    def __init__(self, raw: Raw) -> None:
        self.raw = raw
        self.out = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self.inp = zlib.decompressobj(-15)
        self.buf = b""

    async def send(self, data: bytes) -> None:
        await self.raw.send(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    async def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = await asyncio.wait_for(self.raw.reader.read(65536), 30)
            if not chunk:
                raise ConnectionError(f"closed; buffered {self.buf!r}")
            self.buf += self.inp.decompress(chunk)
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    async def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        await self.send(tag + b" " + text + b"\r\n")
        lines = []
        while True:
            lines.append(await self.line())
            if lines[-1].startswith(tag + b" "):
                return lines


async def test_compress_deflate(imap_app: App) -> None:
    assert imap_app.store is not None
    await imap_app.store.append(await inbox_id(imap_app), UTF8_MSG)
    raw = await Raw.connect(imap_app.ports["imap"])
    out = await raw.cmd(b"a", b"COMPRESS DEFLATE")  # not before login
    assert out[-1].startswith(b"a BAD"), out
    await raw.login()
    out = await raw.cmd(b"c", b"CAPABILITY")
    assert b" COMPRESS=DEFLATE" in out[0]
    out = await raw.cmd(b"b", b"COMPRESS LZMA")
    assert out[-1].startswith(b"b BAD"), out
    out = await raw.cmd(b"z", b"COMPRESS DEFLATE")
    assert out[-1].startswith(b"z OK"), out
    z = Deflated(raw)
    out = await z.cmd(b"s", b"SELECT INBOX")
    assert out[-1].startswith(b"s OK"), out
    out = await z.cmd(b"f", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert out[0].startswith(b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {")
    out = await z.cmd(b"z2", b"COMPRESS DEFLATE")
    assert out[-1].startswith(b"z2 NO [COMPRESSIONACTIVE]"), out
    out = await z.cmd(b"n", b"NOOP")
    assert out[-1].startswith(b"n OK")
    await raw.close()


async def test_compression_bomb_is_cut(imap_app: App) -> None:
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    assert (await raw.cmd(b"z", b"COMPRESS DEFLATE"))[-1].startswith(b"z OK")
    z = Deflated(raw)
    # 256 MiB of one line in ~256 KiB of deflate: inflated only up to the line limit
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    await raw.send(bomb.compress(b"a SEARCH SUBJECT "))
    block = b"x" * (1 << 20)
    sent = 0
    with contextlib.suppress(ConnectionError):
        for _ in range(256):
            data = bomb.compress(block)
            if data:
                raw.writer.write(data)
                await raw.writer.drain()
                sent += len(data)
        raw.writer.write(bomb.flush(zlib.Z_SYNC_FLUSH))
        await raw.writer.drain()
    assert sent < 2 << 20
    line = await z.line()
    assert line.startswith(b"* BYE"), line
    other = await Raw.connect(imap_app.ports["imap"])  # the server is unhurt
    await other.login()
    assert (await other.cmd(b"n", b"NOOP"))[-1].startswith(b"n OK")
    await other.close()
    await raw.close()


async def test_catenate(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    src = await imap_app.store.append(fid, MESSAGE)
    uv = (await imap_app.store.get_folder_by_id(fid)).uidvalidity  # type: ignore[union-attr]
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    assert b" CATENATE" in (await raw.cmd(b"c", b"CAPABILITY"))[0]
    text = b"New text of the forwarded message.\r\n"
    url = f"/INBOX;UIDVALIDITY={uv}/;UID={src.uid}/;SECTION=HEADER".encode()
    out = await raw.cmd(b"a", b'APPEND Drafts (\\Draft) CATENATE (URL "' + url
                        + b'" TEXT {%d+}\r\n' % len(text) + text + b")")
    assert out[-1].startswith(b"a OK [APPENDUID "), out
    drafts = await folder_of(imap_app, "Drafts")
    (msg,) = await imap_app.store.list_messages(drafts)
    data = (await imap_app.store.read_messages([(msg.blob_id, msg.prefix)]))[0]
    header = MESSAGE[:MESSAGE.index(b"\r\n\r\n") + 4]
    assert data == header + text and "\\Draft" in msg.flags
    # MULTIAPPEND of two CATENATE messages, one with an absolute URL of this account
    absolute = (f"imap://anna%40example.com@mail.example.net/INBOX/;UID={src.uid}"
                f"/;SECTION=TEXT").encode()
    out = await raw.cmd(b"b", b'APPEND Drafts CATENATE (TEXT {4+}\r\nab\r\n URL "' + absolute
                        + b'") CATENATE (URL "' + url + b'")')
    assert out[-1].startswith(b"b OK [APPENDUID "), out
    assert len(await imap_app.store.list_messages(drafts)) == 3
    # refusals: nothing stored
    for tag, bad in ((b"x1", f"/INBOX;UIDVALIDITY={uv + 1}/;UID={src.uid}"),
                     (b"x2", "/INBOX/;UID=999"), (b"x3", "/Nowhere/;UID=1"),
                     (b"x4", f"imap://bob%40example.com@mail.example.net/INBOX/;UID={src.uid}"),
                     (b"x5", f"imap://elsewhere.example/INBOX/;UID={src.uid}"),
                     (b"x6", "http://example.com/x")):
        out = await raw.cmd(tag, b'APPEND Drafts CATENATE (TEXT {2+}\r\nab URL "'
                            + bad.encode() + b'")')
        assert out[-1].startswith(tag + b" NO [BADURL "), (bad, out)
    assert len(await imap_app.store.list_messages(drafts)) == 3
    await raw.close()

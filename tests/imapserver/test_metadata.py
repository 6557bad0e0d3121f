"""METADATA (RFC 5464) on the wire: server and mailbox entries, /private and /shared,
DEPTH and MAXSIZE, the size and count limits, and the stored state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailstack.app import App
from tests.conftest import add_mailbox
from tests.imapserver.conftest import ADDR, PW, Raw, folder_of


async def _session(app: App) -> Raw:
    raw = await Raw.connect(app.ports["imap"])
    await raw.login()
    return raw


async def test_metadata_server_and_mailbox_entries(imap_app: App) -> None:
    assert imap_app.store is not None
    raw = await _session(imap_app)
    assert b" METADATA" in (await raw.cmd(b"c", b"CAPABILITY"))[0]
    out = await raw.cmd(b"a", b'SETMETADATA "" (/private/comment "my server note" '
                              b'/shared/vendor/x/y "deep")')
    assert out[-1].startswith(b"a OK"), out
    out = await raw.cmd(b"b", b'SETMETADATA INBOX (/shared/comment {5+}\r\nhello)')
    assert out[-1].startswith(b"b OK"), out
    out = await raw.cmd(b"g", b'GETMETADATA "" /private/comment')
    assert out[0] == b'* METADATA "" ("/private/comment" "my server note")\r\n', out
    out = await raw.cmd(b"h", b'GETMETADATA INBOX (/shared/comment /private/comment)')
    assert out[0] == (b'* METADATA "INBOX" ("/shared/comment" "hello" '
                      b'"/private/comment" NIL)\r\n'), out
    out = await raw.cmd(b"d1", b'GETMETADATA (DEPTH 1) "" /shared/vendor')
    assert b"/shared/vendor/x/y" not in out[0]
    out = await raw.cmd(b"di", b'GETMETADATA (DEPTH infinity) "" /shared/vendor')
    assert b'"/shared/vendor/x/y" "deep"' in out[0], out
    out = await raw.cmd(b"m", b'GETMETADATA (MAXSIZE 4) "" (/private/comment)')
    assert out[-1].startswith(b"m OK [METADATA LONGENTRIES 14]"), out
    # NIL removes; a removed entry is NIL
    await raw.cmd(b"r", b'SETMETADATA "" (/private/comment NIL)')
    out = await raw.cmd(b"g2", b'GETMETADATA "" /private/comment')
    assert out[0] == b'* METADATA "" ("/private/comment" NIL)\r\n'
    # errors
    out = await raw.cmd(b"x1", b'SETMETADATA Nowhere (/shared/comment "x")')
    assert out[-1].startswith(b"x1 NO [NONEXISTENT]"), out
    for n, bad in enumerate((b"/comment", b"/private", b"/private//x", b"/shared/x/",
                             b"/private/a*b")):
        out = await raw.cmd(b"y%d" % n, b'SETMETADATA "" (' + bad + b' "v")')
        assert out[-1].startswith(b"y%d BAD" % n), (bad, out)
    # mailbox entries follow RENAME, go with DELETE
    await raw.cmd(b"c1", b"CREATE Projects")
    await raw.cmd(b"s1", b'SETMETADATA Projects (/private/color "blue")')
    await raw.cmd(b"rn", b"RENAME Projects Work")
    out = await raw.cmd(b"g3", b"GETMETADATA Work /private/color")
    assert b'"blue"' in out[0], out
    fid = await folder_of(imap_app, "Work")
    await raw.cmd(b"dl", b"DELETE Work")
    addr = await imap_app.store.get_address(ADDR)
    assert addr is not None
    assert await imap_app.store.metadata_get(addr.id, fid, ["/private/color"]) == []
    await raw.close()


async def test_metadata_limits(app_factory: Callable[..., Any]) -> None:
    app: App = await app_factory(imap={"metadata_max_value_size": 1024,
                                       "metadata_max_entries": 16})
    await add_mailbox(app, ADDR, PW)
    assert app.store is not None
    raw = await _session(app)
    big = b"v" * 1025
    out = await raw.cmd(b"a", b'SETMETADATA "" (/private/big {%d+}\r\n' % len(big) + big + b")")
    assert out[-1].startswith(b"a NO [METADATA MAXSIZE 1024]"), out
    items = b" ".join(b'/private/e%d "x"' % i for i in range(16))
    assert (await raw.cmd(b"b", b'SETMETADATA "" (' + items + b")"))[-1].startswith(b"b OK")
    out = await raw.cmd(b"c", b'SETMETADATA INBOX (/private/one "more" /shared/two "x")')
    assert out[-1].startswith(b"c NO [METADATA TOOMANY]"), out
    addr = await app.store.get_address(ADDR)
    assert addr is not None
    inbox = await folder_of(app, "INBOX")
    assert await app.store.metadata_get(addr.id, inbox, ["/private/one", "/shared/two"]) == []
    assert len(await app.store.metadata_get(addr.id, 0, ["/private"], "1")) == 16
    # replacing an entry does not count twice; removing makes room
    assert (await raw.cmd(b"d", b'SETMETADATA "" (/private/e1 "y")'))[-1].startswith(b"d OK")
    out = await raw.cmd(b"f", b'SETMETADATA "" (/private/e0 NIL)')
    assert out[-1].startswith(b"f OK")
    out = await raw.cmd(b"g", b'SETMETADATA INBOX (/private/one ~{3+}\r\na\x00b)')
    assert out[-1].startswith(b"g OK"), out
    await raw.send(b"h GETMETADATA INBOX /private/one\r\n")
    assert await raw.line() == b'* METADATA "INBOX" ("/private/one" ~{3}\r\n'
    assert await raw.reader.readexactly(5) == b"a\x00b)\r"
    assert (await raw.until(b"h"))[-1].startswith(b"h OK")
    await raw.close()

"""MOVE and COPY into the selected mailbox (RFC 6851 §3): allowed, with new UIDs."""

from __future__ import annotations

import re

from mailstack.app import App
from tests.imapserver.conftest import Raw, inbox_id, message


async def _login(app: App) -> Raw:
    r = await Raw.connect(app.ports["imap"])
    await r.login()
    return r


async def test_move_and_copy_into_the_selected_mailbox(imap_app: App) -> None:
    """RFC 6851 §3: MOVE to the selected mailbox is allowed; the messages get new UIDs
    (COPYUID says which), the old numbers are expunged and the new ones arrive as
    EXISTS, for this session and for another one. COPY likewise adds copies."""
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    for i in range(3):
        await imap_app.store.append(fid, message(f"m{i}"))
    a = await _login(imap_app)
    await a.cmd(b"s", b"SELECT INBOX")
    b = await _login(imap_app)
    await b.cmd(b"s", b"SELECT INBOX")
    out = await a.cmd(b"1", b"UID MOVE 1:2 INBOX")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 1:2 4:5\] .*\r\n", out[0]), out
    assert out[1:4] == [b"* 2 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n", b"* 3 EXISTS\r\n"], out
    assert out[-1].startswith(b"1 OK")
    out = await b.cmd(b"2", b"NOOP")
    assert out[:3] == [b"* 2 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n", b"* 3 EXISTS\r\n"], out
    out = await a.cmd(b"3", b"COPY 1 INBOX")
    assert re.fullmatch(rb"3 OK \[COPYUID \d+ 3 6\] .*\r\n", out[-1]), out
    assert b"* 4 EXISTS\r\n" in out
    assert [r.uid for r in await imap_app.store.message_rows(fid)] == [3, 4, 5, 6]
    await a.close()
    await b.close()

"""MULTIAPPEND (RFC 3502) at the wire: several messages in one APPEND, stored all or
none, answered with APPENDUID for the whole set (RFC 4315 §3); a selected session sees
them all arrive. Sent raw (no Python client library speaks MULTIAPPEND), with
non-synchronizing (LITERAL+) and synchronizing literals."""

from __future__ import annotations

import re

from mailstack.app import App
from tests.imapserver.conftest import Raw, inbox_id, message


def _lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


async def _login(app: App) -> Raw:
    r = await Raw.connect(app.ports["imap"])
    await r.login()
    return r


async def test_multiappend_stores_all_with_appenduid(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    watcher = await _login(imap_app)
    await watcher.cmd(b"s", b"SELECT INBOX")
    r = await _login(imap_app)
    msgs = [message(f"multi {i}") for i in range(3)]
    cmd = (b"a APPEND INBOX (\\Seen) " + _lit(msgs[0])
           + b' (\\Flagged $Work) "05-Mar-2024 10:11:12 +0100" ' + _lit(msgs[1])
           + b" " + _lit(msgs[2]) + b"\r\n")
    await r.send(cmd)
    out = await r.until(b"a")
    m = re.fullmatch(rb"a OK \[APPENDUID (\d+) 1:3\] .*\r\n", out[-1])
    assert m, out
    rows = await imap_app.store.get_messages(fid, [1, 2, 3])
    assert [sorted(x.flags) for x in rows] == [["\\Seen"], ["$Work", "\\Flagged"], []]
    assert rows[1].internal_date == 1709629872  # 2024-03-05 09:11:12 UTC
    assert [await imap_app.store.message_bytes(x) for x in rows] == msgs
    folder = await imap_app.store.get_folder_by_id(fid)
    assert folder is not None and int(m.group(1)) == folder.uidvalidity
    out = await watcher.cmd(b"n", b"NOOP")
    assert out[0] == b"* 3 EXISTS\r\n"
    # synchronizing literals: the server asks for each one with "+"
    await r.send(b"b APPEND INBOX {%d}\r\n" % len(msgs[0]))
    assert (await r.line()).startswith(b"+ ")
    await r.send(msgs[0] + b" (\\Draft) {%d}\r\n" % len(msgs[1]))
    assert (await r.line()).startswith(b"+ ")
    await r.send(msgs[1] + b"\r\n")
    out = await r.until(b"b")
    assert re.fullmatch(rb"b OK \[APPENDUID \d+ 4:5\] .*\r\n", out[-1]), out
    assert [x.uid for x in await imap_app.store.message_rows(fid)] == [1, 2, 3, 4, 5]
    await r.close()
    await watcher.close()


async def test_multiappend_is_all_or_nothing(imap_app: App) -> None:
    """One bad message refuses the whole command and nothing is stored."""
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    r = await _login(imap_app)
    good = message("good")
    cases = [
        (b"INBOX " + _lit(good) + b" " + _lit(b""), b"NO [CANNOT]"),
        (b"INBOX " + _lit(good) + b" (\\Bogus) " + _lit(good), b"BAD"),
        (b"Nowhere " + _lit(good) + b" " + _lit(good), b"NO [TRYCREATE]"),
    ]
    for i, (args, reply) in enumerate(cases):
        tag = b"t%d" % i
        await r.send(tag + b" APPEND " + args + b"\r\n")
        out = await r.until(tag)
        assert out[-1].startswith(tag + b" " + reply), out
        assert await imap_app.store.message_rows(fid) == []
    # the session is fine afterwards
    out = await r.cmd(b"z", b"APPEND INBOX " + _lit(good))
    assert re.fullmatch(rb"z OK \[APPENDUID \d+ 1\] .*\r\n", out[-1]), out
    await r.close()


async def test_multiappend_database_fault_mid_way_stores_nothing(imap_app: App) -> None:
    """A real fault inside the one transaction (a database trigger refusing the second
    row): the first row is rolled back too, the reply is the store's temporary
    NO [UNAVAILABLE], and the session goes on."""
    from sqlalchemy import text

    store = imap_app.store
    assert store is not None
    fid = await inbox_id(imap_app)
    async with store.engine.begin() as conn:
        if store.is_sqlite:
            await conn.execute(text(
                "CREATE TRIGGER no_second BEFORE INSERT ON messages "
                "WHEN (SELECT count(*) FROM messages) >= 1 "
                "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"))
        else:
            await conn.execute(text(
                "CREATE FUNCTION no_second() RETURNS trigger AS $$ BEGIN "
                "IF (SELECT count(*) FROM messages) >= 1 THEN "
                "RAISE EXCEPTION 'injected fault'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql"))
            await conn.execute(text(
                "CREATE TRIGGER no_second BEFORE INSERT ON messages "
                "FOR EACH ROW EXECUTE FUNCTION no_second()"))
    r = await _login(imap_app)
    out = await r.cmd(b"a", b"APPEND INBOX " + _lit(message("one")) + b" "
                      + _lit(message("two")))
    assert out[-1].startswith(b"a NO [UNAVAILABLE]"), out
    assert await store.message_rows(fid) == []
    status = await store.folder_status(fid)
    assert status.uidnext == 1 and status.messages == 0  # UIDs not consumed either
    out = await r.cmd(b"b", b"NOOP")
    assert out[-1].startswith(b"b OK")
    await r.close()


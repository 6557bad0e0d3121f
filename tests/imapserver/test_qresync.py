"""QRESYNC (RFC 7162 §3.2) at the wire: ENABLE QRESYNC, SELECT/EXAMINE with the
QRESYNC parameter (VANISHED (EARLIER) + FETCH of changed messages), VANISHED instead
of EXPUNGE once enabled (other sessions, IDLE, EXPUNGE, UID EXPUNGE, MOVE), and UID
FETCH (CHANGEDSINCE n VANISHED). Checked against the store's state."""

from __future__ import annotations

import imaplib
import re

from mailstack.app import App
from tests.imapserver.conftest import Raw, inbox_id, message, plain, run, seen_as_recent


async def _fill(app: App, n: int) -> int:
    assert app.store is not None
    fid = await inbox_id(app)
    for i in range(n):
        await app.store.append(fid, message(f"m{i}"))
    await seen_as_recent(app)
    return fid


def _code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        m = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


async def _qsession(app: App) -> Raw:
    r = await Raw.connect(app.ports["imap"])
    await r.login()
    out = await r.cmd(b"e", b"ENABLE QRESYNC")
    assert out[0] == b"* ENABLED QRESYNC\r\n"
    return r


async def test_select_qresync_reports_changes_since(imap_app: App) -> None:
    """RFC 7162 §3.2.5.2: VANISHED (EARLIER) for UIDs expunged since the client's
    MODSEQ, then FETCH (UID FLAGS MODSEQ) for changed ones; known-uids limits both; a
    UIDVALIDITY mismatch makes the server ignore the parameter."""
    assert imap_app.store is not None
    fid = await _fill(imap_app, 5)
    # without ENABLE QRESYNC the parameter is a BAD (§3.2.5)
    r = await Raw.connect(imap_app.ports["imap"])
    await r.login()
    out = await r.cmd(b"x", b"SELECT INBOX (QRESYNC (1 1))")
    assert out[-1].startswith(b"x BAD")
    await r.close()

    a = await _qsession(imap_app)
    sel = await a.cmd(b"s", b"SELECT INBOX")
    uidvalidity, high = _code(sel, b"UIDVALIDITY"), _code(sel, b"HIGHESTMODSEQ")
    await a.cmd(b"u", b"UNSELECT")
    # meanwhile, elsewhere: 2 and 4 expunged, 3 flagged, a new message 6
    await imap_app.store.store_flags(fid, [2, 4], ["\\Deleted"], "add")
    await imap_app.store.expunge(fid)
    await imap_app.store.store_flags(fid, [3], ["\\Flagged"], "add")
    await imap_app.store.append(fid, message("new"))
    out = await a.cmd(b"q", f"SELECT INBOX (QRESYNC ({uidvalidity} {high}))".encode())
    assert out[-1].startswith(b"q OK [READ-WRITE]"), out
    assert b"* 4 EXISTS\r\n" in out
    vanished = [x for x in out if x.startswith(b"* VANISHED")]
    assert vanished == [b"* VANISHED (EARLIER) 2,4\r\n"]
    fetches = [x for x in out if b" FETCH " in x]
    assert len(fetches) == 2
    assert re.fullmatch(rb"\* 2 FETCH \(UID 3 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)\r\n",
                        fetches[0]), fetches
    # new since the last session: recent for this IMAP4rev1 session (RFC 3501 §2.3.2)
    assert fetches[1].startswith(b"* 4 FETCH (UID 6 FLAGS (\\Recent) MODSEQ (")
    assert out.index(vanished[0]) < out.index(fetches[0])  # VANISHED first
    new_high = _code(out, b"HIGHESTMODSEQ")
    assert new_high > high
    # known UIDs 1:3 (and seq-match-data, accepted): only 2 vanished and 3 changed
    out = await a.cmd(b"k", f"EXAMINE INBOX (QRESYNC ({uidvalidity} {high} 1:3 (1:3 1:3)))"
                      .encode())
    assert [x for x in out if x.startswith(b"* VANISHED")] == [b"* VANISHED (EARLIER) 2\r\n"]
    assert [x.split(b" (")[0] for x in out if b" FETCH " in x] == [b"* 2 FETCH"]
    # up to date: nothing to report
    out = await a.cmd(b"n", f"SELECT INBOX (QRESYNC ({uidvalidity} {new_high}))".encode())
    assert not any(b"VANISHED" in x or b" FETCH " in x for x in out), out
    # wrong UIDVALIDITY: parameter ignored, plain SELECT (with CONDSTORE on)
    out = await a.cmd(b"w", f"SELECT INBOX (QRESYNC ({uidvalidity + 1} 1))".encode())
    assert out[-1].startswith(b"w OK")
    assert not any(b"VANISHED" in x or b" FETCH " in x for x in out), out
    await a.close()


async def test_vanished_replaces_expunge(imap_app: App) -> None:
    """RFC 7162 §3.2.10: with QRESYNC on, removals are told as VANISHED: another
    session's EXPUNGE (at the next NOOP, and at once during IDLE), our own EXPUNGE and
    UID EXPUNGE (tagged OK with HIGHESTMODSEQ), and MOVE. A session without QRESYNC
    still gets EXPUNGE."""
    assert imap_app.store is not None
    fid = await _fill(imap_app, 8)
    a = await _qsession(imap_app)
    await a.cmd(b"s", b"SELECT INBOX")
    b = await Raw.connect(imap_app.ports["imap"])
    await b.login()
    await b.cmd(b"s", b"SELECT INBOX")
    plain_rev1 = await Raw.connect(imap_app.ports["imap"])
    await plain_rev1.login()
    await plain_rev1.cmd(b"s", b"SELECT INBOX")

    await b.cmd(b"1", b"STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    out = await b.cmd(b"2", b"EXPUNGE")
    assert out[:2] == [b"* 2 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"]
    out = await a.cmd(b"3", b"NOOP")
    assert out[0] == b"* VANISHED 1:2\r\n", out
    out = await plain_rev1.cmd(b"3", b"NOOP")
    assert out[:2] == [b"* 2 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"]
    # never during a non-UID FETCH (RFC 9051 §7.5.1 holds for VANISHED too)
    await b.cmd(b"4", b"STORE 1 +FLAGS.SILENT (\\Deleted)")  # UID 3
    await b.cmd(b"5", b"EXPUNGE")
    out = await a.cmd(b"6", b"FETCH 1 (UID)")
    assert not any(b"VANISHED" in x for x in out)
    out = await a.cmd(b"7", b"NOOP")
    assert b"* VANISHED 3\r\n" in out, out
    # during IDLE: at once
    await a.send(b"i IDLE\r\n")
    assert (await a.line()).startswith(b"+ ")
    await b.cmd(b"8", b"UID STORE 4 +FLAGS.SILENT (\\Deleted)")
    line = await a.line()
    assert re.fullmatch(rb"\* 1 FETCH \(UID 4 FLAGS \(\\Deleted\) MODSEQ \(\d+\)\)\r\n",
                        line), line
    await b.cmd(b"9", b"UID EXPUNGE 4")
    assert await a.line() == b"* VANISHED 4\r\n"
    await a.send(b"DONE\r\n")
    assert (await a.until(b"i"))[-1].startswith(b"i OK")
    # our own EXPUNGE / UID EXPUNGE: VANISHED, and the tagged OK carries HIGHESTMODSEQ
    await a.cmd(b"10", b"UID STORE 5,6 +FLAGS.SILENT (\\Deleted)")
    out = await a.cmd(b"11", b"UID EXPUNGE 5")
    assert out[0] == b"* VANISHED 5\r\n"
    high = _code(out, b"HIGHESTMODSEQ")
    status = await imap_app.store.folder_status(fid)
    assert status.highestmodseq == high and status.messages == 3
    out = await a.cmd(b"12", b"EXPUNGE")
    assert out[0] == b"* VANISHED 6\r\n" and _code(out, b"HIGHESTMODSEQ") > high
    # MOVE: COPYUID, then VANISHED
    out = await a.cmd(b"13", b"UID MOVE 7 Trash")
    assert out[0].startswith(b"* OK [COPYUID ") and out[1] == b"* VANISHED 7\r\n", out
    assert out[-1].startswith(b"13 OK [HIGHESTMODSEQ ")
    assert [r.uid for r in await imap_app.store.message_rows(fid)] == [8]
    for r in (a, b, plain_rev1):
        await r.close()


async def test_uid_fetch_vanished_modifier(imap_app: App) -> None:
    """RFC 7162 §3.2.6: UID FETCH ... (CHANGEDSINCE n VANISHED) sends VANISHED (EARLIER)
    for the UIDs of the set expunged since n, then the changed messages; BAD without
    ENABLE QRESYNC."""
    assert imap_app.store is not None
    fid = await _fill(imap_app, 6)
    a = await _qsession(imap_app)
    sel = await a.cmd(b"s", b"SELECT INBOX")
    high = _code(sel, b"HIGHESTMODSEQ")
    b = await Raw.connect(imap_app.ports["imap"])
    await b.login()
    await b.cmd(b"s", b"SELECT INBOX")
    await b.cmd(b"1", b"UID STORE 2,5,6 +FLAGS.SILENT (\\Deleted)")
    await b.cmd(b"2", b"EXPUNGE")
    await b.cmd(b"3", b"UID STORE 3 +FLAGS.SILENT (\\Answered)")
    await a.cmd(b"4", b"NOOP")  # A learns of the changes (VANISHED 2,5:6)
    out = await a.cmd(b"5", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {high} VANISHED)".encode())
    assert out[0] == b"* VANISHED (EARLIER) 2,5:6\r\n", out
    assert re.fullmatch(rb"\* 2 FETCH \(UID 3 FLAGS \(\\Answered\) MODSEQ \(\d+\)\)\r\n",
                        out[1]), out
    assert len(out) == 3
    out = await a.cmd(b"6", f"UID FETCH 1:4 (FLAGS) (CHANGEDSINCE {high} VANISHED)".encode())
    assert out[0] == b"* VANISHED (EARLIER) 2\r\n"
    # a session without QRESYNC: BAD, nothing sent
    out = await b.cmd(b"7", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {high} VANISHED)".encode())
    assert out == [out[-1]] and out[-1].startswith(b"7 BAD")
    assert [r.uid for r in await imap_app.store.message_rows(fid)] == [1, 3, 4]
    await a.close()
    await b.close()


async def test_imaplib_qresync_select(imap_app: App) -> None:
    """imaplib (rev1 client): ENABLE QRESYNC and the QRESYNC SELECT parameter through
    its generic command path; the VANISHED (EARLIER) data lands in its untagged
    responses."""
    assert imap_app.store is not None
    fid = await _fill(imap_app, 3)

    def scenario() -> None:
        c = plain(imap_app)
        typ, data = c._simple_command("ENABLE", "QRESYNC")
        assert typ == "OK" and c.untagged_responses.pop("ENABLED") == [b"QRESYNC"]
        typ, _ = c.select("INBOX")
        assert typ == "OK"
        uidvalidity = int(c.untagged_responses["UIDVALIDITY"][-1])
        high = int(c.untagged_responses["HIGHESTMODSEQ"][-1])
        c.store("1", "+FLAGS.SILENT", "(\\Deleted)")
        c.expunge()
        vanished = c.untagged_responses.pop("VANISHED")
        assert vanished == [b"1"]
        c.unselect()
        c.state = "AUTH"
        typ, data = c._simple_command("SELECT", f"INBOX (QRESYNC ({uidvalidity} {high}))")
        assert typ == "OK", data
        assert c.untagged_responses.pop("VANISHED") == [b"(EARLIER) 1"]
        c.logout()

    try:
        await run(scenario)
    except imaplib.IMAP4.error as exc:  # pragma: no cover - shows the server's words
        raise AssertionError(str(exc)) from exc
    assert [r.uid for r in await imap_app.store.message_rows(fid)] == [2, 3]


async def test_held_back_expunge_keeps_highestmodseq_below_it(imap_app: App) -> None:
    """RFC 5162 errata 1810 (kept by RFC 7162): while a VANISHED is held back (non-UID
    FETCH), the MODSEQs the client sees come with an OK [HIGHESTMODSEQ n] below the held
    expunge, so a client that resynchronises from n still learns of it."""
    assert imap_app.store is not None
    fid = await _fill(imap_app, 3)
    a = await _qsession(imap_app)
    sel = await a.cmd(b"s", b"SELECT INBOX")
    high = _code(sel, b"HIGHESTMODSEQ")
    await imap_app.store.store_flags(fid, [1], ["\\Deleted"], "add")
    await imap_app.store.expunge(fid)
    await imap_app.store.store_flags(fid, [2], ["\\Flagged"], "add")
    out = await a.cmd(b"f", b"FETCH 2 (FLAGS)")
    assert not any(b"VANISHED" in x for x in out)
    assert any(b"MODSEQ (" in x for x in out)
    held = _code(out, b"HIGHESTMODSEQ")
    assert held >= high
    assert await imap_app.store.expunged_since(fid, held) == [1]  # a resync finds it
    out = await a.cmd(b"n", b"NOOP")
    assert out[0] == b"* VANISHED 1\r\n"
    await a.close()

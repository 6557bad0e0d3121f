"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4): RETURN (PARTIAL), live results with
RETURN (UPDATE) kept up to date by unsolicited ESEARCH ADDTO / REMOVEFROM after mail
arrives by SMTP and after STORE / EXPUNGE in another session, and CANCELUPDATE.
imaplib drives the basic flows; a raw client checks the order of the responses."""

from __future__ import annotations

import imaplib
import re

import aiosmtplib

from mailstack.app import App
from tests.imapserver.conftest import ADDR, Raw, inbox_id, plain, run, seen_as_recent
from tests.imapserver.test_sort_thread import _msg


async def _fill(app: App, n: int = 5) -> None:
    """Messages 1..n, sent on Jan n..1 (so DATE order is the reverse of arrival)."""
    assert app.store is not None
    fid = await inbox_id(app)
    for i in range(1, n + 1):
        await app.store.append(fid, _msg(f"m{i}", "a@x.org", ADDR,
                                         f"{10 - i} Jan 2024 10:00:00 +0000", f"<{i}@x>"),
                               internal_date=1000.0 + i)
    await seen_as_recent(app)


async def _smtp(app: App, date: str, mid: str) -> None:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=app.ports["smtp"],
                               start_tls=False) as c:
        await c.sendmail("someone@example.org", [ADDR],
                         _msg("new", "someone@example.org", ADDR, date, mid))


async def _two_sessions(app: App) -> tuple[Raw, Raw]:
    """The mailbox filled, two sessions with INBOX selected."""
    await _fill(app)
    a = await Raw.connect(app.ports["imap"])
    b = await Raw.connect(app.ports["imap"])
    for c in (a, b):
        await c.login()
        await c.cmd(b"s", b"SELECT INBOX")
    return a, b


async def _cmd(raw: Raw, tag: bytes, text: bytes) -> list[bytes]:
    """``raw.cmd`` without the RECENT counts an IMAP4rev1 session also gets."""
    return [x for x in await raw.cmd(tag, text) if not x.endswith(b" RECENT\r\n")]


def _esearch(client: imaplib.IMAP4, tag: str) -> list[bytes]:
    """The ESEARCH responses for ``tag`` imaplib collected (and forget them)."""
    got = client.untagged_responses.pop("ESEARCH", [])
    return [g for g in got if isinstance(g, bytes) and f'(TAG "{tag}")'.encode() in g]


async def test_capabilities_and_partial(imap_app: App) -> None:
    await _fill(imap_app)

    def go() -> None:
        c = plain(imap_app)
        try:
            caps = c.capabilities
            assert "CONTEXT=SEARCH" in caps and "CONTEXT=SORT" in caps and "ESORT" in caps
            c.select("INBOX")
            typ, _ = c._simple_command("UID", "SEARCH", "RETURN", "(PARTIAL 2:3)", "ALL")
            assert typ == "OK"
            (line,) = _esearch(c, _last_tag(c))
            assert re.search(rb" UID PARTIAL \(2:3 2:3\)$", line), line
            # the window of the SORTED result (DATE: 5 4 3 2 1)
            typ, _ = c._simple_command("UID", "SORT", "RETURN", "(PARTIAL 1:2 COUNT)",
                                       "(DATE)", "UTF-8", "ALL")
            assert typ == "OK"
            (line,) = _esearch(c, _last_tag(c))
            assert line.endswith(b" UID PARTIAL (1:2 5,4) COUNT 5"), line
            # a window past the end: NIL; high:low is taken as low:high
            typ, _ = c._simple_command("SEARCH", "RETURN", "(PARTIAL 9:7)", "ALL")
            assert typ == "OK"
            (line,) = _esearch(c, _last_tag(c))
            assert line.endswith(b" PARTIAL (7:9 NIL)"), line
            for bad in ("(PARTIAL 1:2 ALL)", "(PARTIAL 0:2)", "(PARTIAL)", "(PARTIAL 1:x)",
                        "(UPDATE UPDATE)"):
                try:
                    c._simple_command("SEARCH", "RETURN", bad, "ALL")
                except imaplib.IMAP4.error as exc:
                    assert "BAD" in str(exc) or "error" in str(exc).lower(), exc
                else:
                    raise AssertionError(f"{bad} accepted")
        finally:
            c.logout()

    await run(go)


def _last_tag(c: imaplib.IMAP4) -> str:
    # imaplib numbers its tags; the last command used the highest one
    return c.tagpre.decode() + str(c.tagnum - 1) if isinstance(c.tagpre, bytes) else \
        c.tagpre + str(c.tagnum - 1)


async def test_search_update_smtp_store_expunge(imap_app: App) -> None:
    """UID SEARCH RETURN (UPDATE) UNSEEN stays live: a message arriving by SMTP is
    ADDTO, \\Seen set by another session is REMOVEFROM, an EXPUNGE by another session
    is REMOVEFROM; after CANCELUPDATE nothing more comes."""
    a, b = await _two_sessions(imap_app)
    out = await a.cmd(b"U1", b"UID SEARCH RETURN (UPDATE) UNSEEN")
    assert out[0] == b'* ESEARCH (TAG "U1") UID ALL 1:5\r\n', out
    assert out[-1].startswith(b"U1 OK")
    await _smtp(imap_app, "1 Feb 2024 10:00:00 +0000", "<new1@x>")
    out = await _cmd(a, b"n1", b"NOOP")
    assert out[:2] == [b"* 6 EXISTS\r\n", b'* ESEARCH (TAG "U1") UID ADDTO (0 6)\r\n'], out
    await b.cmd(b"bn", b"NOOP")  # b learns of message 6
    assert (await b.cmd(b"st", b"UID STORE 2,6 +FLAGS.SILENT (\\Seen)"))[-1].startswith(b"st OK")
    out = await _cmd(a, b"n2", b"NOOP")
    assert b'* ESEARCH (TAG "U1") UID REMOVEFROM (0 2,6)\r\n' in out, out
    assert (await b.cmd(b"d", b"UID STORE 4 +FLAGS.SILENT (\\Deleted)"))[-1].startswith(b"d OK")
    assert (await b.cmd(b"x", b"EXPUNGE"))[-1].startswith(b"x OK")
    out = await _cmd(a, b"n3", b"NOOP")
    assert b'* ESEARCH (TAG "U1") UID REMOVEFROM (0 4)\r\n' in out, out
    assert b"* 4 EXPUNGE\r\n" in out
    # the stored state agrees with what the client now holds: 1, 3, 5
    assert (await a.cmd(b"c", b"UID SEARCH UNSEEN"))[0] == b"* SEARCH 1 3 5\r\n"
    out = await a.cmd(b"cu", b'CANCELUPDATE "U1"')
    assert out[-1].startswith(b"cu OK"), out
    await _smtp(imap_app, "2 Feb 2024 10:00:00 +0000", "<new2@x>")
    out = await _cmd(a, b"n4", b"NOOP")
    assert b"* 6 EXISTS\r\n" in out and not any(b"ESEARCH" in x for x in out), out
    out = await a.cmd(b"cu2", b'CANCELUPDATE "U1"')
    assert out[-1].startswith(b"cu2 NO"), out
    await a.close()
    await b.close()


async def test_seq_context_removefrom_before_expunge(imap_app: App) -> None:
    """A message-number context: REMOVEFROM names the number the client still knows,
    before the EXPUNGE that renumbers (RFC 5267 §4.3)."""
    a, b = await _two_sessions(imap_app)
    out = await a.cmd(b"Q", b"SEARCH RETURN (UPDATE COUNT) ALL")
    assert out[0] == b'* ESEARCH (TAG "Q") COUNT 5\r\n', out
    await b.cmd(b"d", b"STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    await b.cmd(b"x", b"EXPUNGE")
    out = await _cmd(a, b"n", b"NOOP")
    assert out[:3] == [b'* ESEARCH (TAG "Q") REMOVEFROM (0 2,4)\r\n', b"* 4 EXPUNGE\r\n",
                       b"* 2 EXPUNGE\r\n"], out
    # own EXPUNGE: the same order
    await a.cmd(b"d2", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
    out = await a.cmd(b"x2", b"EXPUNGE")
    assert out[:2] == [b'* ESEARCH (TAG "Q") REMOVEFROM (0 1)\r\n', b"* 1 EXPUNGE\r\n"], out
    await a.close()
    await b.close()


async def test_sort_update_positions(imap_app: App) -> None:
    """CONTEXT=SORT: additions and removals carry their position in the sorted result."""
    a, b = await _two_sessions(imap_app)
    out = await a.cmd(b"S1", b"UID SORT RETURN (UPDATE) (DATE) UTF-8 UNSEEN")
    assert out[0] == b'* ESEARCH (TAG "S1") UID ALL 5,4,3,2,1\r\n', out
    # sent on Jan 7: between 3 (Jan 7 too, earlier UID first) and 2 (Jan 8)
    await _smtp(imap_app, "7 Jan 2024 12:00:00 +0000", "<mid@x>")
    out = await _cmd(a, b"n1", b"NOOP")
    assert out[:2] == [b"* 6 EXISTS\r\n", b'* ESEARCH (TAG "S1") UID ADDTO (4 6)\r\n'], out
    await b.cmd(b"st", b"UID STORE 4,2 +FLAGS.SILENT (\\Seen)")
    out = await _cmd(a, b"n2", b"NOOP")
    # result was 5,4,3,6,2,1: 2 at position 5 and 4 at position 2, last first
    assert b'* ESEARCH (TAG "S1") UID REMOVEFROM (5 2) REMOVEFROM (2 4)\r\n' in out, out
    # own STORE updates the result too
    out = await a.cmd(b"st2", b"UID STORE 2 -FLAGS.SILENT (\\Seen)")
    assert b'* ESEARCH (TAG "S1") UID ADDTO (4 2)\r\n' in out, out
    # the live result equals a fresh SORT
    out = await a.cmd(b"v", b"UID SORT (DATE) UTF-8 UNSEEN")
    assert out[0] == b"* SORT 5 3 6 2 1\r\n", out
    await a.close()
    await b.close()


async def test_idle_gets_updates_and_limits(imap_app: App) -> None:
    await _fill(imap_app, 2)
    a = await Raw.connect(imap_app.ports["imap"])
    await a.login()
    await a.cmd(b"s", b"SELECT INBOX")
    out = await a.cmd(b"I", b"UID SEARCH RETURN (UPDATE MIN) ALL")
    assert out[0] == b'* ESEARCH (TAG "I") UID MIN 1\r\n', out
    out = await a.cmd(b"I", b"UID SEARCH RETURN (UPDATE) ALL")
    assert out[-1].startswith(b"I BAD"), out  # the tag names a live result already
    await a.send(b"idle IDLE\r\n")
    assert (await a.line()).startswith(b"+")
    await _smtp(imap_app, "1 Mar 2024 10:00:00 +0000", "<idle@x>")
    assert await a.line() == b"* 3 EXISTS\r\n"
    line = await a.line()
    if line.endswith(b" RECENT\r\n"):
        line = await a.line()
    assert line == b'* ESEARCH (TAG "I") UID ADDTO (0 3)\r\n'
    await a.send(b"DONE\r\n")
    assert (await a.until(b"idle"))[-1].startswith(b"idle OK")
    # at most 16 live results; the 17th still answers, with NO [NOUPDATE]
    for i in range(15):
        assert (await a.cmd(b"L%d" % i, b"SEARCH RETURN (UPDATE) ALL"))[-1].startswith(
            b"L%d OK" % i)
    out = await a.cmd(b"X", b"SEARCH RETURN (UPDATE) ALL")
    assert out[0] == b'* NO [NOUPDATE "X"] Too many live results\r\n', out
    assert out[1] == b'* ESEARCH (TAG "X") ALL 1:3\r\n' and out[-1].startswith(b"X OK")
    # leaving the mailbox ends them all
    await a.cmd(b"s2", b"SELECT INBOX")
    assert (await a.cmd(b"c", b'CANCELUPDATE "I"'))[-1].startswith(b"c NO")
    await a.close()

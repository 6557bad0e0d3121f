"""CONDSTORE (RFC 7162 §3.1) at the wire: advertised, switched on by every
CONDSTORE-enabling command, HIGHESTMODSEQ on SELECT/EXAMINE and STATUS, MODSEQ in the
FETCH responses §3.1 names, STORE UNCHANGEDSINCE with [MODIFIED], FETCH CHANGEDSINCE,
SEARCH MODSEQ. Driven with imapclient and raw connections; a second session makes the
changes another client would."""

from __future__ import annotations

import re
import ssl

from imapclient import IMAPClient

from mailstack.app import App
from tests.imapserver.conftest import ADDR, PW, Raw, inbox_id, message, run, seen_as_recent


async def _fill(app: App, n: int) -> int:
    assert app.store is not None
    fid = await inbox_id(app)
    for i in range(n):
        await app.store.append(fid, message(f"m{i}"))
    await seen_as_recent(app)
    return fid


async def _session(app: App, select: bytes = b"SELECT INBOX") -> tuple[Raw, list[bytes]]:
    r = await Raw.connect(app.ports["imap"])
    await r.login()
    return r, await r.cmd(b"s", select)


def _code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        m = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


async def test_imapclient_condstore_round_trip(imap_app: App,
                                               client_ssl: ssl.SSLContext) -> None:
    """imapclient: capability, ENABLE, HIGHESTMODSEQ, FETCH MODSEQ / CHANGEDSINCE,
    STATUS HIGHESTMODSEQ, SEARCH MODSEQ, and a change from another session."""
    await _fill(imap_app, 3)

    def scenario() -> None:
        port = imap_app.ports["imaps"]
        with IMAPClient("127.0.0.1", port=port, ssl_context=client_ssl) as c, \
                IMAPClient("127.0.0.1", port=port, ssl_context=client_ssl) as other:
            c.login(ADDR, PW)
            other.login(ADDR, PW)
            caps = c.capabilities()
            assert {b"CONDSTORE", b"QRESYNC", b"MULTIAPPEND"} <= set(caps)
            assert c.enable("CONDSTORE") == [b"CONDSTORE"]
            info = c.select_folder("INBOX")
            high = info[b"HIGHESTMODSEQ"]
            got = c.fetch([1, 2, 3], ["MODSEQ", "FLAGS"])
            assert sorted(got) == [1, 2, 3]
            assert max(v[b"MODSEQ"][0] for v in got.values()) == high
            assert c.fetch([1, 2, 3], ["FLAGS"], modifiers=[f"CHANGEDSINCE {high}"]) == {}
            other.select_folder("INBOX")
            other.add_flags([2], [b"\\Flagged"], silent=True)
            # the change reaches c as an unsolicited FETCH carrying UID and MODSEQ
            c.noop()
            changed = c.fetch([1, 2, 3], ["FLAGS"], modifiers=[f"CHANGEDSINCE {high}"])
            assert list(changed) == [2]
            assert b"\\Flagged" in changed[2][b"FLAGS"]
            new_high = changed[2][b"MODSEQ"][0]
            assert new_high > high
            st = c.folder_status("INBOX", ["HIGHESTMODSEQ", "MESSAGES"])
            assert st[b"HIGHESTMODSEQ"] == new_high
            assert c.search(["MODSEQ", str(new_high)]) == [2]

    await run(scenario)


async def test_condstore_enabled_by_fetch_modseq(imap_app: App) -> None:
    """RFC 7162 §3.1: before any enabling command STORE answers FLAGS only; after
    FETCH MODSEQ every FETCH caused by STORE, by an implicit \\Seen or by another
    session carries UID and MODSEQ."""
    await _fill(imap_app, 3)
    a, sel = await _session(imap_app)
    b, _ = await _session(imap_app)
    high = _code(sel, b"HIGHESTMODSEQ")
    assert high >= 3
    out = await a.cmd(b"1", b"STORE 1 +FLAGS (\\Answered)")
    assert out[0] == b"* 1 FETCH (FLAGS (\\Answered))\r\n"
    out = await a.cmd(b"2", b"FETCH 1 (MODSEQ)")
    # RFC 7162 §3.1: the first CONDSTORE-enabling command tells HIGHESTMODSEQ at once
    assert re.fullmatch(rb"\* OK \[HIGHESTMODSEQ (\d+)\] .*\r\n", out[0]), out
    m1 = int(re.search(rb"MODSEQ \((\d+)\)", out[1]).group(1))  # type: ignore[union-attr]
    assert m1 > high
    out = await a.cmd(b"3", b"STORE 1 -FLAGS (\\Answered)")
    assert re.fullmatch(rb"\* 1 FETCH \(UID 1 FLAGS \(\) MODSEQ \((\d+)\)\)\r\n", out[0])
    # implicit \Seen by BODY[]: FLAGS, UID and MODSEQ come with the data
    out = await a.cmd(b"4", b"FETCH 2 (BODY[])")
    joined = b"".join(out)
    assert b"FLAGS (\\Seen)" in joined and b"UID 2" in joined and b"MODSEQ (" in joined
    # another session's change
    await b.cmd(b"5", b"STORE 3 +FLAGS.SILENT (\\Flagged)")
    out = await a.cmd(b"6", b"NOOP")
    assert re.fullmatch(rb"\* 3 FETCH \(UID 3 FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)\r\n",
                        out[0]), out
    # and the store holds what was reported
    assert imap_app.store is not None
    rows = await imap_app.store.message_rows(await inbox_id(imap_app))
    assert [r.uid for r in rows if r.flags] == [2, 3]
    await a.close()
    await b.close()


async def test_enabling_commands(imap_app: App) -> None:
    """SELECT/EXAMINE (CONDSTORE), STATUS HIGHESTMODSEQ, SEARCH MODSEQ, ENABLE each
    switch CONDSTORE on (seen from the next STORE's reply)."""
    await _fill(imap_app, 2)
    enablers = [
        (b"EXAMINE INBOX (CONDSTORE)", b"SELECT INBOX"),
        (b"STATUS INBOX (HIGHESTMODSEQ)", b"SELECT INBOX"),
        (b"SELECT INBOX", b"SEARCH MODSEQ 1"),
        (b"ENABLE CONDSTORE", b"SELECT INBOX"),
        (b"SELECT INBOX", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1)"),
        (b"SELECT INBOX", b"STORE 1 (UNCHANGEDSINCE 999999) +FLAGS.SILENT (\\Draft)"),
    ]
    for first, second in enablers:
        r = await Raw.connect(imap_app.ports["imap"])
        await r.login()
        out = await r.cmd(b"a", first) + await r.cmd(b"b", second)
        assert out[-1].startswith(b"b OK"), (first, second, out)
        if first.startswith(b"EXAMINE"):
            assert any(b"[HIGHESTMODSEQ " in x for x in out)
            assert any(b"[READ-ONLY]" in x for x in out)
        out = await r.cmd(b"c", b"STORE 2 +FLAGS (\\Seen)")
        assert re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Seen[^)]*\) MODSEQ \(\d+\)\)\r\n",
                            out[0]), (first, second, out)
        await r.cmd(b"d", b"STORE 2 -FLAGS.SILENT (\\Seen)")
        await r.close()
    # ENABLE lists only what it switched on (RFC 5161 §3.1)
    r = await Raw.connect(imap_app.ports["imap"])
    await r.login()
    out = await r.cmd(b"e", b"ENABLE CONDSTORE")
    assert out[0] == b"* ENABLED CONDSTORE\r\n"
    out = await r.cmd(b"f", b"ENABLE CONDSTORE X-UNKNOWN")
    assert out[0] == b"* ENABLED\r\n"
    await r.close()


async def test_store_unchangedsince(imap_app: App) -> None:
    """RFC 7162 §3.1.3: messages changed after UNCHANGEDSINCE are left alone and named in
    [MODIFIED] (numbers for STORE, UIDs for UID STORE); the others are changed and
    reported with their new MODSEQ even with .SILENT."""
    assert imap_app.store is not None
    fid = await _fill(imap_app, 4)
    a, sel = await _session(imap_app, b"SELECT INBOX (CONDSTORE)")
    b, _ = await _session(imap_app)
    high = _code(sel, b"HIGHESTMODSEQ")
    await b.cmd(b"1", b"STORE 2 +FLAGS.SILENT (\\Seen)")  # someone else got there first
    out = await a.cmd(b"2", f"STORE 1:3 (UNCHANGEDSINCE {high}) +FLAGS.SILENT (\\Flagged)"
                      .encode())
    assert out[-1].startswith(b"2 OK [MODIFIED 2]"), out
    fetches = {x.split()[1]: x for x in out if b"FETCH" in x}
    assert all(b"MODSEQ (" in x for x in fetches.values())
    assert b"\\Flagged" in fetches[b"1"] and b"\\Flagged" in fetches[b"3"]
    assert b"(\\Seen)" in fetches[b"2"]  # the other session's change, told after
    rows = {r.uid: r for r in await imap_app.store.message_rows(fid)}
    flagged = {u for u, r in rows.items() if r.flags & 4}
    assert flagged == {1, 3}  # message 2 untouched: only \Seen from the other session
    # UID STORE names UIDs; UNCHANGEDSINCE 0 always fails (§3.1.3)
    await a.cmd(b"3", b"UID EXPUNGE 1")  # no \Deleted: nothing removed
    out = await a.cmd(b"4", b"UID STORE 3:4 (UNCHANGEDSINCE 0) FLAGS (\\Deleted)")
    assert out[-1].startswith(b"4 OK [MODIFIED 3:4]"), out
    rows2 = {r.uid: r for r in await imap_app.store.message_rows(fid)}
    assert rows2 == rows  # nothing changed
    # a passing conditional STORE (not silent) reports FLAGS and MODSEQ
    out = await a.cmd(b"5", f"UID STORE 4 (UNCHANGEDSINCE {rows[4].modseq}) +FLAGS (\\Draft)"
                      .encode())
    assert re.fullmatch(rb"\* 4 FETCH \(UID 4 FLAGS \(\\Draft\) MODSEQ \((\d+)\)\)\r\n",
                        out[0]), out
    assert out[-1].startswith(b"5 OK") and b"MODIFIED" not in out[-1]
    await a.close()
    await b.close()


async def test_search_modseq_and_changedsince(imap_app: App) -> None:
    """RFC 7162 §3.1.5: SEARCH MODSEQ answers (MODSEQ n), n the highest of the matches;
    ESEARCH puts MODSEQ in the reply. §3.1.4.1: FETCH CHANGEDSINCE returns only newer
    messages and adds MODSEQ by itself."""
    await _fill(imap_app, 3)
    a, sel = await _session(imap_app)
    high = _code(sel, b"HIGHESTMODSEQ")
    out = await a.cmd(b"1", b"STORE 2 +FLAGS (\\Flagged)")
    out = await a.cmd(b"2", f"SEARCH MODSEQ {high + 1}".encode())
    assert out[0].startswith(b"* OK [HIGHESTMODSEQ ")  # CONDSTORE enabled just now
    m = re.fullmatch(rb"\* SEARCH 2 \(MODSEQ (\d+)\)\r\n", out[1])
    assert m and int(m.group(1)) > high, out
    out = await a.cmd(b"3", f"UID SEARCH RETURN (COUNT) MODSEQ {high + 1}".encode())
    assert re.fullmatch(rb'\* ESEARCH \(TAG "3"\) UID COUNT 1 MODSEQ \d+\r\n', out[0]), out
    out = await a.cmd(b"4", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {high})".encode())
    assert len(out) == 2 and re.fullmatch(
        rb"\* 2 FETCH \(FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)\r\n", out[0]), out
    out = await a.cmd(b"5", b"SEARCH MODSEQ 999999999")
    assert out[0] == b"* SEARCH\r\n"
    # STATUS after the change: HIGHESTMODSEQ moved on
    out = await a.cmd(b"6", b"STATUS INBOX (HIGHESTMODSEQ)")
    assert int(re.search(rb"HIGHESTMODSEQ (\d+)", out[0]).group(1)) > high  # type: ignore
    await a.close()

"""SORT (RFC 5256 §3), SORT=DISPLAY (RFC 5957), ESORT (RFC 5267 §3) and THREAD
(RFC 5256 §4) on the wire, through imapclient and raw commands."""

from __future__ import annotations

from typing import Any

import aiosmtplib
import pytest
from imapclient import IMAPClient

from mailstack.app import App
from tests.imapserver.conftest import ADDR, PW, Raw, folder_of, inbox_id, plain, run


def _msg(subject: str, frm: str, to: str, date: str | None, mid: str, refs: str = "",
         body: str = "x", cc: str = "") -> bytes:
    head = f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
    if date:
        head += f"Date: {date}\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    if cc:
        head += f"Cc: {cc}\r\n"
    return (head + "\r\n" + body + "\r\n").encode()


MSGS = [
    # 1: arrival 1000; a reply to 2's subject, sent last
    (_msg("Re: Hello", "Zed Last <zed@x.org>", "bob@y.org", "Wed, 3 Jan 2024 10:00:00 +0000",
          "<c@x>", "<a@x> <b@x>", "x" * 300, cc="carl@z.org"), 1000.0),
    # 2: the thread start
    (_msg("hello", "adam@x.org", "Yvonne <yv@y.org>", "Mon, 1 Jan 2024 10:00:00 +0000",
          "<a@x>", body="y" * 10), 2000.0),
    # 3: a reply to 2 by references, different subject wording
    (_msg("[list] Fwd: hello (fwd)", "=?utf-8?q?B=C3=B6b?= <bob@x.org>", "amy@y.org",
          "Tue, 2 Jan 2024 10:00:00 +0100", "<b@x>", "<a@x>", "z" * 100), 3000.0),
    # 4: unrelated, no Date: sorted by its arrival (RFC 5256 §2.2)
    (_msg("Apple", "carl@x.org", "ann@y.org", None, "<d@x>", cc="abe@z.org"), 500.0),
]


async def _fill(app: App) -> None:
    assert app.store is not None
    fid = await inbox_id(app)
    for data, when in MSGS:
        await app.store.append(fid, data, internal_date=when)


async def test_sort_with_imapclient(imap_app: App) -> None:
    await _fill(imap_app)

    def go() -> None:
        with IMAPClient("127.0.0.1", port=imap_app.ports["imap"], ssl=False) as c:
            c.login(ADDR, PW)
            caps = c.capabilities()
            for cap in (b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=REFERENCES",
                        b"THREAD=ORDEREDSUBJECT"):
                assert cap in caps
            c.select_folder("INBOX")
            assert c.sort("ARRIVAL") == [4, 1, 2, 3]
            assert c.sort("DATE") == [4, 2, 3, 1]
            assert c.sort(["REVERSE DATE"]) == [1, 3, 2, 4]
            assert c.sort("SUBJECT") == [4, 1, 2, 3]  # APPLE, then HELLO x3 by uid
            assert c.sort(["SUBJECT", "REVERSE DATE"]) == [4, 1, 3, 2]
            assert c.sort("FROM") == [2, 3, 4, 1]  # adam, bob, carl, zed
            assert c.sort("TO") == [3, 4, 1, 2]  # amy, ann, bob, yv
            assert c.sort("SIZE") == [4, 2, 3, 1]
            assert c.sort("CC") == [2, 3, 4, 1]  # no Cc sorts first (""), abe, carl
            assert c.sort("DISPLAYFROM") == [2, 3, 4, 1]  # adam@, Böb, carl@, Zed Last
            assert c.sort("ARRIVAL", ["NOT", "FROM", "zed"]) == [4, 2, 3]

    await run(go)


async def test_sort_uid_esort_and_errors(imap_app: App) -> None:
    await _fill(imap_app)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    out = await raw.cmd(b"a", b"UID SORT (REVERSE SIZE) UTF-8 ALL")
    assert out[0] == b"* SORT 1 3 2 4\r\n"
    out = await raw.cmd(b"b", b"SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
    assert out[0] == b'* ESEARCH (TAG "b") MIN 4 MAX 1 ALL 4,2:3,1 COUNT 4\r\n', out
    out = await raw.cmd(b"c", b"UID SORT RETURN () (ARRIVAL) UTF-8 UNDELETED")
    assert out[0] == b'* ESEARCH (TAG "c") UID ALL 4,1:3\r\n', out
    out = await raw.cmd(b"d", b"SORT (NOSUCHKEY) UTF-8 ALL")
    assert out[-1].startswith(b"d BAD"), out
    out = await raw.cmd(b"e", b"SORT (DATE) KOI8-NOPE ALL")
    assert out[-1].startswith(b"e NO [BADCHARSET"), out
    out = await raw.cmd(b"f", b"THREAD NOSUCH UTF-8 ALL")
    assert out[-1].startswith(b"f BAD"), out
    await raw.cmd(b"u", b"UNSELECT")
    out = await raw.cmd(b"g", b"SORT (DATE) UTF-8 ALL")  # not selected
    assert out[-1].startswith(b"g BAD"), out
    await raw.close()


async def test_thread_algorithms(imap_app: App) -> None:
    await _fill(imap_app)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    out = await raw.cmd(b"a", b"THREAD REFERENCES UTF-8 ALL")
    # 2 starts the thread (sent 1 Jan), 3 replies to it, 1 replies to 3; 4 alone
    # (no Date: its arrival, 1970, sorts first)
    assert out[0] == b"* THREAD (4)(2 3 1)\r\n", out
    out = await raw.cmd(b"b", b"THREAD ORDEREDSUBJECT UTF-8 ALL")
    assert out[0] == b"* THREAD (4)(2 (3)(1))\r\n", out
    out = await raw.cmd(b"c", b"UID THREAD REFERENCES UTF-8 NOT SUBJECT apple")
    assert out[0] == b"* THREAD (2 3 1)\r\n", out
    out = await raw.cmd(b"d", b"THREAD REFERENCES UTF-8 SUBJECT nothing-matches")
    assert out[0] == b"* THREAD\r\n", out
    await raw.close()


def test_capabilities_are_listed_once() -> None:
    from mailstack.imap.session import BASE_CAPS

    assert len(set(BASE_CAPS)) == len(BASE_CAPS)


async def test_sort_keys_cached_after_first_use(imap_app: App,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 5256 keys are parsed once per message and stored; later SORT/THREAD commands
    read no message bytes. A message that arrives later gets its keys on the next SORT,
    and sorts with the others."""
    await _fill(imap_app)
    assert imap_app.store is not None
    reads: list[int] = []
    real = imap_app.store.read_messages

    async def read_messages(items: Any, **kw: Any) -> Any:
        reads.append(len(items))
        return await real(items, **kw)

    monkeypatch.setattr(imap_app.store, "read_messages", read_messages)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    first = await raw.cmd(b"a", b"SORT (DATE) UTF-8 ALL")
    assert reads == [4]
    reads.clear()
    assert await raw.cmd(b"b", b"SORT (DATE) UTF-8 ALL") == [first[0], first[1].replace(
        b"a OK", b"b OK")]
    assert (await raw.cmd(b"c", b"THREAD REFERENCES UTF-8 ALL"))[0] == \
        b"* THREAD (4)(2 3 1)\r\n"
    assert reads == []
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, _msg("Early", "e@x.org", "f@y.org",
                                          "Sun, 31 Dec 2023 10:00:00 +0000", "<e@x>"),
                                internal_date=4000.0)
    await raw.cmd(b"n", b"NOOP")  # the client learns of it (EXISTS) first
    out = await raw.cmd(b"d", b"SORT (DATE) UTF-8 ALL")
    assert out[0] == b"* SORT 4 5 2 3 1\r\n", out
    assert reads == [1]
    await raw.close()


async def test_sort_odd_header_bytes(imap_app: App) -> None:
    """Raw 8-bit (not UTF-8) subjects and an encoded NUL are stored and sorted, on both
    backends; the command never fails on them."""
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, b"Subject: \xe9t\xe9\r\nFrom: \xff <a@x.org>\r\n"
                                     b"Message-ID: <x\x01y@z>\r\n\r\nx\r\n")
    await imap_app.store.append(fid, b"Subject: =?utf-8?q?a=00b?=\r\nFrom: b@x.org\r\n\r\n"
                                     b"y\r\n")
    await imap_app.store.append(fid, b"Subject: Zed\r\nFrom: c@x.org\r\n\r\nz\r\n")
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    out = await raw.cmd(b"a", b"SORT (SUBJECT) UTF-8 ALL")
    assert out[0] == b"* SORT 2 3 1\r\n", out  # "AB" < "ZED" < U+FFFD...
    out = await raw.cmd(b"t", b"THREAD REFERENCES UTF-8 ALL")
    assert out[-1].startswith(b"t OK"), out
    await raw.close()


async def test_keys_stored_at_delivery_append_and_copy(imap_app: App,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """A message delivered by SMTP and one APPENDed have their sort/thread keys in
    their rows as soon as they are stored (before any SORT); COPY and MOVE carry them
    over. SORT and THREAD then read no message bytes and answer as before."""
    assert imap_app.store is not None
    store = imap_app.store
    fid = await inbox_id(imap_app)
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=imap_app.ports["smtp"],
                               start_tls=False) as c:
        await c.sendmail("zed@x.org", [ADDR], _msg(
            "Re: [list] Keys (fwd)", "Zed Last <zed@x.org>", "Bob <bob@y.org>",
            "Wed, 3 Jan 2024 10:00:00 +0000", "<smtp@x>", "<a@x> <appended@x>",
            cc="carl@z.org"))
    smtp_row = await store.stored_sort_keys(fid, 1)
    assert smtp_row is not None
    assert smtp_row[1:] == (1704276000.0, "KEYS", True, "ZED", "BOB", "CARL",
                            "ZED LAST", "BOB", "<smtp@x>", "<a@x> <appended@x>")

    appended = _msg("keys", "=?utf-8?q?B=C3=B6b?= <bob@x.org>", "amy@y.org", None,
                    "<appended@x>")

    def append() -> None:
        client = plain(imap_app)
        typ, _ = client.append("INBOX", "", '"01-Jan-2024 09:00:00 +0000"', appended)
        assert typ == "OK"
        client.logout()

    await run(append)
    app_row = await store.stored_sort_keys(fid, 2)
    assert app_row is not None
    # no Date: the internal date given with APPEND stands in (RFC 5256 §2.2)
    assert app_row[1:] == (1704099600.0, "KEYS", False, "BOB", "AMY", "", "BöB",
                           "AMY@Y.ORG", "<appended@x>", "")
    assert await store.unkeyed_messages(fid) == []

    reads: list[int] = []
    real = store.read_messages

    async def read_messages(items: Any, **kw: Any) -> Any:
        reads.append(len(items))
        return await real(items, **kw)

    monkeypatch.setattr(store, "read_messages", read_messages)
    raw = await Raw.connect(imap_app.ports["imap"])
    await raw.login()
    await raw.cmd(b"c", b"CREATE Archive")
    await raw.cmd(b"s", b"SELECT INBOX")
    out = await raw.cmd(b"a", b"UID SORT (DATE) UTF-8 ALL")
    assert out[0] == b"* SORT 2 1\r\n", out
    out = await raw.cmd(b"b", b"SORT (REVERSE SUBJECT FROM) UTF-8 ALL")
    assert out[0] == b"* SORT 2 1\r\n", out
    out = await raw.cmd(b"t", b"UID THREAD REFERENCES UTF-8 ALL")
    assert out[0] == b"* THREAD (2 1)\r\n", out  # 1 references 2
    out = await raw.cmd(b"o", b"THREAD ORDEREDSUBJECT UTF-8 ALL")
    assert out[0] == b"* THREAD (2 1)\r\n", out
    assert reads == []
    assert (await raw.cmd(b"k", b"UID COPY 1 Archive"))[-1].startswith(b"k OK")
    assert (await raw.cmd(b"m", b"UID MOVE 2 Archive"))[-1].startswith(b"m OK")
    archive = await folder_of(imap_app, "Archive")
    assert await store.unkeyed_messages(archive) == []
    copied, moved = (await store.stored_sort_keys(archive, 1),
                     await store.stored_sort_keys(archive, 2))
    assert copied is not None and moved is not None
    assert (copied[1:], moved[1:]) == (smtp_row[1:], app_row[1:])
    await raw.cmd(b"s2", b"SELECT Archive")
    out = await raw.cmd(b"a2", b"UID SORT (DATE) UTF-8 ALL")
    assert out[0] == b"* SORT 2 1\r\n", out
    out = await raw.cmd(b"t2", b"UID THREAD REFERENCES UTF-8 ALL")
    assert out[0] == b"* THREAD (2 1)\r\n", out
    assert reads == []
    await raw.close()


async def _kept_results_session(app: App, monkeypatch: pytest.MonkeyPatch,
                                cache: str) -> Raw:
    """The four messages, INBOX selected, ``cache`` keeping results of every size."""
    from mailstack.imap import sort_exec

    monkeypatch.setattr(sort_exec, cache, sort_exec.ResultCache(smallest=1))
    await _fill(app)
    raw = await Raw.connect(app.ports["imap"])
    await raw.login()
    await raw.cmd(b"s", b"SELECT INBOX")
    return raw


async def test_thread_replies_kept_follow_every_change(imap_app: App,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendered THREAD replies are kept (sort_exec.ResultCache; every size here), and a
    kept reply is never served for another set of messages: new mail, EXPUNGE, another
    search, sequence numbers against UIDs."""
    raw = await _kept_results_session(imap_app, monkeypatch, "THREADS")
    first = await raw.cmd(b"a", b"THREAD REFERENCES UTF-8 ALL")
    assert first[0] == b"* THREAD (4)(2 3 1)\r\n", first
    assert (await raw.cmd(b"b", b"THREAD REFERENCES UTF-8 ALL"))[0] == first[0]  # kept
    # a reply to 4 arrives: the kept reply is not the answer any more
    reply = _msg("Re: Apple", "ann@y.org", "carl@x.org", "Thu, 4 Jan 2024 10:00:00 +0000",
                 "<e@x>", "<d@x>")
    assert imap_app.store is not None
    await imap_app.store.append(await inbox_id(imap_app), reply, internal_date=4000.0)
    out = await raw.cmd(b"c", b"NOOP")
    assert b"* 5 EXISTS\r\n" in out, out
    out = await raw.cmd(b"d", b"THREAD REFERENCES UTF-8 ALL")
    assert out[0] == b"* THREAD (4 5)(2 3 1)\r\n", out
    # 3 is expunged: 1 now hangs off 2 through its References (RFC 5256 §4 dummies)
    await raw.cmd(b"e", b"STORE 3 +FLAGS.SILENT (\\Deleted)")
    out = await raw.cmd(b"f", b"EXPUNGE")
    assert out[-1].startswith(b"f OK"), out
    uid_out = await raw.cmd(b"g", b"UID THREAD REFERENCES UTF-8 ALL")
    assert uid_out[0] == b"* THREAD (4 5)(2 1)\r\n", uid_out
    seq_out = await raw.cmd(b"h", b"THREAD REFERENCES UTF-8 ALL")  # 5 is now number 4
    assert seq_out[0] == b"* THREAD (3 4)(2 1)\r\n", seq_out
    out = await raw.cmd(b"i", b"UID THREAD REFERENCES UTF-8 NOT SUBJECT apple")
    assert out[0] == b"* THREAD (2 1)\r\n", out
    await raw.close()


async def test_sort_results_kept_follow_every_change(imap_app: App,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SORT results are kept per set of messages too (every size here): new mail,
    EXPUNGE, other criteria and ESORT never get a result kept for something else."""
    raw = await _kept_results_session(imap_app, monkeypatch, "SORTS")
    first = await raw.cmd(b"a", b"UID SORT (DATE) UTF-8 ALL")
    assert first[0] == b"* SORT 4 2 3 1\r\n", first
    assert (await raw.cmd(b"b", b"UID SORT (DATE) UTF-8 ALL"))[0] == first[0]  # kept
    assert imap_app.store is not None
    early = _msg("Early", "e@x.org", "f@y.org", "Sun, 31 Dec 2023 10:00:00 +0000", "<f@x>")
    await imap_app.store.append(await inbox_id(imap_app), early, internal_date=5000.0)
    assert b"* 5 EXISTS\r\n" in await raw.cmd(b"c", b"NOOP")
    out = await raw.cmd(b"d", b"UID SORT (DATE) UTF-8 ALL")
    assert out[0] == b"* SORT 4 5 2 3 1\r\n", out
    out = await raw.cmd(b"e", b"UID SORT (REVERSE DATE) UTF-8 ALL")
    assert out[0] == b"* SORT 1 3 2 5 4\r\n", out
    await raw.cmd(b"f", b"UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert (await raw.cmd(b"g", b"EXPUNGE"))[-1].startswith(b"g OK")
    out = await raw.cmd(b"h", b"UID SORT (DATE) UTF-8 ALL")
    assert out[0] == b"* SORT 4 5 3 1\r\n", out
    out = await raw.cmd(b"i", b"SORT RETURN (ALL COUNT) (DATE) UTF-8 ALL")  # ESORT
    assert out[0] == b'* ESEARCH (TAG "i") ALL 3:4,2,1 COUNT 4\r\n', out
    await raw.close()

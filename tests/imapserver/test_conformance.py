"""Conformance fixes found by an outside IMAP suite run side by side with Dovecot, each on
the wire, with the stored state checked where something is stored."""

from __future__ import annotations

import asyncio
import base64
import re

import pytest

from mailstack.app import App
from tests.imapserver.conftest import Raw, folder_of, inbox_id, message


async def _raw(app: App, select: bytes | None = b"SELECT INBOX") -> Raw:
    r = await Raw.connect(app.ports["imap"])
    await r.login()
    if select is not None:
        out = await r.cmd(b"s", select)
        assert out[-1].startswith(b"s OK"), out
    return r


async def _read_literal_reply(raw: Raw, tag: bytes) -> bytes:
    """Everything up to the tagged reply, literals included (raw bytes)."""
    buf = b""
    while True:
        line = await raw.line()
        buf += line
        m = re.search(rb"~?\{(\d+)\}\r\n\Z", line)
        if m:
            buf += await asyncio.wait_for(raw.reader.readexactly(int(m.group(1))), 30)
            continue
        if line.startswith(tag + b" "):
            return buf


# --- issue 17 item 4: LIST patterns are matched in linear time ----------------------
@pytest.mark.timeout(60)
async def test_list_pattern_cannot_stall_the_server(imap_app: App) -> None:
    names = ["a" * 255, "b" + "a" * 254, "c" + "a" * 254, "x" + "a" * 253 + "b"]
    raw = await _raw(imap_app, None)
    for n, name in enumerate(names):
        out = await raw.cmd(b"c%d" % n, f'CREATE "{name}"'.encode())
        assert out[-1].startswith(b"c%d OK" % n), out
    # a backtracking matcher needs seconds for the first and hours for the second
    for tag, pattern in ((b"l1", "*a*a*a*ab"), (b"l2", "*a*a*a*a*a*a*a*a*ab")):
        await raw.send(tag + f' LIST "" "{pattern}"\r\n'.encode())
        other = await Raw.connect(imap_app.ports["imap"])  # served meanwhile
        out = await other.cmd(b"o", b'LOGIN anna@example.com "secret-pw"')
        assert out[-1].startswith(b"o OK"), out
        await other.close()
        out = await raw.until(tag)
        assert out[-1].startswith(tag + b" OK"), out
        listed = [x for x in out if x.startswith(b"* LIST")]
        assert listed == [b'* LIST (\\HasNoChildren) "/" "' + names[3].encode() + b'"\r\n']
    # "%" stops at "/", "*" does not
    await raw.cmd(b"c9", b'CREATE "aaa/ab"')
    out = await raw.cmd(b"p", b'LIST "" "%a%b"')
    assert not any(b"aaa/ab" in x for x in out) and len(out) == 2, out
    out = await raw.cmd(b"q", b'LIST "" "*a*b"')
    assert b'* LIST (\\HasNoChildren) "/" "aaa/ab"\r\n' in out
    # past the cap: a clear NO, the session goes on
    out = await raw.cmd(b"big", b'LIST "" "' + b"*a" * 600 + b'"')
    assert out[-1].startswith(b"big NO [LIMIT]"), out
    out = await raw.cmd(b"ls", b'LSUB "" "' + b"%a" * 600 + b'"')
    assert out[-1].startswith(b"ls NO [LIMIT]"), out
    assert (await raw.cmd(b"n", b"NOOP"))[-1].startswith(b"n OK")
    await raw.close()


# --- 1: BODY[] is never literal8 ------------------------------------------------------
async def test_binary_append_body_is_plain_literal(imap_app: App) -> None:
    assert imap_app.store is not None
    payload = bytes(range(256)) * 4
    msg = (b"From: a@example.org\r\nSubject: bin\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
           b"--XX\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n" + payload + b"\r\n--XX--\r\n")
    raw = await _raw(imap_app, None)
    await raw.send(b"a APPEND INBOX ~{%d}\r\n" % len(msg))
    assert (await raw.line()).startswith(b"+")
    await raw.send(msg + b"\r\n")
    out = await raw.until(b"a")
    assert out[-1].startswith(b"a OK"), out
    await raw.cmd(b"s", b"SELECT INBOX")
    await raw.send(b"f FETCH 1 (BODY.PEEK[2] BODY.PEEK[2.MIME])\r\n")
    reply = await _read_literal_reply(raw, b"f")
    assert b"~{" not in reply and b"\x00" not in reply, reply[:200]
    m = re.search(rb"BODY\[2\] \{(\d+)\}\r\n", reply)
    assert m is not None, reply[:200]
    start = m.end()
    part = reply[start:start + int(m.group(1))]
    assert base64.b64decode(part) == payload
    assert b"Content-Transfer-Encoding: base64" in reply
    await raw.send(b"g FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])\r\n")
    reply = await _read_literal_reply(raw, b"g")
    m = re.search(rb"BINARY\[2\] ~\{(\d+)\}\r\n", reply)
    assert m is not None and reply[m.end():m.end() + int(m.group(1))] == payload
    assert b"BINARY.SIZE[2] %d" % len(payload) in reply
    await raw.send(b"h FETCH 1 (BODY.PEEK[] RFC822.SIZE)\r\n")
    reply = await _read_literal_reply(raw, b"h")
    assert b"\x00" not in reply and b"~{" not in reply
    m = re.search(rb"BODY\[\] \{(\d+)\}", reply)
    assert m is not None and f"RFC822.SIZE {m.group(1).decode()}".encode() in reply
    await raw.close()
    # stored converted: no NUL in the stored message
    fid = await inbox_id(imap_app)
    (stored,) = await imap_app.store.list_messages(fid)
    data = (await imap_app.store.read_messages([(stored.blob_id, stored.prefix)]))[0]
    assert b"\x00" not in data and len(data) == stored.size


# --- 2: quoted-printable for BINARY (RFC 2045 §6.7) ----------------------------------
async def test_binary_quoted_printable_rules(imap_app: App) -> None:
    assert imap_app.store is not None
    body = b"line one   \r\nsoft=  \r\nbreak=3D=3d\tx\r\nend=\r\n"
    msg = (b"From: a@example.org\r\nSubject: qp\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n"
           b"\r\n" + body)
    await imap_app.store.append(await inbox_id(imap_app), msg)
    raw = await _raw(imap_app)
    await raw.send(b"f FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])\r\n")
    reply = await _read_literal_reply(raw, b"f")
    want = b"line one\r\nsoftbreak==\tx\r\nend"
    m = re.search(rb"BINARY\[1\] \{(\d+)\}\r\n", reply)
    assert m is not None, reply
    assert reply[m.end():m.end() + int(m.group(1))] == want
    assert b"BINARY.SIZE[1] %d" % len(want) in reply
    await raw.close()


# --- 3: \Recent for IMAP4rev1 sessions -------------------------------------------------
async def test_recent_for_imap4rev1_sessions(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, message("one"))
    await imap_app.store.append(fid, message("two"), flags=["\\Seen"])
    rev2 = await _raw(imap_app, None)
    await rev2.cmd(b"e", b"ENABLE IMAP4rev2")
    out = await rev2.cmd(b"s", b"SELECT INBOX")
    assert not any(b"RECENT" in x for x in out)  # rev2: no \Recent, nothing claimed
    out = await rev2.cmd(b"st", b"STATUS INBOX (RECENT MESSAGES)")
    assert b'* STATUS "INBOX" (RECENT 2 MESSAGES 2)\r\n' in out
    a = await Raw.connect(imap_app.ports["imap"])
    await a.login()
    out = await a.cmd(b"s", b"SELECT INBOX")
    assert b"* 2 RECENT\r\n" in out
    out = await a.cmd(b"f", b"FETCH 1:2 (FLAGS)")
    assert out[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n"
    assert out[1] == b"* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n"
    assert (await a.cmd(b"n", b"SEARCH NEW"))[0] == b"* SEARCH 1\r\n"
    assert (await a.cmd(b"r", b"SEARCH RECENT"))[0] == b"* SEARCH 1 2\r\n"
    assert (await a.cmd(b"o", b"SEARCH OLD"))[0] == b"* SEARCH\r\n"
    # a second rev1 session: the messages were already recent in the first one
    b = await _raw(imap_app, None)
    out = await b.cmd(b"s", b"SELECT INBOX")
    assert b"* 0 RECENT\r\n" in out
    assert (await b.cmd(b"o", b"SEARCH OLD"))[0] == b"* SEARCH 1 2\r\n"
    out = await b.cmd(b"st", b"STATUS INBOX (RECENT)")
    assert b'* STATUS "INBOX" (RECENT 0)\r\n' in out
    # a new arrival: recent for exactly one of the two sessions
    await imap_app.store.append(fid, message("three"))
    out_a = await a.cmd(b"n2", b"NOOP")
    out_b = await b.cmd(b"n2", b"NOOP")
    assert b"* 3 EXISTS\r\n" in out_a and b"* 3 EXISTS\r\n" in out_b
    assert b"* 3 RECENT\r\n" in out_a and b"* 0 RECENT\r\n" in out_b
    out = await b.cmd(b"f", b"FETCH 3 (FLAGS)")
    assert out[0] == b"* 3 FETCH (FLAGS ())\r\n"
    for r in (a, b, rev2):
        await r.close()


async def test_recent_claimed_by_own_append(imap_app: App) -> None:
    """A rev1 session APPENDing to its selected mailbox claims the new message as
    \\Recent in the APPEND's own transaction (one write, not two); a message that
    arrived before it and that no session saw yet is claimed with it; a session that
    selects afterwards sees neither as recent (RFC 3501 §2.3.2)."""
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, message("one"))
    a = await _raw(imap_app)  # claims UID 1
    await imap_app.store.append(fid, message("two"))  # not yet told to anyone
    data = message("three")
    await a.send(b"ap APPEND INBOX {%d}\r\n" % len(data))
    assert (await a.line()).startswith(b"+")
    await a.send(data + b"\r\n")
    appended = await a.until(b"ap")
    assert appended[-1].startswith(b"ap OK [APPENDUID"), appended
    # the claim was stored with the message: the mark is above UID 3 already
    rows = await imap_app.store.fresh_messages(fid, 1)
    assert rows[0] == [1, 2, 3] and rows[1] == 4
    told = appended + await a.cmd(b"n", b"NOOP")  # EXISTS with the APPEND or after it
    assert b"* 3 EXISTS\r\n" in told and b"* 3 RECENT\r\n" in told, told
    out = await a.cmd(b"f", b"FETCH 1:* (FLAGS)")
    assert out[:3] == [b"* 1 FETCH (FLAGS (\\Recent))\r\n", b"* 2 FETCH (FLAGS (\\Recent))\r\n",
                       b"* 3 FETCH (FLAGS (\\Recent))\r\n"], out
    assert (await a.cmd(b"r", b"SEARCH RECENT"))[0] == b"* SEARCH 1 2 3\r\n"
    b = await _raw(imap_app, None)
    out = await b.cmd(b"s", b"SELECT INBOX")
    assert b"* 3 EXISTS\r\n" in out and b"* 0 RECENT\r\n" in out
    # an APPEND to another mailbox, or by a session that has it only examined, claims
    # nothing: the next session to select it gets the message as recent
    out = await b.cmd(b"x", b"EXAMINE INBOX")
    await b.send(b"ap APPEND INBOX {%d}\r\n" % len(data))
    assert (await b.line()).startswith(b"+")
    await b.send(data + b"\r\n")
    assert (await b.until(b"ap"))[-1].startswith(b"ap OK"), out
    assert (await imap_app.store.fresh_messages(fid, 1))[1] == 4
    out = await a.cmd(b"n2", b"NOOP")
    assert b"* 4 EXISTS\r\n" in out and b"* 4 RECENT\r\n" in out, out
    for r in (a, b):
        await r.close()


# --- 4: new keywords are announced -----------------------------------------------------
async def test_new_keywords_announced_before_fetch(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, message("one"), flags=["$Old"])
    await imap_app.store.append(fid, message("two"))
    a = await _raw(imap_app, None)
    out = await a.cmd(b"s", b"SELECT INBOX")
    assert b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Old)\r\n" in out
    assert any(x.startswith(b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted "
                            b"\\Draft $Old \\*)]") for x in out), out
    b = await _raw(imap_app)
    out = await a.cmd(b"st", b"STORE 2 +FLAGS ($Label1)")
    i_flags = next(i for i, x in enumerate(out) if x.startswith(b"* FLAGS"))
    i_fetch = next(i for i, x in enumerate(out) if b"FETCH" in x)
    assert i_flags < i_fetch and b"$Label1" in out[i_flags], out
    assert out[i_flags + 1].startswith(b"* OK [PERMANENTFLAGS") and b"$Label1" in out[i_flags + 1]
    out = await b.cmd(b"n", b"NOOP")  # the other session: told before the FETCH
    i_flags = next(i for i, x in enumerate(out) if x.startswith(b"* FLAGS"))
    i_fetch = next(i for i, x in enumerate(out) if b"FETCH" in x)
    assert i_flags < i_fetch and b"$Label1" in out[i_flags], out
    # delivery with a new keyword
    await imap_app.store.append(fid, message("three"), flags=["$Delivered"])
    out = await b.cmd(b"n2", b"NOOP")
    assert any(x.startswith(b"* FLAGS") and b"$Delivered" in x for x in out), out
    out = await b.cmd(b"n3", b"NOOP")  # told once
    assert not any(x.startswith(b"* FLAGS") for x in out)
    await a.close()
    await b.close()


# --- 5: ESEARCH MIN/MAX carry their own MODSEQ -----------------------------------------
async def test_esearch_min_max_modseq(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    for i in range(3):
        await imap_app.store.append(fid, message(f"m{i}"))
    changed, _ = await imap_app.store.store_flags(fid, [1], ["\\Flagged"], "add")
    m1 = changed[0].modseq
    changed, _ = await imap_app.store.store_flags(fid, [3], ["\\Flagged"], "add")
    m3 = changed[0].modseq
    assert m3 > m1
    raw = await _raw(imap_app)
    out = await raw.cmd(b"a", b"SEARCH RETURN (MIN) MODSEQ 1")
    assert re.search(rb"MIN 1 MODSEQ %d\r\n" % m1, out[-2]), out
    out = await raw.cmd(b"b", b"SEARCH RETURN (MAX) MODSEQ 1")
    assert re.search(rb"MAX 3 MODSEQ %d\r\n" % m3, out[-2]), out
    out = await raw.cmd(b"c", b"SEARCH RETURN (MIN COUNT) MODSEQ 1")
    assert re.search(rb"MIN 1 COUNT 3 MODSEQ %d\r\n" % m3, out[-2]), out
    await raw.close()


# --- 6: HIGHESTMODSEQ when CONDSTORE is first enabled in a selected mailbox ------------
async def test_highestmodseq_on_first_condstore_enable(imap_app: App) -> None:
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    await imap_app.store.append(fid, message("m"))
    high = (await imap_app.store.folder_status(fid)).highestmodseq
    raw = await _raw(imap_app)
    out = await raw.cmd(b"f", b"FETCH 1 (MODSEQ)")
    assert out[0] == b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % high, out
    out = await raw.cmd(b"g", b"FETCH 1 (MODSEQ)")  # only the first time
    assert not any(b"HIGHESTMODSEQ" in x for x in out)
    await raw.close()


# --- 7: FROM/TO/CC/BCC match the parsed address ----------------------------------------
async def test_search_address_keys_match_parsed_address(imap_app: App) -> None:
    assert imap_app.store is not None
    msg = (b"From: <user-from (comment)@ (comment) domain.org>\r\n"
           b"To: Someone <to (x) @example.net>\r\nCc: =?utf-8?q?J=C3=B6rg?= <jo@cc.org>\r\n"
           b"Bcc: hidden@bcc.org\r\nSubject: addr\r\n\r\nbody\r\n")
    await imap_app.store.append(await inbox_id(imap_app), msg)
    await imap_app.store.append(await inbox_id(imap_app), message("other"))
    raw = await _raw(imap_app)
    for key in (b"FROM user-from@domain.org", b"TO to@example.net", b"CC jo@cc.org",
                b"BCC hidden@bcc.org", b"FROM comment", b'CHARSET UTF-8 CC "J\xc3\xb6rg"'):
        out = await raw.cmd(b"s", b"SEARCH " + key)
        assert out[0] == b"* SEARCH 1\r\n", (key, out)
    out = await raw.cmd(b"e", b"FETCH 1 (ENVELOPE)")
    assert b'(NIL NIL "user-from" "domain.org")' in out[0]
    await raw.close()


# --- 8: invalid modified UTF-7 is NO, not BAD -------------------------------------------
async def test_invalid_mutf7_name_is_no(imap_app: App) -> None:
    raw = await _raw(imap_app, None)
    out = await raw.cmd(b"a", b"SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}")
    assert out[-1].startswith(b"a NO"), out
    assert b"UTF-7" in out[-1]
    out = await raw.cmd(b"b", b'CREATE "&Jjo"')
    assert out[-1].startswith(b"b NO"), out
    assert (await raw.cmd(b"c", b"NOOP"))[-1].startswith(b"c OK")
    out = await raw.cmd(b"d", b'LIST "" "*"')
    assert not any(b"&Jjo" in x for x in out)  # nothing created
    await raw.close()


# --- 9: subscriptions survive DELETE; LSUB "%" shows unsubscribed parents -------------
async def test_subscriptions_survive_delete_and_lsub_parents(imap_app: App) -> None:
    assert imap_app.store is not None
    raw = await _raw(imap_app, None)
    for n, cmd in enumerate((b'CREATE "Gone"', b'SUBSCRIBE "Gone"', b'CREATE "Top/Child"',
                             b'SUBSCRIBE "Top/Child"', b'DELETE "Gone"')):
        out = await raw.cmd(b"p%d" % n, cmd)
        assert out[-1].startswith(b"p%d OK" % n), (cmd, out)
    out = await raw.cmd(b"l", b'LIST (SUBSCRIBED) "" "*"')
    assert b'* LIST (\\NonExistent \\Subscribed) "/" "Gone"\r\n' in out, out
    out = await raw.cmd(b"ls", b'LSUB "" "%"')
    lsub = [x for x in out if x.startswith(b"* LSUB")]
    assert b'* LSUB (\\Noselect) "/" "Top"\r\n' in lsub, lsub
    assert b'* LSUB (\\Noselect) "/" "Gone"\r\n' in lsub, lsub
    assert not any(b'"Top/Child"' in x for x in lsub)
    out = await raw.cmd(b"ls2", b'LSUB "" "*"')
    assert b'* LSUB () "/" "Top/Child"\r\n' in out
    assert not any(x.endswith(b'"Top"\r\n') for x in out)
    # re-created: subscribed again; unsubscribing a deleted name works
    await raw.cmd(b"c", b'CREATE "Gone"')
    out = await raw.cmd(b"l2", b'LIST "" "Gone" RETURN (SUBSCRIBED)')
    assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "Gone"\r\n' in out, out
    await raw.cmd(b"d", b'DELETE "Gone"')
    out = await raw.cmd(b"u", b'UNSUBSCRIBE "Gone"')
    assert out[-1].startswith(b"u OK"), out
    out = await raw.cmd(b"l3", b'LIST (SUBSCRIBED) "" "*"')
    assert not any(b'"Gone"' in x for x in out)
    out = await raw.cmd(b"u2", b'UNSUBSCRIBE "Gone"')
    assert out[-1].startswith(b"u2 NO"), out
    addr = await imap_app.store.get_address("anna@example.com")
    assert addr is not None
    assert await imap_app.store.orphan_subscriptions(addr.id) == []
    await raw.close()


# --- 10: LIST-EXTENDED RECURSIVEMATCH rules and CHILDINFO -----------------------------
async def test_list_extended_recursivematch(imap_app: App) -> None:
    raw = await _raw(imap_app, None)
    for n, cmd in enumerate((b'CREATE "Foo/Bar"', b'SUBSCRIBE "Foo/Bar"',
                             b'CREATE "Baz"', b'SUBSCRIBE "Baz"')):
        assert (await raw.cmd(b"p%d" % n, cmd))[-1].startswith(b"p%d OK" % n)
    for sel in (b"(RECURSIVEMATCH)", b"(RECURSIVEMATCH REMOTE)", b"(REMOTE RECURSIVEMATCH)"):
        out = await raw.cmd(b"b", b"LIST " + sel + b' "" "*"')
        assert out[-1].startswith(b"b BAD"), (sel, out)
    out = await raw.cmd(b"l", b'LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert out[-1].startswith(b"l OK"), out
    assert b'* LIST () "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n' in out, out
    assert any(x.startswith(b"* LIST (") and b"\\Subscribed" in x and x.endswith(b'"Baz"\r\n')
               for x in out), out
    assert not any(b'"Foo/Bar"' in x for x in out)
    out = await raw.cmd(b"m", b'LIST (SUBSCRIBED) "" "%"')  # no RECURSIVEMATCH: no Foo
    assert not any(x.endswith(b'"Foo"\r\n') for x in out), out
    await raw.close()
    assert await folder_of(imap_app, "Foo/Bar")


async def test_expunge_reports_removals_committed_just_before(
        imap_app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 3501 §6.4.3: after EXPUNGE no \\Deleted message is left in the client's view,
    even when another session (or process: its notice arrives up to a second later)
    expunged them just before this EXPUNGE found nothing left to remove."""
    assert imap_app.store is not None
    fid = await inbox_id(imap_app)
    for i in range(4):
        await imap_app.store.append(fid, message(f"m{i}"))
    a = await _raw(imap_app)
    out = await a.cmd(b"d", b"STORE 2:3 +FLAGS.SILENT (\\Deleted)")
    assert out[-1].startswith(b"d OK"), out
    # another process expunges them; its notice has not reached this process yet
    publish = imap_app.store.events.publish
    monkeypatch.setattr(imap_app.store.events, "publish", lambda ev: None)
    assert await imap_app.store.expunge(fid) == [2, 3]
    monkeypatch.setattr(imap_app.store.events, "publish", publish)
    out = await a.cmd(b"x", b"EXPUNGE")
    assert out[-1].startswith(b"x OK"), out
    assert b"* 3 EXPUNGE\r\n" in out and b"* 2 EXPUNGE\r\n" in out, out
    out = await a.cmd(b"f", b"FETCH 1:* (UID)")
    assert out[:-1] == [b"* 1 FETCH (UID 1)\r\n", b"* 2 FETCH (UID 4)\r\n"], out
    await a.close()

"""POP3 commands over 995 and 110 with poplib and a raw client (RFC 1939, 2449, 5034)."""

from __future__ import annotations

import base64
import poplib
import ssl

import pytest

from mailstack.pop3.maildrop import wire_form

from .conftest import PASSWORD, USER, Box, Raw, in_thread, pop3s

MSG_CRLF = b"From: a@example.org\r\nSubject: one\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
# bare LF line endings, a last line without a terminator, lines starting with "."
MSG_LF = b"From: b@example.org\nSubject: two\n\n.hidden\n..two dots\nend."
MSG_DOT_FIRST = b".X-Odd: header\r\n\r\n.\r\n"


async def test_capa_and_login_on_995(box: Box, client_ssl: ssl.SSLContext) -> None:
    def run() -> tuple[dict[str, list[str]], dict[str, list[str]], bytes]:
        p = pop3s(box.port(), client_ssl, login=False)
        before = p.capa()
        p.user(USER)
        resp = p.pass_(PASSWORD)
        after = p.capa()
        p.quit()
        return before, after, resp

    before, after, resp = await in_thread(run)
    for caps in (before, after):
        for cap in ("TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING", "IMPLEMENTATION"):
            assert cap in caps
        assert caps["SASL"] == ["PLAIN"]
        assert "STLS" not in caps  # already TLS (RFC 2595 §4)
    assert resp == b"+OK maildrop has 0 messages (0 octets)"


async def test_full_session_sizes_stuffing_top(box: Box, client_ssl: ssl.SSLContext) -> None:
    for data in (MSG_CRLF, MSG_LF, MSG_DOT_FIRST):
        await box.append(data)
    rows = await box.store.list_messages(box.inbox.id)

    def run() -> dict[str, object]:
        p = pop3s(box.port(), client_ssl)
        out: dict[str, object] = {"stat": p.stat(), "list": p.list(), "list2": p.list(2),
                                  "uidl": p.uidl(), "uidl3": p.uidl(3)}
        out["retr"] = [p.retr(n) for n in (1, 2, 3)]
        out["top0"] = p.top(1, 0)
        out["top1"] = p.top(1, 1)
        out["top_nobody"] = p.top(3, 5)
        out["noop"] = p.noop()
        p.quit()
        return out

    out = await in_thread(run)
    sizes = [len(wire_form(d)) for d in (MSG_CRLF, MSG_LF, MSG_DOT_FIRST)]
    assert sizes[1] == len(MSG_LF) + 7  # 6 bare LF + a CRLF for the last line
    assert out["stat"] == (3, sum(sizes))
    assert out["list"][1] == [b"%d %d" % (i + 1, s) for i, s in enumerate(sizes)]  # type: ignore[index]
    assert out["list2"] == b"+OK 2 %d" % sizes[1]
    assert out["uidl"][1] == [b"%d %d" % (i + 1, m.id) for i, m in enumerate(rows)]  # type: ignore[index]
    assert out["uidl3"] == b"+OK 3 %d" % rows[2].id
    for n, (data, (resp, lines, octets)) in enumerate(
            zip((MSG_CRLF, MSG_LF, MSG_DOT_FIRST), out["retr"], strict=True)):  # type: ignore[call-overload]
        assert resp == b"+OK %d octets" % sizes[n]
        assert octets == sizes[n]  # poplib counts octets after un-stuffing, CRLF included
        assert b"\r\n".join(lines) + b"\r\n" == wire_form(data)
    assert out["top0"][1] == [b"From: a@example.org", b"Subject: one", b""]  # type: ignore[index]
    assert out["top1"][1] == [b"From: a@example.org", b"Subject: one", b"", b"line 1"]  # type: ignore[index]
    assert out["top_nobody"][1] == [b".X-Odd: header", b"", b"."]  # type: ignore[index]
    assert out["noop"] == b"+OK"
    # RETR sets \\Seen at QUIT, so an IMAP client sees the mail as read
    assert all("\\Seen" in m.flags for m in await box.store.list_messages(box.inbox.id))


async def test_byte_stuffing_on_the_wire(box: Box, client_ssl: ssl.SSLContext) -> None:
    await box.append(MSG_LF)
    await box.append(MSG_DOT_FIRST)

    def run() -> list[bytes]:
        r = Raw(box.port(), client_ssl)
        assert r.login().startswith(b"+OK")
        got = []
        for cmd in (b"RETR 1", b"RETR 2", b"TOP 2 0"):
            assert r.cmd(cmd).startswith(b"+OK")
            got.append(r.multiline_body())
        r.cmd(b"QUIT")
        r.close()
        return got

    retr1, retr2, top2 = await in_thread(run)
    # RFC 1939 §3: every line starting with "." gets one more; all lines end in CRLF
    assert retr1 == (b"From: b@example.org\r\nSubject: two\r\n\r\n..hidden\r\n"
                     b"...two dots\r\nend.\r\n")
    assert retr2 == b"..X-Odd: header\r\n\r\n..\r\n"
    assert top2 == b"..X-Odd: header\r\n\r\n"


async def test_pipelining_in_one_segment(box: Box, client_ssl: ssl.SSLContext) -> None:
    await box.append(MSG_CRLF)

    def run() -> list[bytes]:
        r = Raw(box.port(), client_ssl)
        r.send(b"USER %s\r\nPASS %s\r\nSTAT\r\nLIST 1\r\nNOOP\r\nQUIT\r\n"
               % (USER.encode(), PASSWORD.encode()))
        lines = [r.line() for _ in range(6)]
        r.close()
        return lines

    lines = await in_thread(run)
    assert [ln.split(b" ")[0] for ln in lines] == [b"+OK"] * 6
    assert lines[2] == b"+OK 1 %d" % len(MSG_CRLF)


async def test_dele_rset_and_quit_expunges(box: Box, client_ssl: ssl.SSLContext) -> None:
    msgs = [await box.append(MSG_CRLF + b"%d\r\n" % i) for i in range(3)]
    sub = box.store.events.subscribe(box.address.id)  # what an IMAP session would see

    def run() -> dict[str, object]:
        p = pop3s(box.port(), client_ssl)
        out: dict[str, object] = {"dele": p.dele(1)}
        for key, fn in (("retr_deleted", lambda: p.retr(1)), ("dele_again", lambda: p.dele(1)),
                        ("list_deleted", lambda: p.list(1))):
            with pytest.raises(poplib.error_proto) as exc:
                fn()
            out[key] = exc.value.args[0]
        out["stat_after_dele"] = p.stat()
        out["list_after_dele"] = p.list()[1]
        out["rset"] = p.rset()
        out["stat_after_rset"] = p.stat()
        p.dele(2)
        out["quit"] = p.quit()
        return out

    out = await in_thread(run)
    assert out["dele"] == b"+OK message 1 deleted"
    assert out["retr_deleted"] == b"-ERR message 1 already deleted"
    assert out["dele_again"] == b"-ERR message 1 already deleted"
    assert out["list_deleted"] == b"-ERR message 1 already deleted"
    assert out["stat_after_dele"][0] == 2  # type: ignore[index]
    assert [ln.split()[0] for ln in out["list_after_dele"]] == [b"2", b"3"]  # type: ignore[attr-defined]
    assert out["rset"].startswith(b"+OK maildrop has 3 messages")  # type: ignore[attr-defined]
    assert out["stat_after_rset"][0] == 3  # type: ignore[index]
    assert out["quit"].startswith(b"+OK")  # type: ignore[attr-defined]
    assert await box.uids() == [msgs[0].uid, msgs[2].uid]
    # IMAP side: the deletion is an expunge other sessions are told about
    assert await box.store.expunged_since(box.inbox.id, 0) == [msgs[1].uid]
    events = [sub.queue.get_nowait() for _ in range(sub.queue.qsize())]
    sub.close()
    assert any(getattr(e, "uids", None) == (msgs[1].uid,) and type(e).__name__ ==
               "MessagesExpunged" for e in events)


async def test_refusals_and_syntax(box: Box, client_ssl: ssl.SSLContext) -> None:
    await box.append(MSG_CRLF)

    def run() -> list[bytes]:
        r = Raw(box.port(), client_ssl)
        got = [r.cmd(b"STAT"), r.cmd(b"PASS x"), r.cmd(b"XYZZY"), r.cmd(b"NOOP")]
        assert r.login().startswith(b"+OK")
        for line in (b"USER other@example.com", b"LIST 0", b"LIST 2", b"LIST abc",
                     b"LIST 1 2", b"RETR", b"TOP 1", b"TOP 1 -1",
                     b"RETR 99999999999999999999", b"LIST " + b"9" * 3000, b"STAT",
                     b"list 1", b"AUTH PLAIN"):
            got.append(r.cmd(line))
        r.cmd(b"QUIT")
        r.close()
        return got

    got = await in_thread(run)
    assert got[0] == b"-ERR STAT is not allowed before login"
    assert got[1] == b"-ERR send USER first"
    assert got[2] == b"-ERR unknown command"
    assert got[3] == b"-ERR NOOP is not allowed before login"
    (user_after, list0, list2, list_abc, list_two, retr_none, top_one, top_neg, retr_big,
     too_long, stat, lower, auth_after) = got[4:]
    assert user_after == b"-ERR USER is not allowed after login"
    assert list0 == list2 == b"-ERR no such message"
    assert list_abc.startswith(b"-ERR message number must be")
    assert list_two.startswith(b"-ERR LIST takes")
    assert retr_none.startswith(b"-ERR RETR takes 1 argument")
    assert top_one.startswith(b"-ERR TOP takes 2")
    assert top_neg.startswith(b"-ERR line count must be")
    assert retr_big.startswith(b"-ERR message number must be")
    assert too_long == b"-ERR line too long"
    assert stat == b"+OK 1 %d" % len(MSG_CRLF)  # the session goes on
    assert lower == b"+OK 1 %d" % len(MSG_CRLF)  # keywords are case-insensitive
    assert auth_after == b"-ERR AUTH is not allowed after login"
    assert len(await box.uids()) == 1


async def test_too_many_bad_commands_closes(box: Box, client_ssl: ssl.SSLContext) -> None:
    def run() -> list[bytes]:
        r = Raw(box.port(), client_ssl)
        r.send(b"BAD\r\n" * 12)
        lines = [r.line() for _ in range(12)]
        r.close()
        return lines

    lines = await in_thread(run)
    assert lines[:10] == [b"-ERR unknown command"] * 10
    assert lines[10] == b"-ERR too many bad commands; closing"
    assert lines[11] == b""  # closed


async def test_auth_plain(box: Box, client_ssl: ssl.SSLContext) -> None:
    good = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    with_authzid = base64.b64encode(f"{USER}\0{USER}\0{PASSWORD}".encode())
    other_authzid = base64.b64encode(f"boss@example.com\0{USER}\0{PASSWORD}".encode())

    def run() -> list[bytes]:
        got = []
        r = Raw(box.port(), client_ssl)
        got.append(r.cmd(b"AUTH"))
        got.append(r.multiline_body())
        got.append(r.cmd(b"AUTH CRAM-MD5"))
        got.append(r.cmd(b"AUTH PLAIN !!!notbase64"))
        got.append(r.cmd(b"AUTH PLAIN " + other_authzid))
        got.append(r.cmd(b"AUTH PLAIN"))  # continuation, then cancel
        got.append(r.cmd(b"*"))
        got.append(r.cmd(b"AUTH PLAIN " + good))  # initial response (RFC 5034 §4)
        r.cmd(b"QUIT")
        r.close()
        r = Raw(box.port(), client_ssl)
        got.append(r.cmd(b"AUTH PLAIN"))
        got.append(r.cmd(with_authzid))
        r.cmd(b"QUIT")
        r.close()
        return got

    got = await in_thread(run)
    assert got[0] == b"+OK methods supported" and got[1] == b"PLAIN\r\n"
    assert got[2].startswith(b"-ERR unsupported authentication mechanism")
    assert got[3] == b"-ERR malformed base64 in AUTH PLAIN response"
    assert got[4] == b"-ERR [AUTH] authentication failed"
    assert got[5] == b"+ "
    assert got[6] == b"-ERR authentication cancelled"
    # (a failed-login notice may have been mailed in meanwhile)
    assert got[7].startswith(b"+OK maildrop has ")
    assert got[8] == b"+ "
    assert got[9].startswith(b"+OK maildrop has ")


async def test_retr_of_a_message_another_session_expunged(box: Box,
                                                          client_ssl: ssl.SSLContext) -> None:
    """The maildrop was listed at login; a message expunged since (by an IMAP session)
    is refused by RETR and TOP with -ERR, the others are still served, and nothing else
    is removed (the presence check and the read are one store call)."""
    await box.append(MSG_CRLF)
    await box.append(MSG_LF)
    p = await in_thread(lambda: pop3s(box.port(), client_ssl))
    try:
        assert (await in_thread(p.stat))[0] == 2
        await box.store.store_flags(box.inbox.id, [1], ["\\Deleted"], "add")
        assert await box.store.expunge(box.inbox.id, [1]) == [1]
        for command in (lambda: p.retr(1), lambda: p.top(1, 0)):
            with pytest.raises(poplib.error_proto) as refused:
                await in_thread(command)
            assert refused.value.args[0] == b"-ERR message 1 was removed by another session"
        resp, lines, _ = await in_thread(lambda: p.retr(2))
        assert resp.startswith(b"+OK") and b"\r\n".join(lines) + b"\r\n" == wire_form(MSG_LF)
        await in_thread(p.quit)
    finally:
        await in_thread(p.close)
    left = await box.store.list_messages(box.inbox.id)
    assert [m.uid for m in left] == [2] and "\\Seen" in left[0].flags


async def test_retr_in_any_order(box: Box, client_ssl: ssl.SSLContext) -> None:
    """A client that jumps around, skips a message it deleted or asks for TOP gets
    exactly the message it named."""
    bodies = [MSG_CRLF, MSG_LF, MSG_DOT_FIRST, b"Subject: four\r\n\r\nfour\r\n"]
    for data in bodies:
        await box.append(data)

    def run() -> list[bytes]:
        p = pop3s(box.port(), client_ssl)
        got = []
        for n in (2, 1, 3):
            _, lines, _ = p.retr(n)
            got.append(b"\r\n".join(lines) + b"\r\n")
        p.dele(4)
        got.append(p.top(2, 0)[0])
        with pytest.raises(poplib.error_proto):
            p.retr(4)  # deleted in this session: refused
        p.quit()
        return got

    got = await in_thread(run)
    assert got[:3] == [wire_form(bodies[n - 1]) for n in (2, 1, 3)]
    assert got[3].startswith(b"+OK")
    assert [m.uid for m in await box.store.list_messages(box.inbox.id)] == [1, 2, 3]

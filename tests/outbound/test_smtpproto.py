"""The SMTP client protocol without sockets: reply parsing, capabilities, commands,
DATA encoding (RFC 5321 §4.5.2 dot-stuffing, stray CR/LF normalization) and the
transaction state machine with and without PIPELINING (RFC 2920)."""

from __future__ import annotations

import pytest

from mailstack.outbound.smtpproto import (
    Capabilities,
    DataEncoder,
    Envelope,
    RemoteProtocolError,
    Reply,
    ReplyParser,
    Transaction,
    mail_command,
    rcpt_command,
    xtext,
)


def test_reply_parser_multiline_and_split_chunks() -> None:
    p = ReplyParser()
    assert p.feed(b"250-mx.example hello\r\n250-PIPE") == []
    replies = p.feed(b"LINING\r\n250 SIZE 1000\r\n220 ")
    assert replies == [Reply(250, ("mx.example hello", "PIPELINING", "SIZE 1000"))]
    assert p.feed(b"ok\r\n") == [Reply(220, ("ok",))]


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 400 Bad Request\r\n", b"25O ok\r\n", b"250x\r\n", b"\r\n", b"abc\r\n",
    b"250 a\x00b\r\n", b"650 nope\r\n"])
def test_reply_parser_refuses_garbage(garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        ReplyParser().feed(garbage)


def test_reply_parser_refuses_code_change_and_endless_line() -> None:
    with pytest.raises(RemoteProtocolError):
        ReplyParser().feed(b"250-a\r\n550 b\r\n")
    with pytest.raises(RemoteProtocolError):
        ReplyParser().feed(b"250 " + b"x" * 10000)


def test_enhanced_status() -> None:
    assert Reply(550, ("5.1.1 no such user",)).enhanced == "5.1.1"
    assert Reply(451, ("try later",)).enhanced == "4.0.0"
    assert Reply(550, ("4.1.1 mismatched class",)).enhanced == "5.0.0"


def test_capabilities() -> None:
    caps = Capabilities.from_ehlo(Reply(250, (
        "mx", "PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "DSN", "STARTTLS",
        "AUTH PLAIN LOGIN")))
    assert caps.pipelining and caps.size == 1000 and caps.eightbitmime and caps.smtputf8
    assert caps.dsn and caps.starttls and caps.auth == {"PLAIN", "LOGIN"}
    assert Capabilities.from_ehlo(Reply(250, ("mx", "SIZE"))).size == 0


def test_mail_and_rcpt_carry_dsn_only_when_offered() -> None:
    env = Envelope("a@x.example", ("b@y.example",), 123, eightbit=True, ret="HDRS",
                   envid="id+1=2", notify=("SUCCESS,FAILURE",),
                   orcpt=("rfc822;b@y.example",))
    dsn = Capabilities(esmtp=True, size=0, eightbitmime=True, dsn=True)
    assert mail_command(env, dsn) == (b"MAIL FROM:<a@x.example> SIZE=123 BODY=8BITMIME "
                                      b"RET=HDRS ENVID=id+2B1+3D2\r\n")
    assert rcpt_command(env, 0, dsn) == (b"RCPT TO:<b@y.example> NOTIFY=SUCCESS,FAILURE "
                                         b"ORCPT=rfc822;b@y.example\r\n")
    plain = Capabilities(esmtp=True)
    assert mail_command(env, plain) == b"MAIL FROM:<a@x.example>\r\n"
    assert rcpt_command(env, 0, plain) == b"RCPT TO:<b@y.example>\r\n"
    assert mail_command(env, Capabilities()) == b"MAIL FROM:<a@x.example>\r\n"
    assert xtext("a b\r") == "a+20b+0D"


def test_envelope_values_with_controls_are_refused() -> None:
    env = Envelope("a@x.example\r\nRCPT TO:<evil@z>", ("b@y.example",), 1)
    with pytest.raises(ValueError):
        mail_command(env, Capabilities())


def encode(*chunks: bytes) -> bytes:
    enc = DataEncoder()
    return b"".join(enc.feed(c) for c in chunks) + enc.finish()


@pytest.mark.parametrize("chunks,expected", [
    ((b"a\r\nb\r\n",), b"a\r\nb\r\n.\r\n"),
    ((b"a\r\nb",), b"a\r\nb\r\n.\r\n"),
    ((b".start\r\n..two\r\n.\r\n",), b"..start\r\n...two\r\n..\r\n.\r\n"),
    ((b"x\r\n", b".y\r\n"), b"x\r\n..y\r\n.\r\n"),
    ((b"x\r", b"\n.y\r\n"), b"x\r\n..y\r\n.\r\n"),
    ((b"bare\nlf\n.\nend",), b"bare\r\nlf\r\n..\r\nend\r\n.\r\n"),
    ((b"bare\rcr\r.\rend\r",), b"bare\r\ncr\r\n..\r\nend\r\n.\r\n"),
    ((b"a\r", b"", b"b"), b"a\r\nb\r\n.\r\n"),
    ((b"",), b".\r\n"),
])
def test_data_encoder(chunks: tuple[bytes, ...], expected: bytes) -> None:
    assert encode(*chunks) == expected


def test_data_encoder_any_chunking_gives_the_same_bytes() -> None:
    msg = b"H: v\r\n\r\n.line\n\r.x\r\r\n..\r\nlast"
    whole = encode(msg)
    for size in range(1, 8):
        assert encode(*[msg[i:i + size] for i in range(0, len(msg), size)]) == whole
    assert b"\r\n.\r\n" not in whole[:-3]  # the only end-of-data marker is the last one


def run(tx: Transaction, replies: list[Reply]) -> list[bytes]:
    sent = [tx.start()]
    for r in replies:
        out = tx.on_reply(r)
        if out:
            sent.append(out)
    return sent


OK = Reply(250, ("ok",))


def test_transaction_pipelined_per_recipient_results() -> None:
    env = Envelope("a@x", ("b@y", "c@y"), 10)
    tx = Transaction(env, Capabilities(esmtp=True, pipelining=True))
    first = tx.start()
    assert first.count(b"\r\n") == 3  # MAIL and both RCPTs in one go
    assert tx.on_reply(OK) == b""
    assert tx.on_reply(Reply(550, ("5.1.1 no",))) == b""
    assert tx.on_reply(OK) == b"DATA\r\n"
    tx.on_reply(Reply(354, ("go",)))
    assert tx.wants_data
    tx.on_reply(Reply(250, ("2.0.0 queued",)))
    assert tx.done
    assert tx.results[0].code == 550 and tx.results[1].code == 250


def test_transaction_one_at_a_time_and_mail_refused() -> None:
    env = Envelope("a@x", ("b@y", "c@y"), 10)
    tx = Transaction(env, Capabilities(esmtp=True))
    sent = run(tx, [OK, OK, Reply(451, ("4.3.0 later",))])
    assert sent[0].startswith(b"MAIL") and sent[1].startswith(b"RCPT TO:<b@y>")
    assert sent[2].startswith(b"RCPT TO:<c@y>")
    assert sent[3] == b"DATA\r\n"  # one recipient accepted: the message goes
    assert tx.results == {1: Reply(451, ("4.3.0 later",))} and not tx.done
    tx2 = Transaction(env, Capabilities(esmtp=True))
    run(tx2, [Reply(553, ("5.7.1 no",))])
    assert tx2.done and {r.code for r in tx2.results.values()} == {553}


def test_transaction_pipelined_mail_refused_consumes_rcpt_replies() -> None:
    env = Envelope("a@x", ("b@y",), 10)
    tx = Transaction(env, Capabilities(esmtp=True, pipelining=True))
    tx.start()
    tx.on_reply(Reply(452, ("4.3.1 full",)))
    assert tx.on_reply(Reply(503, ("5.5.1 no MAIL",))) == b""
    assert tx.done and tx.results[0].code == 452


def test_transaction_data_refused() -> None:
    tx = Transaction(Envelope("a@x", ("b@y",), 10), Capabilities(esmtp=True))
    run(tx, [OK, OK, Reply(554, ("no data",))])
    assert tx.done and tx.results[0].code == 554

"""Header block operations: Bcc removal, From: extraction, trace headers, checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mailstack.policy.envelope import EnvelopeAddress
from mailstack.policy.headers import (
    HeaderError,
    MessageLimits,
    TlsInfo,
    check_message,
    delivered_to_header,
    extract_from_addresses,
    header_fields,
    parse_address_list,
    received_header,
    received_protocol,
    return_path_header,
    split_header,
    strip_bcc,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def msg(*header_lines: str, body: str = "hello\r\n") -> bytes:
    return ("".join(h + "\r\n" for h in header_lines) + "\r\n" + body).encode()


# --- Bcc --------------------------------------------------------------------------------

BCC_CASES = [
    ("Bcc: secret@x.example",),
    ("BCC: secret@x.example",),
    ("bcc: secret@x.example",),
    ("Bcc : secret@x.example",),  # obsolete WSP before colon
    ("Bcc:secret@x.example",),
    ("Bcc: first@x.example,", " secret@x.example,", "\tthird@x.example"),  # folded
    ("Bcc:",),  # empty
    ("Resent-Bcc: secret@x.example",),
    ("Bcc: a@x.example", "Bcc: secret@x.example"),  # repeated
]


@pytest.mark.parametrize("bcc", BCC_CASES)
def test_strip_bcc(bcc: tuple[str, ...]) -> None:
    data = msg(
        "From: anna@hosted.example",
        *bcc,
        "To: bob@x.example",
        "Subject: hi",
        body="Bcc: stays in the body\r\n",
    )
    out = strip_bcc(data)
    head, body = split_header(out)
    assert b"secret" not in head and b"bcc" not in head.lower()
    assert head == b"From: anna@hosted.example\r\nTo: bob@x.example\r\nSubject: hi\r\n"
    assert body == b"Bcc: stays in the body\r\n"


def test_strip_bcc_first_and_last_field_and_no_body() -> None:
    data = b"Bcc: s@x.example\r\n  more@x.example\r\nSubject: a\r\nBcc: t@x.example\r\n"
    assert strip_bcc(data) == b"Subject: a\r\n"
    data = msg("Subject: nothing to strip")
    assert strip_bcc(data) is data


def test_strip_bcc_does_not_touch_similar_names() -> None:
    data = msg("X-Bcc-Info: keep", "Bccx: keep", "Subject: Bcc: keep")
    assert strip_bcc(data) == data


def test_strip_bcc_lf_only_input() -> None:
    data = b"Subject: a\nBcc: s@x.example\n\tmore\nTo: b@x.example\n\nbody\n"
    assert strip_bcc(data) == b"Subject: a\nTo: b@x.example\n\nbody\n"


def test_header_block_ends_at_non_field_line() -> None:
    data = b"Subject: a\r\nthis is body\r\nBcc: typed in the body\r\n"
    head, body = split_header(data)
    assert head == b"Subject: a\r\n" and body.startswith(b"this is body")
    assert strip_bcc(data) == data  # what MUAs show as body is left alone
    assert split_header(b"hello\r\n") == (b"", b"hello\r\n")
    assert split_header(b" folded first\r\n") == (b"", b" folded first\r\n")


def test_header_fields() -> None:
    fields = header_fields(b"A: 1\r\n  2\r\nB : 3\r\n")
    assert fields == [(b"a", b"A: 1\r\n  2\r\n"), (b"b", b"B : 3\r\n")]


# --- From: -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("anna@hosted.example", [("", "anna@hosted.example")]),
        ("Anna Alpha <anna@hosted.example>", [("Anna Alpha", "anna@hosted.example")]),
        ('"Alpha, Anna" <anna@hosted.example>', [("Alpha, Anna", "anna@hosted.example")]),
        ('"bob@evil.example" <anna@hosted.example>', [("bob@evil.example", "anna@hosted.example")]),
        ("anna@hosted.example (Anna)", [("", "anna@hosted.example")]),
        ("(c) <anna@hosted.example> (x (nested))", [("", "anna@hosted.example")]),
        ("a@x.example, B <b@y.example>", [("", "a@x.example"), ("B", "b@y.example")]),
        ("Team: a@x.example, b@y.example;", [("", "a@x.example"), ("", "b@y.example")]),
        ("undisclosed-recipients:;", []),
        ("=?utf-8?q?J=C3=B6rg?= <j@x.example>", [("Jörg", "j@x.example")]),
        ("=?utf-8?b?SsO2cmc=?= <j@x.example>", [("Jörg", "j@x.example")]),
        ("=?utf-8?q?evil=40x.example?= <j@x.example>", [("evil@x.example", "j@x.example")]),
        ("John Q. Public <jqp@x.example>", [("John Q. Public", "jqp@x.example")]),
        ('"a b"@x.example', [("", '"a b"@x.example')]),
        ("<@route.example:a@x.example>", [("", "a@x.example")]),
        ("a@[192.0.2.1]", [("", "a@[192.0.2.1]")]),
        ("Jörg <jörg@bücher.example>", [("Jörg", "jörg@bücher.example")]),
    ],
)
def test_parse_address_list(value: str, expected: list[tuple[str, str]]) -> None:
    assert [(a.name, a.address) for a in parse_address_list(value)] == expected


@pytest.mark.parametrize(
    "value",
    [
        "anna",
        "Anna <anna>",
        "<anna@x.example",
        '"unterminated <a@x.example>',
        "(unterminated <a@x.example>",
        "a@x.example b@y.example",
        "a@x.example b",
        "John Smith@x.example",
        "a@x..example",
        'a@"x".example',
        "a@x.example)<b@y.example>",  # CVE-2023-27043 class
        "G: a@x.example",  # unterminated group
        "a@",
        "@x.example",
    ],
)
def test_parse_address_list_refuses(value: str) -> None:
    with pytest.raises(HeaderError) as exc:
        parse_address_list(value)
    assert (exc.value.code, exc.value.enhanced) == (550, "5.6.0")


def test_extract_from_addresses_folded_and_multiple() -> None:
    data = msg(
        "Subject: x",
        "From: Anna",
        " <anna@hosted.example>,",
        "\tbob@hosted.example",
        "from: carl@hosted.example",
        "Sender: s@x.example",
    )
    got = [a.address for a in extract_from_addresses(data)]
    assert got == ["anna@hosted.example", "bob@hosted.example", "carl@hosted.example"]
    assert extract_from_addresses(msg("Subject: none")) == ()
    assert extract_from_addresses(b"Subject: a\r\n\r\nFrom: body@x.example\r\n") == ()


# --- trace headers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("esmtp", "tls", "auth", "utf8", "expected"),
    [
        (False, False, False, False, "SMTP"),
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, False, True, False, "ESMTPA"),
        (True, True, True, False, "ESMTPSA"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_received_protocol(esmtp: bool, tls: bool, auth: bool, utf8: bool, expected: str) -> None:
    assert received_protocol(esmtp=esmtp, tls=tls, authenticated=auth, smtputf8=utf8) == expected


def test_received_header_single_recipient() -> None:
    h = received_header(
        helo="client.example",
        client_ip="192.0.2.7",
        client_host="host7.example",
        server_host="mail.example.net",
        protocol="ESMTPS",
        queue_id="ABC123",
        recipients=[EnvelopeAddress("anna", "hosted.example")],
        now=NOW,
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256),
    )
    text = h.decode()
    assert text.startswith("Received: from client.example (host7.example [192.0.2.7])\r\n")
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))" in text
    assert "by mail.example.net (mailstack) with ESMTPS id ABC123" in text
    assert "for <anna@hosted.example>; Wed, 01 May 2024 12:00:00 +0000\r\n" in text
    assert text.endswith("\r\n") and text.count("\r\n") == 4
    for line in text.split("\r\n")[1:-1]:
        assert line.startswith("\t")  # folded continuation lines


def test_received_header_no_for_with_several_recipients() -> None:
    h = received_header(
        helo="c.example",
        client_ip="2001:db8::7",
        client_host=None,
        server_host="mail.example.net",
        protocol="ESMTP",
        queue_id="Q1",
        recipients=["a@x.example", "b@x.example"],
        now=NOW,
    )
    text = h.decode()
    assert "for <" not in text and "b@x.example" not in text
    assert "(unknown [IPv6:2001:db8::7])" in text
    assert "id Q1;\r\n\tWed, 01 May 2024" in text


@pytest.mark.parametrize(
    "evil",
    [
        "evil\r\nX-Injected: yes",
        "evil\nBcc: x@y",
        "evil\rX: y",
        "ev\x00il",
        "evil) (fake comment",
        "evil; Mon, 1 Jan 2001",
        "évil\u2028X: y",
        "x" * 1000,
    ],
)
def test_received_header_sanitises_client_input(evil: str) -> None:
    h = received_header(
        helo=evil,
        client_ip=evil,
        client_host=evil,
        server_host="m.example",
        protocol=evil,
        queue_id=evil,
        recipients=[evil],
        now=NOW,
        tls=TlsInfo(evil, evil),
    )
    text = h.decode("utf-8")
    lines = text.split("\r\n")
    assert lines[-1] == ""
    for line in lines[1:-1]:
        assert line.startswith("\t")
    for ch in text:
        assert ch in "\r\n\t" or (ch.isprintable() and ch != "\u2028")
    assert b"\n" not in h.replace(b"\r\n", b"") and b"\r" not in h.replace(b"\r\n", b"")
    assert "X-Injected" not in text.replace("?X-Injected", "")
    assert all(len(line) < 998 for line in lines)


def test_return_path_and_delivered_to() -> None:
    assert return_path_header(None) == b"Return-Path: <>\r\n"
    assert return_path_header(EnvelopeAddress("Anna", "x.example")) == (
        b"Return-Path: <Anna@x.example>\r\n"
    )
    assert delivered_to_header("anna@hosted.example") == b"Delivered-To: anna@hosted.example\r\n"
    assert b"\n" not in delivered_to_header("a\r\nb@x").rstrip(b"\r\n")


# --- message checks ------------------------------------------------------------------


def test_clean_message_ok() -> None:
    assert check_message(msg("From: a@x.example", "Subject: s")).ok
    assert check_message(b"").ok
    assert check_message(b"no header at all\r\n").ok


@pytest.mark.parametrize(
    "data",
    [
        b"Subject: a\r\n\r\nline\n.\nMAIL FROM:<x@y>\r\n",  # bare LF smuggling
        b"Subject: a\r\n\r\nline\r\n.\nRCPT TO:<x@y>\r\n",
        b"Subject: a\r\n\r\nline\n.\r\nDATA\r\n",
        b"Subject: a\r\n\r\nline\r.\rQUIT\r\n",  # bare CR
        b"Subject: a\r\n\r\nend\r",
        b"Subject: a\nX: b\r\n\r\n",
        b"Subject: a\r\r\n\r\n",
    ],
)
def test_bare_cr_lf_refused(data: bytes) -> None:
    v = check_message(data)
    assert (v.ok, v.code, v.enhanced) == (False, 554, "5.6.0")
    assert "bare" in v.text


def test_nul_refused() -> None:
    v = check_message(b"Subject: a\r\n\r\nx\x00y\r\n")
    assert (v.ok, v.code) == (False, 554)


@pytest.mark.parametrize(("length", "ok"), [(998, True), (999, False), (5000, False)])
def test_line_length(length: int, ok: bool) -> None:
    body = b"x" * length + b"\r\n"
    v = check_message(b"Subject: a\r\n\r\nfirst\r\n" + body + b"last\r\n")
    assert v.ok is ok
    if not ok:
        assert (v.code, v.enhanced) == (554, "5.6.0") and "Line 4" in v.text
    v = check_message(b"X: " + b"y" * (length - 3) + b"\r\n\r\n")  # header line too
    assert v.ok is ok


def test_header_count_cap() -> None:
    lim = MessageLimits(max_header_fields=100)
    assert check_message(msg(*[f"X-{i}: v" for i in range(100)]), lim).ok
    v = check_message(msg(*[f"X-{i}: v" for i in range(101)]), lim)
    assert (v.ok, v.code, v.enhanced) == (False, 552, "5.3.4")


def test_single_field_size_cap() -> None:
    lim = MessageLimits(max_field_bytes=1000)
    folded = ["X-Long: start"] + [" " + "y" * 90] * 9
    assert check_message(msg(*folded), lim).ok
    v = check_message(msg(*folded, " " + "z" * 200), lim)
    assert (v.ok, v.code, v.enhanced) == (False, 552, "5.3.4")


def test_total_header_size_cap() -> None:
    lim = MessageLimits(max_header_bytes=10_000, max_header_fields=10_000)
    v = check_message(msg(*[f"X-{i}: " + "v" * 90 for i in range(200)]), lim)
    assert (v.ok, v.code, v.enhanced) == (False, 552, "5.3.4")


def test_received_loop_cap() -> None:
    assert check_message(msg(*["Received: from x by y; date"] * 100)).ok
    v = check_message(msg(*["Received: from x by y; date"] * 101))
    assert (v.ok, v.code, v.enhanced) == (False, 554, "5.4.6")


def test_big_message_is_linear() -> None:
    data = msg("Subject: big", body="x" * 998 + "\r\n") + (b"y" * 998 + b"\r\n") * 30_000
    assert check_message(data).ok

"""Envelope address parsing (RFC 5321 §4.1.2, RFC 6531, RFC 3461 xtext)."""

from __future__ import annotations

import pytest

from mailstack.policy.envelope import (
    AddressError,
    EnvelopeAddress,
    check_helo_name,
    parse_forward_path,
    parse_mail_from,
    parse_mailbox,
    parse_rcpt_to,
    split_params,
    xtext_decode,
)

HOSTED = "hosted.example"


# --- open-relay spellings: each either refused or parsed to a mailbox AT the domain
# written after the last "@" (RFC 5321 §4.1.2); the local part is never re-routed. ----

OPEN_RELAY_TABLE = [
    # (RCPT argument, expected (local, domain) or None for refused)
    ("<user%evil.com@hosted.example>", ("user%evil.com", HOSTED)),  # percent hack
    ("<user%evil.com>", None),  # percent hack without a domain
    ("<evil.com!user@hosted.example>", ("evil.com!user", HOSTED)),  # bang path
    ("<evil.com!user>", None),
    ("<@hosted.example:user@evil.com>", ("user", "evil.com")),  # route: final mailbox
    ("<@evil.com:user@hosted.example>", ("user", HOSTED)),
    ("<@a.example,@b.example:user@hosted.example>", ("user", HOSTED)),
    ("<@hosted.example,user@evil.com>", None),  # malformed route
    ("@hosted.example:user@evil.com", None),  # route needs brackets
    ('<"user@evil.com"@hosted.example>', ('"user@evil.com"', HOSTED)),  # quoted @
    ('<"user@evil.com">', None),
    ('<"user%evil.com"@hosted.example>', ("user%evil.com", HOSTED)),  # unquoted canonical
    ("<user@[1.2.3.4]>", ("user", "[1.2.3.4]")),  # literal: flagged, never hosted
    ("<user@[IPv6:2001:DB8::1]>", ("user", "[IPv6:2001:db8::1]")),
    ("<user@[IPv6:fe80::1%eth0]>", None),  # zone id
    ("<user@[300.1.1.1]>", None),
    ("<user@[01.2.3.4]>", None),
    ("<user@1.2.3.4>", None),  # bare IP as domain
    ("<user@[x-tag:stuff]>", None),  # general literal
    ("<user@hosted.example.>", None),  # trailing dot refused
    ("<user@hosted.example..>", None),
    ("<user@.hosted.example>", None),
    ("<user@HOSTED.EXAMPLE>", ("user", HOSTED)),  # uppercase domain normalised
    ("<User@Hosted.Example>", ("User", HOSTED)),  # local part preserved
    ("<user@hosted.example@evil.com>", None),
    ("<user@evil.com@hosted.example>", None),
    ("<user@hosted.example,evil.com>", None),
    ("<user@hosted.example>evil.com", None),
    ("<user@hosted.example> <x@evil.com>", None),  # second path is not a parameter
    ("<user@hosted.example%evil.com>", None),
    ("<user@hosted.example:25>", None),
    ("<user@hosted-.example>", None),
    ("<user@hosted.exam_ple>", None),
    ("<user@hosted.example\x00.evil.com>", None),
    ("<user@hosted.example\r\nRCPT TO:<x@evil.com>>", None),
    ("<user@xn--bcher-kva.example>", ("user", "xn--bcher-kva.example")),
    ("<user@xn--zz.example>", None),  # fake A-label
    ("<user@hosted．example>", None),  # fullwidth dot (U+FF0E) is no dot
]


@pytest.mark.parametrize(("arg", "expected"), OPEN_RELAY_TABLE)
def test_open_relay_spellings(arg: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(AddressError) as exc:
            parse_rcpt_to(arg, smtputf8=True)
        assert exc.value.code in (501, 553, 555)
        return
    rcpt = parse_rcpt_to(arg, smtputf8=True).recipient
    assert (rcpt.local, rcpt.domain) == expected
    assert rcpt.is_literal == expected[1].startswith("[")
    # the key never has a second unquoted "@": everything before the last "@" is local
    assert rcpt.key.rpartition("@")[2] == expected[1]


def test_idn_domain_becomes_a_label() -> None:
    rcpt = parse_rcpt_to("<user@BÜCHER.example>", smtputf8=True).recipient
    assert rcpt.domain == "xn--bcher-kva.example"
    assert rcpt.domain_unicode == "bücher.example"
    assert rcpt.key == "user@xn--bcher-kva.example"


def test_non_ascii_needs_smtputf8() -> None:
    # RFC 6531 §3.5: 553 5.6.7 without SMTPUTF8
    for arg in ("<user@bücher.example>", "<jörg@hosted.example>", '<"jörg"@hosted.example>'):
        with pytest.raises(AddressError) as exc:
            parse_rcpt_to(arg, smtputf8=False)
        assert (exc.value.code, exc.value.enhanced) == (553, "5.6.7")
    with pytest.raises(AddressError) as exc:
        parse_mail_from("<jörg@hosted.example>")
    assert exc.value.code == 553
    mf = parse_mail_from("<jörg@hosted.example> SMTPUTF8")
    assert mf.sender is not None and mf.sender.local == "jörg"
    assert mf.sender.needs_smtputf8 and mf.params.smtputf8


def test_key_and_str() -> None:
    a = parse_forward_path("<Anna.Alpha@Hosted.Example>")
    assert a == EnvelopeAddress("Anna.Alpha", HOSTED)
    assert a.key == "anna.alpha@hosted.example"
    assert str(a) == "Anna.Alpha@hosted.example"


def test_quoted_local_part_canonical_form() -> None:
    assert parse_forward_path('<"anna"@hosted.example>').local == "anna"
    assert parse_forward_path('<"a b"@hosted.example>').local == '"a b"'
    assert parse_forward_path('<"a\\"b"@hosted.example>').local == '"a\\"b"'
    assert parse_forward_path('<"a\\\\b"@hosted.example>').local == '"a\\\\b"'
    with pytest.raises(AddressError):
        parse_forward_path('<""@hosted.example>')
    with pytest.raises(AddressError):
        parse_forward_path('<"unterminated@hosted.example>')


def test_null_reverse_path_only_for_mail() -> None:
    mf = parse_mail_from("FROM:<>")
    assert mf.sender is None
    assert parse_mail_from("<> SIZE=100").params.size == 100
    with pytest.raises(AddressError) as exc:
        parse_rcpt_to("TO:<>")
    assert exc.value.code == 501


def test_missing_angle_brackets_and_spaces_are_tolerated() -> None:
    assert parse_mail_from("FROM:user@x.example").sender == EnvelopeAddress("user", "x.example")
    assert parse_mail_from("FROM: <user@x.example>").sender == EnvelopeAddress("user", "x.example")
    mf = parse_mail_from("from:user@x.example BODY=8BITMIME SIZE=5")
    assert mf.params.body == "8BITMIME" and mf.params.size == 5
    assert parse_rcpt_to('TO:"a b"@x.example').recipient.local == '"a b"'


def test_postmaster_without_domain() -> None:
    r = parse_rcpt_to("TO:<Postmaster>", postmaster_domain="Hosted.Example").recipient
    assert r.key == "postmaster@hosted.example"
    with pytest.raises(AddressError):
        parse_rcpt_to("TO:<Postmaster>")


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("<" + "a" * 64 + "@x.example>", True),
        ("<" + "a" * 65 + "@x.example>", False),  # RFC 5321 §4.5.3.1.1
        ('<"' + "a" * 63 + '"@x.example>', False),  # quotes count
        ("<a@" + ".".join(["b" * 63] * 3) + "." + "c" * 60 + ">", True),  # path 256
        ("<a@" + ".".join(["b" * 63] * 3) + "." + "c" * 61 + ">", False),  # path 257
        ("<a@" + ".".join(["b" * 63] * 4) + ">", False),  # domain 255, path 259
        ("<a@" + "b" * 64 + ".example>", False),  # label > 63
        ("<" + "a" * 60 + "@" + ".".join(["b" * 48] * 4) + ".ex>", False),  # path 260
    ],
)
def test_length_limits(path: str, ok: bool) -> None:
    if ok:
        parse_forward_path(path)
    else:
        with pytest.raises(AddressError):
            parse_forward_path(path)


@pytest.mark.parametrize(
    "arg",
    [
        "<user\r@x.example>",
        "<user\n@x.example>",
        "<user@x.example>\r\nRSET",
        "<user@x.example> SIZE=1\x00",
        "<user@x.example>\tSIZE=1",
        "<us\x7fer@x.example>",
        "<us\x85er@x.example> SMTPUTF8",
        '<"a\x01b"@x.example>',
        "<user@x.example> ENVID=a\x0bb",
    ],
)
def test_controls_refused_anywhere(arg: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_mail_from(arg)
    assert exc.value.code == 501


@pytest.mark.parametrize(
    ("value", "decoded"),
    [("abc", "abc"), ("a+2Bb", "a+b"), ("a+3Db", "a=b"), ("+20", " "), ("", "")],
)
def test_xtext_decodes(value: str, decoded: str) -> None:
    assert xtext_decode(value) == decoded


@pytest.mark.parametrize(
    "value", ["+0A", "+0D+0A", "a+00", "+7F", "+1B", "+80", "+0a", "a+b", "a+", "a=b", "a b"]
)
def test_xtext_injection_refused(value: str) -> None:
    with pytest.raises(AddressError) as exc:
        xtext_decode(value)
    assert (exc.value.code, exc.value.enhanced) == (501, "5.5.4")


@pytest.mark.parametrize(
    "arg",
    [
        "<u@x.example> ENVID=abc+0D+0ARCPT",
        "<u@x.example> AUTH=u+0A@x.example",
        "<u@x.example> ENVID=" + "a" * 101,
    ],
)
def test_mail_xtext_params_refused(arg: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_mail_from(arg)
    assert exc.value.code == 501


@pytest.mark.parametrize(
    "arg",
    [
        "<u@x.example> ORCPT=rfc822;u+0D+0A@x.example",
        "<u@x.example> ORCPT=utf-8;u\\x{0A}@x.example",
        "<u@x.example> ORCPT=utf-8;u\\x{85}@x.example",
        "<u@x.example> ORCPT=rfc822",
        "<u@x.example> ORCPT=;u@x.example",
        "<u@x.example> NOTIFY=NEVER,SUCCESS",
        "<u@x.example> NOTIFY=SOMETIMES",
        "<u@x.example> NOTIFY=",
        "<u@x.example> NOTIFY=SUCCESS NOTIFY=FAILURE",
    ],
)
def test_rcpt_params_refused(arg: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_rcpt_to(arg)
    assert exc.value.code == 501


def test_rcpt_params_parsed() -> None:
    r = parse_rcpt_to("TO:<u@x.example> NOTIFY=success,Delay ORCPT=rfc822;u+2Bx@x.example")
    assert r.params.notify == frozenset({"SUCCESS", "DELAY"})
    assert r.params.orcpt == ("rfc822", "u+x@x.example")
    r = parse_rcpt_to("TO:<u@x.example> ORCPT=UTF-8;j\\x{F6}rg@x.example")
    assert r.params.orcpt == ("utf-8", "jörg@x.example")


def test_mail_params_parsed() -> None:
    mf = parse_mail_from(
        "FROM:<u@x.example> SIZE=1000 BODY=7bit RET=hdrs ENVID=id+2B1 AUTH=<>", max_size=2000
    )
    p = mf.params
    assert (p.size, p.body, p.ret, p.envid, p.auth) == (1000, "7BIT", "HDRS", "id+1", "<>")


@pytest.mark.parametrize(
    ("arg", "code", "kwargs"),
    [
        ("<u@x.example> SIZE=2001", 552, {"max_size": 2000}),  # RFC 1870 §6.1
        ("<u@x.example> SIZE=-1", 501, {}),
        ("<u@x.example> SIZE=1e3", 501, {}),
        ("<u@x.example> SIZE=" + "9" * 21, 501, {}),
        ("<u@x.example> SIZE", 501, {}),
        ("<u@x.example> BODY=BINARYMIME", 501, {}),
        ("<u@x.example> SMTPUTF8=yes", 501, {}),
        ("<u@x.example> SMTPUTF8", 555, {"smtputf8_enabled": False}),
        ("<u@x.example> RET=FULL", 555, {"dsn_enabled": False}),
        ("<u@x.example> XFORWARD=1", 555, {}),
        ("<u@x.example> SIZE=1 size=2", 501, {}),
        ("<u@x.example> =1", 501, {}),
        ("<u@x.example> SIZE=1=2", 501, {}),
        ("<u@x.example>SIZE=1", 501, {}),
        ("", 501, {}),
        ("<u@x.example", 501, {}),
    ],
)
def test_mail_params_refused(arg: str, code: int, kwargs: dict[str, object]) -> None:
    with pytest.raises(AddressError) as exc:
        parse_mail_from(arg, **kwargs)  # type: ignore[arg-type]
    assert exc.value.code == code


def test_split_params() -> None:
    assert split_params("<a@b.example> SIZE=10  body=8bitmime SMTPUTF8") == (
        "<a@b.example>",
        {"SIZE": "10", "BODY": "8bitmime", "SMTPUTF8": None},
    )
    assert split_params('<"a>b"@x.example> X=1') == ('<"a>b"@x.example>', {"X": "1"})
    assert split_params('"a b"@x.example SIZE=1') == ('"a b"@x.example', {"SIZE": "1"})
    assert split_params("<>") == ("<>", {})


def test_sender_errors_use_5_1_7() -> None:
    with pytest.raises(AddressError) as exc:
        parse_mail_from("<no-at-sign>")
    assert exc.value.enhanced == "5.1.7"
    with pytest.raises(AddressError) as exc:
        parse_rcpt_to("<no-at-sign>")
    assert exc.value.enhanced == "5.1.3"
    assert exc.value.reply.startswith("501 5.1.3 ")


def test_parse_mailbox_for_stored_targets() -> None:
    assert parse_mailbox("Bob@Other.Example").key == "bob@other.example"


# --- EHLO / HELO ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "literal", "valid"),
    [
        ("mail.example.com", False, True),
        ("[192.0.2.1]", True, True),
        ("[IPv6:2001:db8::1]", True, True),
        ("192.0.2.1", True, False),  # bare IP: accepted, flagged
        ("PRINTER_01", False, False),  # Windows/printer names
        ("localhost", False, True),
        ("bücher.example", False, True),
        ("[bogus]", True, False),
    ],
)
def test_helo_accepted(name: str, literal: bool, valid: bool) -> None:
    h = check_helo_name(name)
    assert (h.name, h.is_literal, h.valid_syntax) == (name, literal, valid)


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "host name",
        "host\r\nMAIL FROM:<x@y>",
        "host\nx",
        "host\x00",
        "host\tx",
        "host\x1b[31m",
        "host\x7f",
        "a" * 256,
    ],
)
def test_helo_refused(name: str) -> None:
    with pytest.raises(AddressError) as exc:
        check_helo_name(name)
    assert (exc.value.code, exc.value.enhanced) == (501, "5.5.2")

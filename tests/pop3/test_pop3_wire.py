"""Pure tests of the POP3 wire form, sizes, TOP and command parsing (no server)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.pop3.commands import SyntaxErr, decode_plain, parse, status_line
from mailstack.pop3.maildrop import shape_of, stuffed, top_of, wire_form, wire_size

pieces = st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b" "]),
                  max_size=30).map(b"".join)


@given(pieces, pieces)
def test_wire_size_matches_wire_form(prefix: bytes, body: bytes) -> None:
    """The size announced by LIST is the size RETR sends (RFC 1939 §5, §11)."""
    wire = wire_form(prefix + body)
    assert wire_size(shape_of(prefix), shape_of(body)) == len(wire)
    assert wire_form(wire) == wire  # already normalised
    assert wire == b"" or wire.endswith(b"\r\n")
    assert b"\n" not in wire.replace(b"\r\n", b"")


@given(pieces)
def test_stuffing_round_trips(body: bytes) -> None:
    wire = wire_form(body)
    out = stuffed(wire)
    assert out.endswith(b".\r\n")
    lines = out[:-3].split(b"\r\n")[:-1] if wire else []
    assert all(not ln.startswith(b".") or ln.startswith(b"..") for ln in lines)
    unstuffed = b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    assert unstuffed == wire


def test_top() -> None:
    msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n"
    assert top_of(msg, 0) == b"A: 1\r\nB: 2\r\n\r\n"
    assert top_of(msg, 2) == b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
    assert top_of(msg, 99) == msg
    assert top_of(b"A: 1\r\n", 3) == b"A: 1\r\n"  # no body at all
    assert top_of(b"\r\nbody\r\nmore\r\n", 1) == b"\r\nbody\r\n"  # no header at all


def test_status_line_is_bounded_and_single() -> None:
    line = status_line(False, "x" * 1000 + "\r\nINJECTED", "SYS/TEMP")
    assert len(line) == 512 and line.endswith(b"\r\n") and line.count(b"\n") == 1


def test_parse() -> None:
    cmd = parse(b"pass  two words \r\n")
    assert cmd.keyword == b"PASS" and cmd.rest == b" two words "
    for bad in (b"\r\n", b"TOOLONGWORD\r\n", b"R3TR 1\r\n", b"\x00\x01\x02\r\n"):
        with pytest.raises(SyntaxErr):
            parse(bad)


def test_decode_plain() -> None:
    creds = decode_plain(base64.b64encode(b"\0anna@example.com\0p w"))
    assert (creds.authzid, creds.authcid, creds.password) == ("", "anna@example.com", "p w")
    for bad in (b"=", b"!!", base64.b64encode(b"only\0two"), base64.b64encode(b"\0\0pw"),
                base64.b64encode(b"\0u\0\xff")):
        with pytest.raises(SyntaxErr):
            decode_plain(bad)

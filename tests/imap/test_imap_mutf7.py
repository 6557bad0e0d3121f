"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.imap.mutf7 import MUTF7Error, decode, encode

CASES = [
    ("INBOX", "INBOX"),
    ("&", "&-"),
    ("a&b", "a&-b"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("日本語", "&ZeVnLIqe-"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
    ("😀", "&2D3eAA-"),  # astral plane: surrogate pair
    ("é&é", "&AOk-&-&AOk-"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "wire"), CASES)
def test_roundtrip(text: str, wire: str) -> None:
    assert encode(text) == wire
    assert decode(wire) == text
    assert decode(wire.encode()) == text


@pytest.mark.parametrize(
    "bad",
    [
        "&",  # unterminated
        "a&AOk",  # unterminated run
        "&AGE-",  # encodes printable "a"
        "&ACY-",  # encodes "&" itself
        "&AOk-&AOk-",  # adjacent runs
        "&A-",  # truncated base64
        "&AOl-",  # non-zero padding bits
        "&A*k-",  # bad base64 character
        "&AO/-",  # '/' is not modified base64
        "&2D0-",  # unpaired high surrogate
        "&AOkA-",  # odd octet count
        "caf\u00e9",  # raw 8-bit
        "a\x00b",  # control characters
        "a\tb",
    ],
)
def test_invalid(bad: str) -> None:
    with pytest.raises(MUTF7Error):
        decode(bad)
    with pytest.raises(ValueError):
        decode(bad.encode("utf-8"))


def test_not_python_utf7() -> None:
    # Python's utf-7 would encode "&" as-is and use "+"; ours must not.
    assert encode("+&") == "+&-"
    assert decode("+AOk-") == "+AOk-"


@given(st.text())
def test_roundtrip_property(text: str) -> None:
    wire = encode(text)
    assert all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode(wire) == text


@given(st.binary(max_size=40))
def test_decode_fuzz(data: bytes) -> None:
    try:
        text = decode(data)
    except MUTF7Error:
        return
    assert encode(text) == data.decode("ascii")  # only canonical input is accepted

"""msa_additions (RFC 6409 §8): only missing fields, in front, separator when needed."""

from __future__ import annotations

from mailstack.policy.submission import has_field, msa_additions

NOW = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000


def add(message: bytes) -> bytes:
    return msa_additions(message, login="anna@example.com", hostname="mail.example.net",
                         now=NOW, unique="Q1.abc")


def test_all_missing() -> None:
    assert add(b"Subject: x\r\n\r\nbody\r\n") == (
        b"From: anna@example.com\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        b"Message-ID: <Q1.abc@mail.example.net>\r\n")


def test_nothing_missing_case_insensitive() -> None:
    msg = b"FROM: a@x\r\ndate: Mon, 1 Jan 2024 00:00:00 +0000\r\nmessage-id: <1@x>\r\n\r\nb"
    assert add(msg) == b""


def test_folded_fields_count() -> None:
    msg = b"From:\r\n a@x\r\nDate:\r\n Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb"
    assert add(msg) == b"Message-ID: <Q1.abc@mail.example.net>\r\n"


def test_no_header_section_gets_separator() -> None:
    out = add(b"only body\r\n")
    assert out.endswith(b">\r\n\r\n")
    assert add(b"\r\nbody\r\n").endswith(b">\r\n")  # empty header: separator is there
    assert not add(b"\r\nbody\r\n").endswith(b"\r\n\r\n")


def test_from_in_body_does_not_count() -> None:
    assert add(b"Subject: x\r\n\r\nFrom: a@x\r\n").startswith(b"From: anna@example.com\r\n")
    assert not has_field(b"Subject: x\r\n\r\nFrom: a@x\r\n", b"From")
    assert has_field(b"Subject: x\r\nfrom: a@x\r\n\r\n", b"From")

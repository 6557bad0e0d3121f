"""Pure pieces of the SMTP front-end, without a server: DATA reading and replies."""

from __future__ import annotations

import asyncio

import pytest

from mailstack.smtp.data import DataState, read_data
from mailstack.smtp.replies import sanitize, with_enhanced


async def _read(data: bytes, max_size: int = 10_000, max_line: int = 1000):
    reader = asyncio.StreamReader(limit=max_line + 1)
    reader.feed_data(data)
    reader.feed_eof()
    return await read_data(reader, max_size, max_line), reader


@pytest.mark.parametrize("marker", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"])
async def test_only_crlf_dot_crlf_ends_data(marker: bytes) -> None:
    result, reader = await _read(b"a" + marker + b"MAIL FROM:<x@y>\r\n.\r\nQUIT\r\n")
    assert result.state is DataState.OK
    # One message: everything up to the real marker (a line-initial dot is unstuffed).
    assert result.content.startswith(b"a") and result.content.endswith(b"MAIL FROM:<x@y>\r\n")
    assert len(result.content) in (len(marker) + 18, len(marker) + 17)
    assert await reader.read() == b"QUIT\r\n"


async def test_dot_unstuffing_and_first_line_marker() -> None:
    result, _ = await _read(b"..x\r\n.\r\n")
    assert result.content == b".x\r\n"
    result, _ = await _read(b".\r\nNOOP\r\n")
    assert result.content == b""


async def test_too_big_drains_to_marker() -> None:
    result, reader = await _read(b"x" * 50 + b"\r\n" + b"y" * 50 + b"\r\n.\r\nNOOP\r\n",
                                 max_size=60)
    assert result.state is DataState.TOO_BIG and result.content == b""
    assert await reader.read() == b"NOOP\r\n"


async def test_overlong_line_drains_to_marker() -> None:
    result, reader = await _read(b"z" * 5000 + b"\r\n.\r\nNOOP\r\n", max_line=1000)
    assert result.state is DataState.LINE_TOO_LONG
    assert await reader.read() == b"NOOP\r\n"


async def test_eof_mid_data_raises() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await _read(b"Subject: x\r\n\r\nunfinished")


@pytest.mark.parametrize(("given", "expected"), [
    ("250 OK", "250 2.0.0 OK"),
    ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
    ("530 Must issue a STARTTLS command first", "530 5.7.0 Must issue a STARTTLS command first"),
    ("553 5.7.1 Sender not allowed", "553 5.7.1 Sender not allowed"),
    ("354 End data", "354 End data"),
    ("334 VXNlcm5hbWU6", "334 VXNlcm5hbWU6"),
    ("250-PIPELINING", "250-2.0.0 PIPELINING"),
])
def test_with_enhanced(given: str, expected: str) -> None:
    assert with_enhanced(given) == expected


def test_sanitize_removes_line_breaks() -> None:
    assert sanitize('500 command "A\r\n250 OK" not recognized') == \
        '500 command "A??250 OK" not recognized'

"""smtp/spool.py without a server: the piece-by-piece checks say what
``check_message`` says about the whole message, wherever the pieces are cut; the
sink spools past its threshold or when the budget is spent, keeps the whole head,
and removes its file on every way out."""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path

import pytest

from mailstack.memory import MessageBudget
from mailstack.policy.headers import MessageLimits, check_message
from mailstack.smtp.spool import DataState, MessageSink, SpoolFile, _StreamChecks


def _names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def _stream_verdict(data: bytes, rnd: random.Random, max_line: int = 1000) -> str | None:
    checks = _StreamChecks(max_line)
    pos = 0
    while pos < len(data):
        n = rnd.choice((1, 2, 3, 7, 100, 999, 1000, 1001, 4096))
        checks.feed(data[pos:pos + n])
        pos += n
    checks.finish()
    defect = checks.defect()
    return None if defect is None else defect.reply


def _whole_verdict(data: bytes, max_line: int = 1000) -> str | None:
    # only the content checks (the header checks run on the head in both paths)
    v = check_message(b"\r\n" + data, MessageLimits(max_line=max_line))
    if v.ok:
        return None
    # check_message numbers lines from its own start: the added empty line is one
    text = v.text
    if text.startswith("Line "):
        n, rest = text[5:].split(" ", 1)
        text = f"Line {int(n) - 1} {rest}"
    return f"{v.code} {v.enhanced} {text}"


@pytest.mark.parametrize("seed", range(300))
def test_stream_checks_agree_with_check_message(seed: int) -> None:
    rnd = random.Random(seed)
    lines = []
    for _ in range(rnd.randint(1, 40)):
        n = rnd.choice((0, 1, 10, 997, 998, 999, 1200))
        lines.append(bytes(rnd.choice(b"abc.-") for _ in range(n)))
    data = b"\r\n".join(lines) + b"\r\n"
    flaw = rnd.random()
    if flaw < 0.15:
        i = rnd.randrange(len(data))
        data = data[:i] + rnd.choice((b"\r", b"\n", b"\x00")) + data[i:]
    elif flaw < 0.2:
        data = data[:-1]  # ends in a lone CR
    assert _stream_verdict(data, rnd) == _whole_verdict(data), data[:200]


async def test_sink_spools_past_threshold_and_keeps_the_whole_head(tmp_path: Path) -> None:
    budget = MessageBudget(10 * 1024 * 1024)
    head = b"Subject: x\r\n" + b"X-Pad: " + b"p" * 900 + b"\r\n"
    sink = MessageSink(budget, max_size=10 << 20, max_line=1000, threshold=1000,
                       spool_dir=tmp_path, head_limit=5000)
    data = head * 5 + b"\r\n" + b"body line\r\n" * 30000
    for i in range(0, len(data), 100):
        piece = data[i:i + 100]
        if not sink.push(piece):
            await sink.feed(piece)
    message = await sink.finish()
    assert message.spooled and message.spool is not None
    assert budget.used == 0  # spooled octets are not held against the budget
    assert message.head == data[:5000]
    assert message.spool.path.read_bytes() == data
    assert message.spool.blob_id == hashlib.sha256(data).hexdigest()
    assert message.defect is None
    message.discard()
    assert _names(tmp_path) == []


async def test_sink_spools_when_the_budget_is_spent(tmp_path: Path) -> None:
    budget = MessageBudget(1024 * 1024)
    budget.try_reserve(1024 * 1024 - 100)  # other connections hold nearly all of it
    sink = MessageSink(budget, max_size=10 << 20, max_line=1000, threshold=1 << 20,
                       spool_dir=tmp_path, head_limit=2000)
    data = b"Subject: y\r\n\r\n" + b"z" * 500 + b"\r\n"
    if not sink.push(data):
        await sink.feed(data)
    message = await sink.finish()
    assert message.spooled and message.head == data
    assert budget.used == 1024 * 1024 - 100
    message.discard()
    # with spooling off the same message is refused (452 4.3.1)
    off = MessageSink(budget, max_size=10 << 20, max_line=1000)
    if not off.push(data):
        await off.feed(data)
    assert off.state is DataState.NO_MEMORY
    assert (await off.finish()).data is None


async def test_sink_too_big_and_abort_remove_the_file(tmp_path: Path) -> None:
    sink = MessageSink(None, max_size=300_000, max_line=1000, threshold=1000,
                       spool_dir=tmp_path)
    await sink.feed(b"a" * 900 + b"\r\n")
    await sink.feed(b"b" * 900 + b"\r\n")
    assert sink.spool is not None
    await sink.feed(b"c" * 900 * 400)
    assert sink.state is DataState.TOO_BIG
    assert _names(tmp_path) == []
    sink2 = MessageSink(None, max_size=10 << 20, max_line=1000, threshold=10,
                        spool_dir=tmp_path)
    await sink2.feed(b"x" * 100 + b"\r\n")
    assert _names(tmp_path)
    sink2.abort()
    assert _names(tmp_path) == []


async def test_discard_during_a_write_in_flight(tmp_path: Path) -> None:
    spool = SpoolFile(tmp_path / "s.1.1")
    await spool.write(b"first")
    writing = asyncio.ensure_future(spool.write(b"x" * (64 << 20)))
    await asyncio.sleep(0)
    spool.discard()  # never waits for the thread; the file goes when the write ends
    with pytest.raises(OSError):
        await writing
        await spool.write(b"more")
    for _ in range(200):
        if not _names(tmp_path):
            break
        await asyncio.sleep(0.05)
    assert _names(tmp_path) == []

"""Disk full (a small tmpfs holds the data directory and the SQLite database):
SMTP refuses new mail early at MAIL with 452 4.3.1 below ``smtp.min_free_bytes``, a
write that fails for lack of space is 452 4.3.1 (RFC 3463 §3.4) with nothing stored,
and logging in and reading mail (IMAP, POP3) keep working (docs/behaviour.md §12)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.app import App
from tests.conftest import add_mailbox, make_settings
from tests.faults.conftest import ADDR, MESSAGE, PW, Lines

MB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the disk-full tests need root (mount tmpfs) in CI")
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)],
                   check=True, timeout=30)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, timeout=30)


def fill(disk: Path, leave: int) -> Path:
    """Write a filler file until only about ``leave`` bytes are free."""
    filler = disk / f"filler-{len(list(disk.glob('filler-*')))}"
    st = os.statvfs(disk)
    want = max(0, st.f_bavail * st.f_frsize - leave)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while want > 0:
            want -= os.write(fd, b"\0" * min(want, MB))
        while leave == 0:  # the last pages too
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def unfill(disk: Path) -> None:
    for f in disk.glob("filler-*"):
        with contextlib.suppress(OSError):
            f.unlink()


async def test_disk_full(small_disk: Path, tmp_path: Path,
                         tls_files: tuple[Path, Path]) -> None:
    db = f"sqlite+aiosqlite:///{small_disk / 'mailstack.db'}"
    settings = make_settings(tmp_path, db, tls_files,
                             server={"data_dir": str(small_disk / "data")},
                             smtp={"min_free_bytes": 4 * MB})
    app = App(settings)
    await app.start()
    try:
        assert app.store is not None
        addr = await add_mailbox(app, ADDR, PW)
        inbox = await app.store.get_folder(addr.id, "INBOX")
        assert inbox is not None
        await app.store.append(inbox.id, MESSAGE)

        # 1. below the minimum: refused at MAIL, before any data
        filler = await asyncio.to_thread(fill, small_disk, 2 * MB)
        smtp = await Lines.connect(app.ports["smtp"])
        assert (await smtp.line()).startswith(b"220 ")
        assert (await smtp.smtp("EHLO client.example.org")).startswith(b"250 ")
        reply = await smtp.smtp("MAIL FROM:<bob@example.org>")
        assert reply.startswith(b"452 4.3.1"), reply

        # 2. enough at MAIL, but the message does not fit: 452 4.3.1, nothing stored
        filler.unlink()
        await asyncio.to_thread(fill, small_disk, 5 * MB)
        assert (await smtp.smtp("MAIL FROM:<bob@example.org>")).startswith(b"250 ")
        assert (await smtp.smtp(f"RCPT TO:<{ADDR}>")).startswith(b"250 ")
        assert (await smtp.smtp("DATA")).startswith(b"354 ")
        line = b"x" * 998 + b"\r\n"
        smtp.writer.write(b"Subject: big\r\n\r\n" + line * (8 * MB // len(line)))
        reply = await smtp.smtp(".")
        assert reply.startswith(b"452 4.3.1"), reply
        assert (await smtp.smtp("NOOP")).startswith(b"250 ")
        await smtp.close()
        assert len(await app.store.list_messages(inbox.id)) == 1
        assert list((small_disk / "data" / "blobs" / "tmp").iterdir()) == []

        # 3. completely full: logging in and reading still work
        await asyncio.to_thread(fill, small_disk, 0)
        imap = await Lines.connect(app.ports["imap"])
        assert (await imap.line()).startswith(b"* OK")
        out = await imap.imap("L", f'LOGIN {ADDR} "{PW}"')
        assert out[-1].startswith(b"L OK"), out
        assert (await imap.imap("s", "SELECT INBOX"))[-1].startswith(b"s OK")
        out = await imap.imap("f", "FETCH 1 (BODY.PEEK[] ENVELOPE)")
        assert out[-1].startswith(b"f OK") and b"hello" in b"".join(out), out
        await imap.close()
        pop = await Lines.connect(app.ports["pop3"])
        assert (await pop.line()).startswith(b"+OK")
        assert (await pop.ask(f"USER {ADDR}")).startswith(b"+OK")
        reply = await pop.ask(f"PASS {PW}")
        assert reply.startswith(b"+OK"), reply
        assert (await pop.ask("RETR 1")).startswith(b"+OK")
        body = b""
        while not body.endswith(b"\r\n.\r\n"):
            body += await pop.line()
        assert b"hello" in body
        assert (await pop.ask("QUIT")).startswith(b"+OK")
        await pop.close()
        # another client is served meanwhile
        smtp = await Lines.connect(app.ports["smtp"])
        assert (await smtp.line()).startswith(b"220 ")
        await smtp.close()
    finally:
        await asyncio.to_thread(unfill, small_disk)
        await app.stop(grace=0)

"""A real POP3 client from Debian: fetchmail, keeping mail on the server (docs/behaviour.md §8).

fetchmail remembers the UIDL of what it fetched in its id file; a second run must fetch
nothing, and a run after one more message arrives must fetch exactly that one.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

import pytest

from .conftest import PASSWORD, USER, Box

pytestmark = pytest.mark.skipif(shutil.which("fetchmail") is None,
                                reason="fetchmail is not installed")


async def fetchmail(box: Box, tmp: Path, cert: Path) -> tuple[int, str]:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    mda = tmp / "mda.sh"
    mda.write_text(f'#!/bin/sh\ncat > "$(mktemp {out}/mail.XXXXXX)"\n')
    mda.chmod(0o755)
    rc = tmp / "fetchmailrc"
    rc.write_text(f'poll mail.example.net via 127.0.0.1 with proto POP3 port {box.port()}\n'
                  f'  user "{USER}" there with password "{PASSWORD}"\n')
    rc.chmod(stat.S_IRUSR | stat.S_IWUSR)  # fetchmail refuses a readable rc file
    env = {**os.environ, "HOME": str(tmp), "FETCHMAILHOME": str(tmp)}
    proc = await asyncio.create_subprocess_exec(
        "fetchmail", "--fetchmailrc", str(rc), "--idfile", str(tmp / "fetchids"),
        "-N", "--nosyslog", "--keep", "--uidl", "--ssl", "--sslcertck",
        "--sslcertfile", str(cert), "--sslcommonname", "mail.example.net", "--mda", str(mda), "-v",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, stdout.decode("utf-8", "replace")


def mails(tmp: Path) -> list[bytes]:
    return sorted(p.read_bytes() for p in (tmp / "out").glob("mail.*"))


async def test_fetchmail_keep_never_fetches_twice(box: Box, tmp_path: Path,
                                                  tls_files: tuple[Path, Path]) -> None:
    cert = tls_files[0]
    for i in range(3):
        await box.append(b"From: a@example.org\r\nSubject: m%d\r\n\r\n.dot line %d\r\n" % (i, i))
    code, log = await fetchmail(box, tmp_path, cert)
    assert code == 0, log  # 0: mail was fetched
    first = mails(tmp_path)
    assert len(first) == 3, log
    assert all(b"\n.dot line" in m for m in first)  # un-stuffed by the client

    code, log = await fetchmail(box, tmp_path, cert)
    assert code == 1, log  # 1: no new mail (fetchmail(1) EXIT CODES)
    assert mails(tmp_path) == first

    await box.append(b"From: a@example.org\r\nSubject: later\r\n\r\nnew\r\n")
    code, log = await fetchmail(box, tmp_path, cert)
    assert code == 0, log
    now = mails(tmp_path)
    assert len(now) == 4
    new = [m for m in now if m not in first]
    assert len(new) == 1 and b"Subject: later" in new[0]
    assert len(await box.uids()) == 4  # kept on the server

"""Fixtures for import tests: a private Dovecot holding the "old provider" mailbox, a
way to fill it over IMAP, and readers that list what each side holds, over IMAP."""

from __future__ import annotations

import asyncio
import hashlib
import imaplib
import itertools
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.app import App
from mailstack.imap import mutf7
from mailstack.importer import plan
from mailstack.store import ImportJob, NewImportJob
from tests.conftest import add_mailbox
from tests.importer.dovecot import Dovecot

TARGET = "mover@example.com"
TARGET_PW = "target-password"
SOURCE_PW = "source-pw-1"
_users = itertools.count(1)

FAST = {"poll_seconds": 0.2, "lease_seconds": 10.0, "retry_base_seconds": 0.05,
        "batch_messages": 20, "timeout_seconds": 20.0}


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    # Not under pytest's tmp dir: that is 0700, and Dovecot's own users must read here.
    root = Path(tempfile.mkdtemp(prefix="mailstack-test-dovecot-"))
    d = Dovecot(root, {})
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def source_user(dovecot: Dovecot) -> str:
    """A new, empty account at the old provider (passwd-file is read at each login)."""
    user = f"old{next(_users)}@oldmail.example"
    dovecot.users[user] = SOURCE_PW
    dovecot.write_passwd()
    return user


def msg(n: int, *, subject: str | None = None, message_id: str | None = None,
        body: str = "", size: int = 0) -> bytes:
    text = body or f"Message number {n}.\r\nSecond line.\r\n"
    if size:
        line = ("x" * 998 + "\r\n")
        text += line * (size // len(line))
    return (f"From: Old Friend <friend{n % 5}@elsewhere.example>\r\n"
            f"To: {TARGET}\r\nSubject: {subject or f'note {n}'}\r\n"
            f"Date: Mon, 6 Jan 2020 10:{n % 60:02d}:00 +0000\r\n"
            f"Message-ID: {message_id or f'<n{n}@elsewhere.example>'}\r\n\r\n{text}"
            ).encode()


def append(c: imaplib.IMAP4, folder: str, data: bytes, flags: str = "",
           when: float | None = None) -> None:
    date = imaplib.Time2Internaldate(when if when is not None else time.time())
    typ, resp = c.append(plan.quote(mutf7.encode(folder)), f"({flags})" if flags else None,
                         date, data)
    assert typ == "OK", resp


def create(c: imaplib.IMAP4, folder: str) -> None:
    typ, resp = c.create(plan.quote(mutf7.encode(folder)))
    assert typ == "OK", resp


def fill_source(dovecot: Dovecot, user: str, *, count: int = 60, big: int = 0) -> None:
    """The old mailbox: INBOX, special-use Sent/Drafts, "Sent Items" (maps to Sent too),
    nested folders, a UTF-8 name, every system flag and keywords, old internal dates,
    a duplicate Message-ID, the same message in two folders that map to one target,
    and (``big`` octets) one large message."""
    c = dovecot.client(user)
    try:
        for folder in ("Sent Items", "Projects", "Projects/2024", "Projects/2024/Q1",
                       "Grüße & Co"):
            create(c, folder)
        flags = ["", "\\Seen", "\\Seen \\Answered", "\\Flagged", "\\Seen $Work",
                 "Urgent \\Seen"]
        folders = ["INBOX", "INBOX", "Projects/2024/Q1", "Grüße & Co", "Projects", "Sent"]
        old = 1_262_304_000.0  # 2010-01-01
        for n in range(count):
            append(c, folders[n % len(folders)], msg(n), flags[n % len(flags)],
                   old + n * 86400)
        append(c, "Drafts", msg(9001, subject="draft"), "\\Draft", old)
        same = msg(9002, subject="sent twice")
        append(c, "Sent", same, "\\Seen", old)
        append(c, "Sent Items", same, "\\Seen", old)  # one copy expected in our Sent
        append(c, "INBOX", msg(9003, message_id="<dup@elsewhere.example>"), "", old)
        append(c, "INBOX", msg(9004, message_id="<dup@elsewhere.example>",
                               body="different body\r\n"), "", old)  # both kept
        if big:
            append(c, "INBOX", msg(9005, subject="big", size=big), "\\Seen", old)
    finally:
        c.logout()


Key = tuple[frozenset[str], int, str]  # flags (no \Recent), internal date, sha256


def _read_folder(c: imaplib.IMAP4, raw: str) -> Counter[Key]:
    typ, _ = c.select(plan.quote(raw), readonly=True)
    assert typ == "OK", raw
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    assert typ == "OK"
    out: Counter[Key] = Counter()
    for f in plan.parse_fetch(data):  # type: ignore[arg-type]
        if f.body is None:
            continue
        flags = frozenset(x for x in f.flags if x.lower() != "\\recent")
        out[(flags, int(f.internal_date or 0), hashlib.sha256(f.body).hexdigest())] += 1
    return out


def read_mailbox(c: imaplib.IMAP4) -> dict[str, Counter[Key]]:
    """Every selectable folder (decoded name) -> its messages, read over IMAP."""
    typ, data = c.list('""', "*")
    assert typ == "OK"
    out = {}
    for f in plan.parse_list(data):  # type: ignore[arg-type]
        if f.selectable:
            out[f.name] = _read_folder(c, f.raw)
    return out


def target_client(app: App) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", app.ports["imap"], timeout=30)
    c.login(TARGET, TARGET_PW)
    return c


@pytest.fixture
async def import_app(app_factory: Callable[..., Any]) -> AsyncIterator[App]:
    app: App = await app_factory(importer=FAST, plans={"small": {
        "max_message_size": 200_000}})
    await add_mailbox(app, TARGET, TARGET_PW)
    yield app


async def start_job(app: App, host: str, port: int, user: str, password: str,
                    *, tls: str = "none", folders: tuple[str, ...] = ()) -> int:
    from mailstack.importer import secret

    assert app.store is not None
    addr = await app.store.get_address(TARGET)
    assert addr is not None
    (job_id,) = await app.store.create_import_jobs([NewImportJob(
        addr.id, host, port, tls, user, secret.seal(app.settings.data_dir, password),
        folders)])
    assert app.importer is not None
    app.importer.wake()
    return job_id


async def wait_job(app: App, job_id: int, timeout: float = 60.0) -> ImportJob:
    assert app.store is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await app.store.get_import_job(job_id)
        assert job is not None
        if job.state not in ("queued", "running"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"import {job_id} still {job.state} after {timeout}s")


def confirmations(app_client: imaplib.IMAP4) -> list[bytes]:
    """Bodies of the confirmation messages in the target's INBOX."""
    app_client.select("INBOX", readonly=True)
    typ, data = app_client.search(None, "FROM", "postmaster")
    assert typ == "OK"
    out = []
    for num in data[0].split():
        typ, got = app_client.fetch(num, "(BODY.PEEK[])")
        assert typ == "OK"
        out.append(got[0][1])  # type: ignore[index]
    return out


async def wait_confirmations(app: App, count: int, timeout: float = 30.0) -> list[bytes]:
    """The target's confirmation messages, once ``count`` of them arrived (the runner
    delivers one just after it marks its job ended)."""
    deadline = time.monotonic() + timeout
    while True:
        texts = await asyncio.to_thread(lambda: confirmations(target_client(app)))
        if len(texts) >= count or time.monotonic() > deadline:
            return texts
        await asyncio.sleep(0.1)


def copied_count(text: bytes) -> int:
    m = re.search(rb"Messages copied: (\d+)", text)
    assert m, text[:500]
    return int(m.group(1))


def data_dir(app: App) -> Path:
    return Path(app.settings.data_dir)

"""``mailstack import`` through the real command line, and a real ``mailstack serve``
killed mid-import (SIGKILL) that resumes after a restart with nothing twice and nothing
missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mailstack.store import ImportJob, Store
from tests.cli.conftest import REPO, Cli, make_cli
from tests.importer.conftest import (
    SOURCE_PW,
    TARGET,
    Key,
    fill_source,
    read_mailbox,
)
from tests.importer.dovecot import Dovecot
from tests.importer.test_import import MAPPED


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return make_cli(tmp_path)


SETUP = [("domain", "add", "example.com"), ("address", "add", TARGET)]


def _setup(cli: Cli) -> None:
    for args in SETUP:
        cli.ok(*args)


def _jobs(cli: Cli) -> list[ImportJob]:
    async def go(store: Store) -> list[ImportJob]:
        return await store.list_import_jobs()
    return cli.query(go)


def test_start_list_show_cancel(cli: Cli) -> None:
    _setup(cli)
    r = cli.ok("import", "start", TARGET, "--host", "127.0.0.1", "--port", "1143",
               "--tls", "none", "--user", "old@x.example", "--password-stdin",
               input="s3cret-source-pw\n")
    assert "import 1 queued" in r.out
    (job,) = _jobs(cli)
    assert (job.state, job.host, job.port, job.tls, job.username) == (
        "queued", "127.0.0.1", 1143, "none", "old@x.example")
    # the password is stored encrypted, never in clear
    assert job.secret and "s3cret-source-pw" not in job.secret
    assert b"s3cret-source-pw" not in (cli.data_dir / "mailstack.db").read_bytes()
    assert "s3cret-source-pw" not in r.out + r.err
    listing = cli.ok("import", "list").out
    assert "queued" in listing and "old@x.example@127.0.0.1" in listing
    shown = cli.ok("import", "show", "1").out
    assert "import 1: queued" in shown and TARGET in shown
    assert "cancelled" in cli.ok("import", "cancel", "1").out
    (job,) = _jobs(cli)
    assert job.state == "cancelled" and job.secret is None
    again = cli("import", "cancel", "1")
    assert again.code == 1 and "already ended" in again.err
    missing = cli("import", "show", "7")
    assert missing.code == 1 and "no import job 7" in missing.err


@pytest.mark.parametrize("args,message", [
    (["--host", "mail.elsewhere.example", "--tls", "none"], "only allowed for a source on"),
    (["--host", "bad host!"], "is not a host name"),
    (["--host", "127.0.0.1", "--port", "70000"], "out of range"),
    (["--host", "127.0.0.1", "--port", "x"], "is not a number"),
])
def test_start_refusals_store_nothing(cli: Cli, args: list[str], message: str) -> None:
    _setup(cli)
    r = cli("import", "start", TARGET, "--user", "u", "--password-stdin", *args,
            input="pw\n")
    assert r.code == 1 and message in r.err
    assert _jobs(cli) == []


def test_start_needs_a_hosted_mailbox_and_a_password(cli: Cli) -> None:
    _setup(cli)
    r = cli("import", "start", "nobody@example.com", "--host", "127.0.0.1", "--user", "u",
            "--password-stdin", input="pw\n")
    assert r.code == 1 and "no address nobody@example.com" in r.err
    r = cli("import", "start", TARGET, "--host", "127.0.0.1", "--user", "u")
    assert r.code == 1 and "--password-stdin" in r.err
    assert _jobs(cli) == []


def test_csv_with_a_bad_row_starts_nothing(cli: Cli, tmp_path: Path) -> None:
    _setup(cli)
    cli.ok("address", "add", "second@example.com")
    bad = tmp_path / "jobs.csv"
    bad.write_text("target,host,user,password,port,tls\n"
                   f"{TARGET},imap.old.example,anna,pw1\n"
                   "second@example.com,imap.old.example,bob,pw2,143,none\n"
                   "ghost@example.com,imap.old.example,carl,pw3\n"
                   f"{TARGET},imap.old.example,dora,,993,implicit\n")
    r = cli("import", "csv", str(bad))
    assert r.code == 1
    assert "line 3:" in r.err and "only allowed for a source on" in r.err
    assert "line 4:" in r.err and "no address ghost@example.com" in r.err
    assert "line 5:" in r.err and "password is empty" in r.err
    assert "line 2:" not in r.err
    assert _jobs(cli) == []
    good = tmp_path / "good.csv"
    good.write_text(f"{TARGET},imap.old.example,anna,pw1\n"
                    "second@example.com,127.0.0.1,bob,pw2,1143,none\n")
    assert "2 import(s) queued" in cli.ok("import", "csv", str(good)).out
    jobs = _jobs(cli)
    assert [(j.address, j.host, j.port, j.tls) for j in jobs] == [
        (TARGET, "imap.old.example", 993, "implicit"),
        ("second@example.com", "127.0.0.1", 1143, "none")]


# --- SIGKILL mid-import ----------------------------------------------------------------


def _serve(cli: Cli) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAILSTACK_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "mailstack", "--config",
                             str(cli.config), "serve"], env=env, cwd=cli.cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(cli: Cli, cond: str, timeout: float = 90.0) -> ImportJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (job,) = _jobs(cli)
        if cond == "some" and job.copied >= 15 and job.state == "running":
            return job
        if cond == "ended" and job.state not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"import did not reach {cond!r}: {_jobs(cli)}")


def _target_contents(cli: Cli) -> dict[str, Counter[Key]]:
    async def go(store: Store) -> dict[str, Counter[Key]]:
        addr = await store.get_address(TARGET)
        assert addr is not None
        out: dict[str, Counter[Key]] = {}
        for folder in await store.list_folders(addr.id):
            msgs = await store.list_messages(folder.id)
            out[folder.name] = Counter(
                (frozenset(m.flags), int(m.internal_date), m.blob_id) for m in msgs
                if not m.prefix)  # the confirmation message carries a Delivered-To
        return out
    return cli.query(go)


def test_sigkill_mid_import_resumes_without_duplicates(tmp_path: Path, dovecot: Dovecot,
                                                       source_user: str) -> None:
    off = "\n".join(f"[listeners.{n}]\nenabled = false" for n in (
        "smtp", "submissions", "submission", "imaps", "imap", "pop3s", "pop3", "https", "http",
        "metrics"))
    cli = make_cli(tmp_path, extra=f"{off}\n[importer]\npoll_seconds = 0.2\n"
                   "batch_messages = 3\nlease_seconds = 600\n")
    _setup(cli)
    fill_source(dovecot, source_user, count=150)
    c = dovecot.client(source_user)
    source = read_mailbox(c)
    c.logout()
    cli.ok("import", "start", TARGET, "--host", "127.0.0.1", "--port", str(dovecot.port),
           "--tls", "none", "--user", source_user, "--password-stdin",
           input=SOURCE_PW + "\n")
    proc = _serve(cli)
    try:
        before = _wait(cli, "some")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert before.copied < 150
    # The lease is long (600 s): only "a restarted server takes its own jobs back"
    # lets this finish within the test's time.
    proc = _serve(cli)
    try:
        job = _wait(cli, "ended")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert job.state == "done", job.last_error
    expected: dict[str, Counter[Key]] = {}
    for folder, msgs in source.items():
        target = MAPPED[folder]
        bucket = expected.setdefault(target, Counter())
        for key in msgs:
            bucket[key] = 1 if target == "Sent" else msgs[key]
    got = _target_contents(cli)
    for folder, msgs in expected.items():
        assert got.get(folder, Counter()) == msgs, folder

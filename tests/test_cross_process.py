"""Changes reach every process on one box (docs/behaviour.md §10): on the default
SQLite set-up, a password changed by the ``mailstack`` CLI (another process) ends the
open IMAP and POP3 sessions of a separately started ``mailstack serve`` within about a
second; the old secret is refused and the new one works. Two stores on one SQLite file
see each other's events through the change log."""

from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mailstack.store import CredentialsChanged, MessagesAdded, Store
from tests.cli.conftest import REPO, make_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_two_stores_on_one_sqlite_file_see_each_others_events(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    a, b = Store(url, tmp_path / "blobs"), Store(url, tmp_path / "blobs")
    await a.open()
    await b.open()
    try:
        await a.add_domain("example.com", "standard")
        addr = await a.add_address("anna", "example.com", password_hash="x")
        with b.events.subscribe(addr.id) as sub:
            epoch = await a.set_password(addr.id, "y")
            inbox = await a.get_folder(addr.id, "INBOX")
            assert inbox is not None
            await a.append(inbox.id, b"Subject: hi\r\n\r\nbody\r\n")
            got = [await asyncio.wait_for(sub.queue.get(), 5) for _ in range(2)]
        assert got[0] == CredentialsChanged(addr.id, epoch)
        assert isinstance(got[1], MessagesAdded) and got[1].folder_id == inbox.id
        with a.events.subscribe(addr.id) as mine:
            await a.set_password(addr.id, "z")  # a's own event: published once, locally
            assert isinstance(mine.queue.get_nowait(), CredentialsChanged)
            assert b._follower is not None and await b._follower.poll() == 1
            await asyncio.sleep(0.6)
            assert mine.queue.empty()  # a's follower skipped its own row
    finally:
        await a.close()
        await b.close()


def _closed(sock: socket.socket, deadline: float) -> bool:
    """True when the server closed the connection before ``deadline``."""
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return True
        if data == b"":
            return True
    return False


def test_cli_password_change_ends_sessions_of_a_running_server(tmp_path: Path) -> None:
    imap_port, pop3_port = _free_port(), _free_port()
    off = "\n".join(f"[listeners.{n}]\nenabled = false" for n in (
        "smtp", "submissions", "submission", "imaps", "pop3s", "https", "http", "metrics"))
    cli = make_cli(tmp_path, extra=(
        f'{off}\n[listeners.imap]\naddress = "127.0.0.1"\nport = {imap_port}\ntls = "none"\n'
        f'[listeners.pop3]\naddress = "127.0.0.1"\nport = {pop3_port}\ntls = "none"\n'))
    cfg = cli.config.read_text().replace(
        "[server]\n", "[server]\nallow_plaintext_auth_on_loopback = true\n", 1)
    cli.config.write_text(cfg)
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com", "--password-stdin", input="first-secret\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAILSTACK_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(cli.config),
                             "serve"], env=env, cwd=cli.cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", pop3_port), 1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.05)
        imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
        imap.login("anna@example.com", "first-secret")
        imap.select("INBOX")
        pop = poplib.POP3("127.0.0.1", pop3_port, timeout=10)
        pop.user("anna@example.com")
        pop.pass_("first-secret")
        cli.ok("address", "passwd", "anna@example.com", "--password-stdin",
               input="second-secret\n")
        changed = time.monotonic()
        assert _closed(imap.sock, changed + 2.0), "IMAP session still open"
        assert _closed(pop.sock, changed + 2.0), "POP3 session still open"
        fresh = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
        try:
            fresh.login("anna@example.com", "first-secret")
            raise AssertionError("the old password still works")
        except imaplib.IMAP4.error:
            pass
        fresh.logout()
        again = imaplib.IMAP4("127.0.0.1", imap_port, timeout=10)
        assert again.login("anna@example.com", "second-secret")[0] == "OK"
        again.logout()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

"""Changes reach every process (docs/behaviour.md §2, §10), on SQLite (the change log)
and PostgreSQL (LISTEN/NOTIFY) alike. A separately started ``mailstack serve`` with
real IMAP, POP3 and SMTP submission sessions open, and the ``mailstack`` CLI (another
process) changing things:

- a new password ends every session of the address (IMAP idle, IMAP in IDLE, POP3,
  authenticated SMTP) within a second; the old secret is refused, the new one works;
- revoking an app password ends only the sessions that logged in with it; "app
  passwords only" ends only those that used the password; removing the address ends
  the rest;
- a grant with ``send`` given or taken changes what an open SMTP session may send as;
- a responder added and activated answers the next delivery.

Two stores on one SQLite file see each other's events through the change log."""

from __future__ import annotations

import asyncio
import imaplib
import os
import poplib
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailstack.policy.passwords import Passwords
from mailstack.store import CredentialsChanged, MessagesAdded, Store
from tests.cli.conftest import REPO, Cli, make_cli

PW = Passwords(1, 64, 1)  # the test config's Argon2 parameters
CUT = 2.0  # seconds a change may take to end a session (the promise is one second)


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


def _until(check: Callable[[], bool], seconds: float = CUT) -> bool:
    """Poll ``check`` until it is true or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@dataclass
class Server:
    cli: Cli
    imap: int
    pop3: int
    submission: int

    def imap_login(self, user: str, secret: str) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.imap, timeout=10)
        c.login(user, secret)
        return c

    def imap_refused(self, user: str, secret: str) -> bool:
        c = imaplib.IMAP4("127.0.0.1", self.imap, timeout=10)
        try:
            c.login(user, secret)
        except imaplib.IMAP4.error:
            return True
        finally:
            c.logout()
        return False

    def pop3_login(self, user: str, secret: str) -> poplib.POP3:
        c = poplib.POP3("127.0.0.1", self.pop3, timeout=10)
        c.user(user)
        c.pass_(secret)
        return c

    def smtp_login(self, user: str, secret: str) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.submission, timeout=10)
        c.ehlo("client.example")
        c.login(user, secret)
        return c


def _port() -> int:
    return _free_port()


@pytest.fixture
def cli_both(tmp_path: Path, db_url: str) -> Cli:
    """The CLI on SQLite (its default file) or PostgreSQL (the test's own schema)."""
    return make_cli(tmp_path, "" if db_url.startswith("sqlite") else db_url)


@pytest.fixture
def server(cli_both: Cli) -> Iterator[Server]:
    """``mailstack serve`` in its own process, plaintext IMAP, POP3 and submission on
    loopback (passwords allowed there), on the backend of ``cli_both``."""
    cli = cli_both
    imap_port, pop3_port, sub_port = _port(), _port(), _port()
    off = "\n".join(f"[listeners.{n}]\nenabled = false" for n in (
        "smtp", "submissions", "imaps", "pop3s", "https", "http", "metrics"))
    cfg = cli.config.read_text().replace(
        "[server]\n", "[server]\nallow_plaintext_auth_on_loopback = true\n", 1)
    cli.config.write_text(cfg + (
        f'{off}\n[listeners.imap]\naddress = "127.0.0.1"\nport = {imap_port}\n'
        'tls = "none"\n'
        f'[listeners.pop3]\naddress = "127.0.0.1"\nport = {pop3_port}\ntls = "none"\n'
        f'[listeners.submission]\naddress = "127.0.0.1"\nport = {sub_port}\n'
        'tls = "none"\n'))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAILSTACK_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(cli.config),
                             "serve"], env=env, cwd=cli.cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        for port in (imap_port, pop3_port, sub_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                    assert time.monotonic() < deadline, "mailstack serve did not start"
                    time.sleep(0.05)
        yield Server(cli, imap_port, pop3_port, sub_port)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _populate(cli: Cli, addresses: dict[str, str],
              app_passwords: dict[str, dict[str, str]] | None = None,
              users: tuple[str, ...] = ()) -> None:
    """Addresses with passwords (and app passwords), users: straight into the store,
    before the server starts (a CLI process per item is slow on a loaded machine)."""
    async def go(store: Store) -> None:
        await store.add_domain("example.com", "standard")
        for email, secret in addresses.items():
            addr = await store.add_address(email.partition("@")[0], "example.com",
                                           password_hash=PW.hash_sync(secret))
            for name, app in (app_passwords or {}).get(email, {}).items():
                await store.add_app_password(addr.id, name, PW.hash_sync(app))
        for login in users:
            await store.add_user(login, PW.hash_sync("user-secret"))
    cli.query(go)


def test_cli_password_change_ends_every_session(cli_both: Cli,
                                                request: pytest.FixtureRequest) -> None:
    """IMAP (idle, and in IDLE), POP3 and authenticated SMTP of one address: the CLI
    changes the password, all four end; the old password is refused, the new works."""
    _populate(cli_both, {"anna@example.com": "first-secret"})
    srv: Server = request.getfixturevalue("server")
    idle = srv.imap_login("anna@example.com", "first-secret")
    idle.select("INBOX")
    idling = srv.imap_login("anna@example.com", "first-secret")
    idling.select("INBOX")
    idling.send(b"i1 IDLE\r\n")
    assert idling.readline().startswith(b"+")  # RFC 2177 §3: the server is idling
    pop = srv.pop3_login("anna@example.com", "first-secret")
    smtp = srv.smtp_login("anna@example.com", "first-secret")
    assert smtp.noop()[0] == 250

    srv.cli.ok("address", "passwd", "anna@example.com", "--password-stdin",
               input="second-secret\n")
    deadline = time.monotonic() + CUT
    assert smtp.sock is not None
    for name, sock in (("IMAP", idle.sock), ("IMAP IDLE", idling.sock),
                       ("POP3", pop.sock), ("SMTP", smtp.sock)):
        assert _closed(sock, deadline), f"{name} session still open"

    assert srv.imap_refused("anna@example.com", "first-secret")
    with pytest.raises(poplib.error_proto):
        srv.pop3_login("anna@example.com", "first-secret")
    with pytest.raises(smtplib.SMTPAuthenticationError):
        srv.smtp_login("anna@example.com", "first-secret")
    srv.imap_login("anna@example.com", "second-secret").logout()
    srv.pop3_login("anna@example.com", "second-secret").quit()
    srv.smtp_login("anna@example.com", "second-secret").quit()


def test_revoke_ends_only_the_sessions_of_that_credential(
        cli_both: Cli, request: pytest.FixtureRequest) -> None:
    """App password revoked: its IMAP, POP3 and SMTP sessions end, the password's and
    another app password's keep working. App-only on: the password's session ends.
    Address removed: the last one ends."""
    _populate(cli_both, {"anna@example.com": "anna-secret"},
              {"anna@example.com": {"phone": "phone-app-secret",
                                    "tablet": "tablet-app-secret"}})
    srv: Server = request.getfixturevalue("server")
    main = srv.imap_login("anna@example.com", "anna-secret")
    main.select("INBOX")
    phone = srv.imap_login("anna@example.com", "phone-app-secret")
    phone.select("INBOX")
    phone_pop = srv.pop3_login("anna@example.com", "phone-app-secret")
    phone_smtp = srv.smtp_login("anna@example.com", "phone-app-secret")
    tablet = srv.imap_login("anna@example.com", "tablet-app-secret")
    tablet.select("INBOX")

    r = srv.cli.ok("app-password", "revoke", "anna@example.com", "phone")
    assert "revoked" in r.out
    deadline = time.monotonic() + CUT
    assert phone_smtp.sock is not None
    for name, sock in (("IMAP", phone.sock), ("POP3", phone_pop.sock),
                       ("SMTP", phone_smtp.sock)):
        assert _closed(sock, deadline), f"{name} session of the revoked app password open"
    assert main.noop()[0] == "OK" and tablet.noop()[0] == "OK"
    assert srv.imap_refused("anna@example.com", "phone-app-secret")
    srv.imap_login("anna@example.com", "tablet-app-secret").logout()

    srv.cli.ok("address", "app-only", "anna@example.com", "on")
    assert _closed(main.sock, time.monotonic() + CUT), "password session still open"
    assert tablet.noop()[0] == "OK"
    assert srv.imap_refused("anna@example.com", "anna-secret")

    srv.cli.ok("address", "remove", "anna@example.com", "--yes")
    assert _closed(tablet.sock, time.monotonic() + CUT), "session of a removed address open"
    assert srv.imap_refused("anna@example.com", "tablet-app-secret")


def test_grants_and_responders_reach_a_running_server(
        cli_both: Cli, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """An open SMTP session of bob (also a user) may send as carol from the moment the
    CLI grants ``send``, and no longer once the grant is revoked; a responder added and
    activated by the CLI answers the next message to carol."""
    _populate(cli_both, {"bob@example.com": "bob-secret", "carol@example.com": "carol-pw"},
              users=("bob@example.com",))
    srv: Server = request.getfixturevalue("server")
    smtp = srv.smtp_login("bob@example.com", "bob-secret")

    def mail_from(sender: str) -> int:
        smtp.rset()
        return int(smtp.mail(sender)[0])

    assert mail_from("carol@example.com") == 553
    srv.cli.ok("user", "grant", "bob@example.com", "carol@example.com", "--perm", "send")
    assert _until(lambda: mail_from("carol@example.com") == 250), "grant not seen"
    srv.cli.ok("user", "revoke", "bob@example.com", "carol@example.com")
    assert _until(lambda: mail_from("carol@example.com") == 553), "revoke not seen"

    def bob_inbox() -> list[bytes]:
        async def go(store: Store) -> list[bytes]:
            bob = await store.get_address("bob@example.com")
            assert bob is not None
            inbox = await store.get_folder(bob.id, "INBOX")
            assert inbox is not None
            return [await store.message_bytes(m) for m in await store.list_messages(
                inbox.id)]
        return srv.cli.query(go)

    def to_carol(n: int) -> None:
        smtp.rset()
        smtp.sendmail("bob@example.com", ["carol@example.com"], (
            f"From: bob@example.com\r\nTo: carol@example.com\r\nSubject: question {n}\r\n"
            f"Message-ID: <q{n}@example.com>\r\n\r\nAre you there?\r\n").encode())

    to_carol(1)  # no responder yet: no reply (and the server has looked)
    body = tmp_path / "away.txt"
    body.write_text("Away until Monday.\n", encoding="utf-8")
    srv.cli.ok("autoresponder", "add", "carol@example.com", "away", "--subject",
               "Away", "--body-file", str(body), "--activate")
    # the change reaches every process within the propagation bound (the change log is
    # followed every 0.25 s): a message that arrives sooner may be delivered unanswered
    time.sleep(CUT)
    to_carol(2)
    assert _until(lambda: len(bob_inbox()) == 1, 10), "no automatic reply"
    [reply] = bob_inbox()
    assert b"Subject: Away" in reply and b"Away until Monday." in reply
    assert b"In-Reply-To: <q2@example.com>" in reply
    smtp.quit()

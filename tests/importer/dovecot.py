"""A private Dovecot (Debian's dovecot-imapd) as the "other provider" of import tests:
started on free loopback ports under a temp dir, users in a passwd-file, Maildir
storage, stopped after. Tests fill it over IMAP (imaplib APPEND/CREATE), exactly as a
user's old provider would hold the mail.

Outside CI a missing dovecot binary skips (saying why); in CI (``CI=true``) it fails:
``scripts/test`` installs dovecot-imapd."""

from __future__ import annotations

import contextlib
import imaplib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

NOBODY = 65534  # the maildirs belong to nobody:nogroup, as Dovecot's userdb says


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or ("/usr/sbin/dovecot" if Path(
        "/usr/sbin/dovecot").exists() else None)


def need_dovecot() -> str:
    binary = dovecot_binary()
    reason = None
    if binary is None:
        reason = "dovecot not installed (apt-get install dovecot-imapd)"
    elif os.geteuid() != 0:
        reason = "a private dovecot instance needs root"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run the import tests)")
        pytest.skip(reason)
    assert binary is not None
    return binary


class Dovecot:
    def __init__(self, root: Path, users: dict[str, str]) -> None:
        self.binary = need_dovecot()
        self.dir = root
        self.port = _free_port()
        self.users = dict(users)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Dovecot:
        d = self.dir
        for sub in ("run", "state", "mail"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        self.write_passwd()
        os.chown(d / "mail", NOBODY, NOBODY)
        (d / "dovecot.conf").write_text(f"""\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 100
mail_location = maildir:{d}/mail/%n/Maildir:LAYOUT=fs
mail_fsync = optimized
default_login_user = dovenull
default_internal_user = dovecot
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    auto = create
    special_use = \\Sent
  }}
  mailbox Drafts {{
    auto = create
    special_use = \\Drafts
  }}
  mailbox Trash {{
    auto = create
    special_use = \\Trash
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={NOBODY} gid={NOBODY} home={d}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
        self.proc = subprocess.Popen([self.binary, "-F", "-c", str(d / "dovecot.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"dovecot exited: {err}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.1)
        raise RuntimeError("dovecot did not open its port")

    def write_passwd(self) -> None:
        """The passwd-file, replaced atomically: Dovecot re-reads it when it changes and
        must never see half a line."""
        tmp = self.dir / "passwd.tmp"
        tmp.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.dir / "passwd")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def client(self, user: str) -> imaplib.IMAP4:
        """A logged-in session. Dovecot notices a new passwd-file by its modification
        time, which may not have ticked yet for a user added a moment ago: try again."""
        for attempt in range(20):
            c = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
            try:
                c.login(user, self.users[user])
                return c
            except imaplib.IMAP4.error:
                c.logout()
                if attempt == 19:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "dovecot.log").read_text()
        return ""

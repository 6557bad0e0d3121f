"""A private Debian Postfix as a remote MX for tests: its own config, queue and maildirs
under a temp dir, smtpd on a loopback port, virtual(8) delivery to maildirs; started and
stopped by the test (the same recipe as bench/peers.py, reduced to what a test needs).

Postfix needs root to start (its master drops privileges itself). Outside CI a missing
Postfix or a non-root user skips the test, saying why; in CI (``CI=true``) it fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

NOBODY = 65534  # owns the maildirs (virtual_uid_maps)


def postfix_missing() -> str | None:
    if shutil.which("postfix") is None and not Path("/usr/sbin/postfix").exists():
        return "postfix is not installed (scripts/test installs it)"
    if os.geteuid() != 0:
        return "a private Postfix needs root to start"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the postfix user does not exist"
    return None


def require_postfix() -> None:
    reason = postfix_missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run the Postfix tests)")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostfixPeer:
    def __init__(self, root: Path, domain: str, users: list[str]) -> None:
        self.dir = root
        self.domain = domain
        self.users = users
        self.port = _free_port()
        self.conf = root / "etc"
        self.started = False

    def maildir(self, user: str) -> Path:
        return self.dir / "vmail" / self.domain / user

    def messages(self, user: str) -> list[bytes]:
        out = []
        for sub in ("new", "cur"):
            d = self.maildir(user) / sub
            if d.is_dir():
                out += [p.read_bytes() for p in sorted(d.iterdir())]
        return out

    def start(self) -> PostfixPeer:
        d, etc = self.dir, self.conf
        os.chmod(d, 0o755)
        for sub in ("etc", "vmail", "queue", "data"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        pw = pwd.getpwnam("postfix")
        os.chown(d / "data", pw.pw_uid, pw.pw_gid)
        os.chown(d / "vmail", NOBODY, NOBODY)
        (etc / "vmailbox").write_text("".join(f"{u}@{self.domain} {self.domain}/{u}/\n"
                                              for u in self.users))
        (etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
config_directory = {etc}
queue_directory = {d}/queue
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{self.domain}
mydomain = {self.domain}
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {self.domain}
virtual_mailbox_maps = texthash:{etc}/vmailbox
virtual_mailbox_base = {d}/vmail
virtual_uid_maps = static:{NOBODY}
virtual_gid_maps = static:{NOBODY}
virtual_minimum_uid = 100
smtpd_banner = $myhostname ESMTP
smtputf8_enable = no
biff = no
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
""")
        (etc / "master.cf").write_text(f"""\
127.0.0.1:{self.port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
""")
        env = dict(os.environ, MAIL_CONFIG=str(etc))
        r = subprocess.run(["postfix", "-c", str(etc), "start"], env=env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stderr or r.stdout} {self.log()}")
        self.started = True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"postfix did not listen on {self.port}: {self.log()}")

    def log(self) -> str:
        log = self.dir / "maillog"
        return log.read_text(errors="replace")[-3000:] if log.exists() else ""

    def stop(self) -> None:
        if self.started:
            subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True,
                           timeout=60, env=dict(os.environ, MAIL_CONFIG=str(self.conf)))
            self.started = False

"""The peers: Postfix (SMTP MX) and Dovecot (IMAP/POP3), installed from Debian when
missing, each started with a PRIVATE configuration under a temp dir, on loopback high
ports, and stopped again (also on error and Ctrl-C: callers use them as context managers).

Durability (see bench/README.md):
- Postfix answers 250 only after cleanup(8) has fsynced the queue file (by design); the
  message is then delivered by virtual(8) into a maildir (one file per message, written
  and fsynced by Postfix's mail_copy before the rename into new/).
- Dovecot: ``mail_fsync = always``.
Passwords: Dovecot passdb is a passwd-file with ``{ARGON2ID}`` hashes (libsodium); the
SAME hash string is stored in mailstack. No auth cache (mailstack has none either).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from .common import DOMAIN, HOST, DataSet, free_port, is_seen, message_parts, wait_port

MAIL_UID = MAIL_GID = 65534  # nobody / nogroup own the peers' maildirs


def postfix_missing() -> str | None:
    """None when Postfix can run here, else why not."""
    if shutil.which("postfix") is None and not Path("/usr/sbin/postfix").exists():
        return "postfix not installed (bench/peers.py --install, or apt-get install postfix)"
    if os.geteuid() != 0:
        return "postfix needs root to start a private instance"
    return None


def dovecot_missing() -> str | None:
    if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
        return ("dovecot not installed (bench/peers.py --install, or apt-get install "
                "dovecot-imapd dovecot-pop3d)")
    if os.geteuid() != 0:
        return "dovecot needs root to start a private instance"
    return None


def install_peers() -> None:
    """apt-get install the peers when missing (postfix: debconf "No configuration")."""
    want = []
    if postfix_missing():
        want.append("postfix")
    if dovecot_missing():
        want += ["dovecot-imapd", "dovecot-pop3d"]
    if not want:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["debconf-set-selections"], input=b"postfix postfix/main_mailer_type "
                   b"select No configuration\n", check=True)
    subprocess.run(["apt-get", "install", "-y", *want], env=env, check=True)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid)


def write_maildir(root: Path, user: str, count: int, body_size: int, seen_ratio: float
                  ) -> None:
    """INBOX of ``user`` as a Maildir (cur/ with ``:2,S`` for seen), same bytes as the
    mailstack side gets."""
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    base = int(time.time()) - count
    for i in range(count):
        head, body = message_parts(user, i, body_size)
        data = head + body
        flags = "S" if is_seen(i, seen_ratio) else ""
        name = f"{base + i}.M{i}P1.bench,S={len(data)}:2,{flags}"
        fd = os.open(root / "cur" / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.utime(root / "cur" / name, (base + i, base + i))


class _Peer:
    """A peer server we start and must stop: ``with Peer(...) as p`` starts it, and stops
    it (removing its temp dir) also when start-up fails half way."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Postfix(_Peer):
    """A private Postfix instance: ``with Postfix(dataset) as p: p.port``."""

    name = "postfix"

    def __init__(self, dataset: DataSet, workdir: Path | None = None) -> None:
        self.dataset = dataset
        self._own_tmp = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="bench-postfix-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.ports = {"smtp": self.port}
        self.started = False

    @property
    def conf(self) -> Path:
        return self.dir / "etc"

    def _configure(self) -> None:
        etc, d = self.conf, self.dir
        etc.mkdir(parents=True, exist_ok=True)
        (d / "vmail").mkdir(exist_ok=True)
        (d / "queue").mkdir(exist_ok=True)
        (d / "data").mkdir(exist_ok=True)
        import pwd
        pw = pwd.getpwnam("postfix")
        os.chown(d / "data", pw.pw_uid, pw.pw_gid)
        os.chown(d / "vmail", MAIL_UID, MAIL_GID)
        (etc / "vmailbox").write_text("".join(f"{u}@{DOMAIN} {DOMAIN}/{u}/\n"
                                              for u in self.dataset.users))
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
myhostname = peer.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = {HOST}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = texthash:{etc}/vmailbox
virtual_mailbox_base = {d}/vmail
virtual_uid_maps = static:{MAIL_UID}
virtual_gid_maps = static:{MAIL_GID}
virtual_minimum_uid = 100
virtual_mailbox_limit = 0
message_size_limit = 52428800
smtpd_banner = $myhostname ESMTP
smtputf8_enable = no
biff = no
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
""")
        (etc / "master.cf").write_text(f"""\
{HOST}:{self.port} inet n - n - - smtpd
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

    def start(self) -> Postfix:
        self._configure()
        env = dict(os.environ, MAIL_CONFIG=str(self.conf))
        r = subprocess.run(["postfix", "-c", str(self.conf), "start"], env=env,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            log = self.dir / "maillog"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"postfix start failed: {r.stderr or r.stdout} {tail}")
        self.started = True
        wait_port(self.port, 30)
        return self

    def queue_size(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred"):
            for _dirpath, _d, files in os.walk(self.dir / "queue" / sub):
                n += len(files)
        return n

    def wait_drained(self, timeout: float = 60.0) -> float:
        """Seconds until the queue is empty (all delivered), bounded by ``timeout``."""
        t0 = time.monotonic()
        while self.queue_size() and time.monotonic() - t0 < timeout:
            time.sleep(0.05)
        return time.monotonic() - t0

    def delivered(self) -> int:
        n = 0
        for _dirpath, _d, files in os.walk(self.dir / "vmail"):
            n += len(files)
        return n

    def pids(self) -> list[int]:
        from .common import descendants
        try:
            pid = int((self.dir / "queue/pid/master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return descendants(pid)

    def stop(self) -> None:
        if self.started:
            subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True,
                           timeout=60, env=dict(os.environ, MAIL_CONFIG=str(self.conf)))
            self.started = False
        if self._own_tmp:
            shutil.rmtree(self.dir, ignore_errors=True)



class Dovecot(_Peer):
    """A private Dovecot instance (IMAP + POP3): ``with Dovecot(dataset) as d:``."""

    name = "dovecot"

    def __init__(self, dataset: DataSet, workdir: Path | None = None, *,
                 max_conns: int = 1200, auth_cache: bool = False) -> None:
        self.dataset = dataset
        self.auth_cache = auth_cache
        self._own_tmp = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="bench-dovecot-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.max_conns = max_conns
        self.ports = {"imap": free_port(), "pop3": free_port()}
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def conf(self) -> Path:
        return self.dir / "dovecot.conf"

    def _configure(self) -> None:
        d, n = self.dir, self.max_conns
        (d / "run").mkdir(exist_ok=True)
        (d / "state").mkdir(exist_ok=True)
        (d / "passwd").write_text("".join(
            f"{u}@{DOMAIN}:{{ARGON2ID}}{self.dataset.password_hash}::::::\n"
            for u in self.dataset.users))
        os.chmod(d / "passwd", 0o644)
        mail = d / "mail"
        mail.mkdir(exist_ok=True)
        for u in self.dataset.users:
            count = self.dataset.messages.get(u, 0)
            root = mail / u / "Maildir"
            if count:
                write_maildir(root, u, count, self.dataset.body_size, self.dataset.seen_ratio)
            else:
                for sub in ("cur", "new", "tmp"):
                    (root / sub).mkdir(parents=True, exist_ok=True)
        _chown_tree(mail, MAIL_UID, MAIL_GID)
        self.conf.write_text(f"""\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
protocols = imap pop3
listen = {HOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_cache_size = {"10M" if self.auth_cache else "0"}
auth_cache_ttl = 1 hour
first_valid_uid = 100
mail_location = maildir:{d}/mail/%n/Maildir
mail_fsync = always
mail_max_userip_connections = {n + 100}
default_login_user = dovenull
default_internal_user = dovecot
default_process_limit = {n + 100}
default_client_limit = {4 * n + 1000}
default_vsz_limit = 1G
passdb {{
  driver = passwd-file
  args = scheme=ARGON2ID username_format=%u {d}/passwd
}}
userdb {{
  driver = static
  args = uid={MAIL_UID} gid={MAIL_GID} home={d}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {self.ports['imap']}
  }}
  inet_listener imaps {{
    port = 0
  }}
  process_limit = {n + 100}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {self.ports['pop3']}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap {{
  process_limit = {n + 100}
}}
service auth {{
  client_limit = {4 * n + 1000}
}}
service anvil {{
  client_limit = {4 * n + 1000}
}}
protocol imap {{
  mail_max_userip_connections = {n + 100}
}}
protocol pop3 {{
  mail_max_userip_connections = {n + 100}
}}
""")

    def start(self) -> Dovecot:
        self._configure()
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.ports["imap"], 30, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            err = self.proc.stderr.read().decode() if self.proc.stderr and \
                self.proc.poll() is not None else ""
            raise RuntimeError(f"dovecot did not start: {exc} {err}") from exc
        return self

    def pids(self) -> list[int]:
        from .common import descendants
        return descendants(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc is not None:
            from .common import stop_process
            stop_process(self.proc, 20)
            self.proc = None
        if self._own_tmp:
            shutil.rmtree(self.dir, ignore_errors=True)



if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Install or check the benchmark peers.")
    ap.add_argument("--install", action="store_true", help="apt-get install when missing")
    a = ap.parse_args()
    if a.install:
        install_peers()
    print("postfix:", postfix_missing() or "ok")
    print("dovecot:", dovecot_missing() or "ok")

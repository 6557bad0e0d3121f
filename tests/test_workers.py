"""``mailstack serve --workers 2`` through the wire, on SQLite and PostgreSQL
(docs/behaviour.md §10 "Workers"): the processes share the ports, and what one worker
sees or counts, the other does too.

Which worker serves a connection is read from /proc: the server side of the client's
socket (local port = the listener's, remote port = the client's) belongs to one worker's
file table. Tests open connections until both workers have some (the kernel spreads
them by a hash of the addresses and ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.store import Store
from tests.cli.conftest import REPO, Cli, make_cli

OFF = ("submissions", "submission", "imaps", "pop3s", "pop3", "https", "http", "metrics")


# --- which process serves a connection ---------------------------------------------------


def children(pid: int) -> set[int]:
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.add(int(name))
    return out


def _socket_inode(server_port: int, client_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                local, remote, inode = f[1], f[2], f[9]
                if (int(local.rsplit(":", 1)[1], 16) == server_port
                        and int(remote.rsplit(":", 1)[1], 16) == client_port
                        and inode != "0"):
                    return inode
    return None


def serving_pid(pids: set[int], server_port: int, sock: socket.socket) -> int | None:
    """The worker whose file table holds the server side of ``sock``."""
    inode = _socket_inode(server_port, sock.getsockname()[1])
    if inode is None:
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    return None


# --- the server ---------------------------------------------------------------------------


class Server:
    def __init__(self, cli: Cli, proc: subprocess.Popen[bytes]) -> None:
        self.cli = cli
        self.proc = proc
        self.ports: dict[str, int] = {}

    @property
    def workers(self) -> set[int]:
        return children(self.proc.pid)

    def wait_ready(self, n: int = 2) -> None:
        """listening.json written by the supervisor, ``n`` workers, and each worker
        answering (it greets on a connection the kernel gave it)."""
        deadline = time.monotonic() + 90
        path = self.cli.data_dir / "listening.json"
        while True:
            assert self.proc.poll() is None, "server exited"
            assert time.monotonic() < deadline, "server did not start"
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(path.read_text())
                if record["pid"] == self.proc.pid and len(self.workers) == n:
                    self.ports = record["ports"]
                    break
            time.sleep(0.1)
        seen: set[int] = set()  # every worker serves (connections closed at once)
        while seen != self.workers:
            assert time.monotonic() < deadline, f"workers {self.workers}, served {seen}"
            try:
                c, pid = self.imap()
            except (imaplib.IMAP4.abort, OSError):  # over a cap until a close is seen
                time.sleep(0.1)
                continue
            seen.add(pid)
            c.logout()

    def imap(self) -> tuple[imaplib.IMAP4, int]:
        """A new IMAP connection, greeted, and the pid of the worker serving it."""
        pids = self.workers
        c = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=20)
        pid = None
        for _ in range(50):
            pid = serving_pid(pids, self.ports["imap"], c.sock)
            if pid is not None:
                break
            time.sleep(0.05)
        assert pid is not None, "no worker holds the connection"
        return c, pid

    def imap_on_each(self, per_worker: int = 1) -> dict[int, list[imaplib.IMAP4]]:
        """IMAP connections until every worker serves at least ``per_worker``."""
        by_pid: dict[int, list[imaplib.IMAP4]] = {pid: [] for pid in self.workers}
        for _ in range(60):
            if all(len(v) >= per_worker for v in by_pid.values()):
                return by_pid
            c, pid = self.imap()
            by_pid.setdefault(pid, []).append(c)
        raise AssertionError(f"connections did not reach every worker: "
                             f"{ {k: len(v) for k, v in by_pid.items()} }")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@contextlib.contextmanager
def serve(tmp_path: Path, db_url: str, extra: str = "", auth: str = "") -> Iterator[Server]:
    off = "\n".join(f"[listeners.{n}]\nenabled = false" for n in OFF)
    cli = make_cli(tmp_path, db_url, extra=(
        f'{off}\n[listeners.imap]\naddress = "127.0.0.1"\nport = 0\ntls = "none"\n'
        f'[listeners.smtp]\naddress = "127.0.0.1"\nport = 0\ntls = "none"\n{extra}'))
    cfg = cli.config.read_text().replace(
        "[server]\n", "[server]\nallow_plaintext_auth_on_loopback = true\n", 1
    ).replace("[auth]\n", f"[auth]\n{auth}", 1)
    cli.config.write_text(cfg)
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com", "--password-stdin", input="first-secret\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAILSTACK_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(cli.config),
                             "serve", "--workers", "2"], env=env, cwd=cli.cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    server = Server(cli, proc)
    try:
        server.wait_ready()
        yield server
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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


def _read_until(sock: socket.socket, needle: bytes, deadline: float) -> bytes:
    got = b""
    sock.settimeout(0.2)
    while needle not in got and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    return got


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie is gone too (it only waits for its parent to read its status)
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


# --- tests ------------------------------------------------------------------------------


def test_idle_wakes_on_every_worker_and_a_password_change_ends_all_sessions(
        tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as server:
        by_pid = server.imap_on_each(per_worker=2)
        sessions = [c for conns in by_pid.values() for c in conns]
        for c in sessions:
            assert c.login("anna@example.com", "first-secret")[0] == "OK"
            assert c.select("INBOX")[1] == [b"0"]
            c.send(b"i1 IDLE\r\n")
            assert c.readline().startswith(b"+")
        # a message delivered over SMTP, by whichever worker the kernel picks
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=20) as smtp:
            smtp.sendmail("someone@remote.example", ["anna@example.com"],
                          b"Subject: wake up\r\nFrom: someone@remote.example\r\n\r\nhi\r\n")
        for c in sessions:  # RFC 9051 §7.4.1: EXISTS pushed during IDLE, on both workers
            got = _read_until(c.sock, b"* 1 EXISTS", time.monotonic() + 20)
            assert b"* 1 EXISTS" in got, got
            c.send(b"DONE\r\n")
            assert b"i1 OK" in _read_until(c.sock, b"i1 OK", time.monotonic() + 20)

        # a password change by the CLI (another process) ends the sessions of both
        server.cli.ok("address", "passwd", "anna@example.com", "--password-stdin",
                      input="second-secret\n")
        changed = time.monotonic()
        for pid, conns in by_pid.items():
            for c in conns:
                assert _closed(c.sock, changed + 20), f"session on worker {pid} still open"
        # the old secret is refused and the new one works, on every worker
        for pid, conns in server.imap_on_each().items():
            c = conns[0]
            with pytest.raises(imaplib.IMAP4.error):
                c.login("anna@example.com", "first-secret")
            assert c.login("anna@example.com", "second-secret")[0] == "OK", pid
            c.logout()
        assert server.stop() == 0


def test_connection_caps_and_login_throttle_hold_over_all_workers(
        tmp_path: Path, db_url: str) -> None:
    extra = "[smtp]\nmax_connections_per_ip = 3\n[imap]\nmax_connections_per_ip = 3\n"
    auth = ("lock_after_failures = 4\nslow_after_failures = 100\nmax_delay_seconds = 0\n"
            "notify_failed_logins = false\n")
    with serve(tmp_path, db_url, extra, auth) as server:
        # wait_ready's own connections are closed: the counts must come back to zero
        deadline = time.monotonic() + 20
        port = server.ports["smtp"]
        kept = []
        while len(kept) < 3:  # a worker may still be releasing a closed connection
            s = smtplib.SMTP(timeout=20)
            code, _msg = s.connect("127.0.0.1", port)
            if code == 220:
                kept.append(s)
            else:
                assert time.monotonic() < deadline, code
                s.close()
        on = {serving_pid(server.workers, port, s.sock) for s in kept}
        # RFC 5321 §3.8: 421 to every further connection, whichever worker takes it
        for _ in range(12):
            s = smtplib.SMTP(timeout=20)
            code, msg = s.connect("127.0.0.1", port)
            s.close()
            assert (code, msg[:5]) == (421, b"4.7.0"), (code, msg)
        assert on <= server.workers
        # a closed connection gives its place back, whichever worker had it
        kept.pop().quit()
        deadline = time.monotonic() + 20
        while True:
            s = smtplib.SMTP(timeout=20)
            code, _msg = s.connect("127.0.0.1", port)
            if code == 220:
                s.quit()
                break
            s.close()
            assert time.monotonic() < deadline, "the freed place never came back"
            time.sleep(0.1)
        for s in kept:
            s.quit()

        # the IMAP cap: three greeted, the next closed without a greeting
        deadline = time.monotonic() + 20
        imaps: list[imaplib.IMAP4] = []
        while len(imaps) < 3:
            try:
                imaps.append(imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=20))
            except (imaplib.IMAP4.abort, OSError):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        for _ in range(12):
            with pytest.raises((imaplib.IMAP4.abort, OSError)):
                imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=20)
        for c in imaps:
            c.logout()

        # login throttle: 4 failures spread over both workers lock the pair everywhere
        deadline = time.monotonic() + 20
        by_pid: dict[int, list[imaplib.IMAP4]] = {}
        while len(by_pid) < 2 or sum(len(v) for v in by_pid.values()) < 2:
            try:
                c, pid = server.imap()
            except (imaplib.IMAP4.abort, OSError):  # a closed one not yet released
                assert time.monotonic() < deadline
                time.sleep(0.1)
                continue
            by_pid.setdefault(pid, []).append(c)
            if len(by_pid[pid]) > 1:  # at most one per worker under the cap of 3
                by_pid[pid].pop().logout()
        conns = [v[0] for v in by_pid.values()]
        for i in range(4):
            with pytest.raises(imaplib.IMAP4.error):
                conns[i % 2].login("anna@example.com", f"wrong-{i}")
        for c in conns:  # the right password, on each worker: refused, locked
            with pytest.raises(imaplib.IMAP4.error, match="Too many failed logins"):
                c.login("anna@example.com", "first-secret")
            c.logout()

    async def locks() -> list[tuple[str, str, int, float]]:
        store = Store(db_url, server.cli.data_dir / "blobs")
        await store.open(listen=False)
        try:
            return await store.list_login_throttle()
        finally:
            await store.close()

    rows = [r for r in asyncio.run(locks()) if r[1] == "anna@example.com"]
    assert rows and rows[0][3] > time.time()  # the lock is in the store, for every worker


def test_a_killed_worker_is_restarted_and_sigterm_leaves_no_process(
        tmp_path: Path, db_url: str) -> None:
    with serve(tmp_path, db_url) as server:
        by_pid = server.imap_on_each()
        for conns in by_pid.values():
            assert conns[0].login("anna@example.com", "first-secret")[0] == "OK"
        victim, survivor = sorted(by_pid)
        os.kill(victim, signal.SIGKILL)
        # the other worker's session goes on; the victim's is gone
        assert _closed(by_pid[victim][0].sock, time.monotonic() + 20)
        c = by_pid[survivor][0]
        assert c.select("INBOX")[0] == "OK"
        assert c.noop()[0] == "OK"
        # the supervisor forks a new worker into the slot, and it serves
        deadline = time.monotonic() + 60
        while True:
            pids = server.workers
            if len(pids) == 2 and victim not in pids:
                break
            assert time.monotonic() < deadline, "the worker was not restarted"
            time.sleep(0.1)
        (new,) = pids - {survivor}
        fresh = server.imap_on_each()
        assert set(fresh) == {survivor, new}
        for conns in fresh.values():
            assert conns[0].login("anna@example.com", "first-secret")[0] == "OK"
        c.logout()

        # SIGTERM: every worker stops, then the supervisor, with status 0
        workers = server.workers
        assert server.stop() == 0
        for pid in workers:
            assert _gone(pid), f"worker {pid} outlived the supervisor"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.ports["imap"]), 2)

"""The pieces ``serve --workers`` shares between processes (mailstack/workers.py): the
table of open connections per client (in forked processes, as the workers use it),
the ACME HTTP-01 answers kept as files, and the sockets bound per worker slot."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest

from mailstack.config import ListenerSettings, Settings
from mailstack.workers import DirChallenges, SharedCounts, bind_listeners


def _in_child(fn: object) -> int:
    """Run ``fn()`` in a forked process; its int result as the exit status."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()  # type: ignore[operator]
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_cap_holds_over_the_sum_of_all_workers() -> None:
    counts = SharedCounts(workers=2, slots=64)
    counts.worker = 0
    assert counts.acquire("imap", "192.0.2.1", 3)
    assert counts.acquire("imap", "192.0.2.1", 3)

    def worker1() -> int:
        counts.worker = 1
        ok = counts.acquire("imap", "192.0.2.1", 3)  # the third, in another process
        refused = not counts.acquire("imap", "192.0.2.1", 3)  # a fourth: over the cap
        other = counts.acquire("imap", "192.0.2.2", 3)  # another client is not affected
        other_listener = counts.acquire("smtp", "192.0.2.1", 3)
        return 0 if ok and refused and other and other_listener else 1

    assert _in_child(worker1) == 0
    assert counts.count("imap", "192.0.2.1") == 3
    assert not counts.acquire("imap", "192.0.2.1", 3)  # seen from worker 0 too
    counts.release("imap", "192.0.2.1")
    assert counts.acquire("imap", "192.0.2.1", 3)  # a place came back
    # worker 1 died with its connections: the supervisor forgets its column
    counts.reset_worker(1)
    assert counts.count("imap", "192.0.2.1") == 2
    assert counts.count("imap", "192.0.2.2") == 0
    assert counts.count("smtp", "192.0.2.1") == 0


def test_a_release_never_takes_another_workers_count() -> None:
    counts = SharedCounts(workers=2, slots=64)
    counts.worker = 0
    assert counts.acquire("pop3", "198.51.100.7", 5)
    counts.worker = 1
    counts.release("pop3", "198.51.100.7")  # worker 1 holds none: nothing changes
    assert counts.count("pop3", "198.51.100.7") == 1
    counts.release("pop3", "never-seen")  # unknown key: no effect, no error
    assert counts.count("pop3", "never-seen") == 0


def test_many_clients_reuse_and_rebuild_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = SharedCounts(workers=2, slots=32)
    counts.worker = 0
    rebuilds = []
    rebuild = counts._rebuild
    monkeypatch.setattr(counts, "_rebuild", lambda: (rebuilds.append(1), rebuild()))
    # far more distinct clients over time than slots, each connecting and leaving
    for i in range(500):
        assert counts.acquire("smtp", f"203.0.113.{i % 250}/{i}", 1)
        counts.release("smtp", f"203.0.113.{i % 250}/{i}")
    live = [f"10.0.0.{i}" for i in range(14)]
    for key in live:
        assert counts.acquire("smtp", key, 2)
    for i in range(200):  # churn while these stay open forces rebuilds
        assert counts.acquire("smtp", f"churn-{i}", 1)
        counts.release("smtp", f"churn-{i}")
    assert rebuilds  # more than half the slots were used at some point
    for key in live:  # the live counts survived every rebuild
        assert counts.count("smtp", key) == 1
        assert counts.acquire("smtp", key, 2)
        assert not counts.acquire("smtp", key, 2)


def test_acme_answers_are_files_every_worker_reads(tmp_path: Path) -> None:
    a = DirChallenges(tmp_path / "challenges")
    b = DirChallenges(tmp_path / "challenges")  # another worker's view
    a["tok-EN_123"] = "tok-EN_123.thumbprint"
    assert b.get("tok-EN_123") == "tok-EN_123.thumbprint"
    assert list(b) == ["tok-EN_123"] and len(b) == 1
    # RFC 8555 §8.3: tokens are base64url; anything else is never a file name
    for bad in ("../../etc/passwd", "a/b", "", ".hidden", "x" * 300):
        assert b.get(bad) is None
        with pytest.raises(KeyError):
            a[bad] = "x"
    del a["tok-EN_123"]
    assert b.get("tok-EN_123") is None and len(b) == 0


def _settings(port: int) -> Settings:
    s = Settings()
    off = {f.name: dataclasses.replace(getattr(s.listeners, f.name), enabled=False)
           for f in dataclasses.fields(s.listeners)}
    off["imap"] = ListenerSettings(address="127.0.0.1", port=port, tls="none")
    off["metrics"] = ListenerSettings(address="127.0.0.1", port=0, tls="none")
    return dataclasses.replace(s, listeners=type(s.listeners)(**off))


def test_one_socket_per_worker_on_one_port_and_a_busy_port_refused() -> None:
    socks = bind_listeners(_settings(0), 3)
    try:
        ports = {s.getsockname()[1] for s in socks["imap"]}
        assert len(socks["imap"]) == 3 and len(ports) == 1  # port 0 chosen once
        assert len(socks["metrics"]) == 1  # worker 0 only
        # a second server on the same port fails as a single process would
        with pytest.raises(RuntimeError, match="cannot listen"):
            bind_listeners(_settings(ports.pop()), 2)
    finally:
        for group in socks.values():
            for s in group:
                s.close()
    # and a port taken by any other program too
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(RuntimeError, match="cannot listen"):
            bind_listeners(_settings(other.getsockname()[1]), 2)


def _hold_lock(path: Path) -> tuple[int, int]:
    """A process that holds the writers' lock of ``path`` until the returned pipe end
    is closed; returns (pid, write end). Returns once the lock is held."""
    import fcntl

    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.write(ready_w, b"x")
        os.read(r, 1)  # until the parent closes its end
        os._exit(0)
    os.close(r)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    return pid, w


def _release(pid: int, w: int) -> None:
    os.close(w)
    os.waitpid(pid, 0)


def _lock_free(path: Path) -> bool:
    import fcntl

    def probe() -> int:
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 1
        return 0

    return _in_child(probe) == 0


def _wait_free(path: Path) -> bool:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _lock_free(path):
            return True
        time.sleep(0.02)
    return False


async def test_sqlite_writes_queue_behind_another_workers_transaction(tmp_path: Path) -> None:
    import asyncio

    from mailstack.store import Store

    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    lock = tmp_path / "writers.lock"
    store = Store(url, tmp_path / "blobs")
    await store.open(listen=False)
    store.share_writer_queue(lock)
    try:
        pid, w = _hold_lock(lock)  # another worker in a transaction
        add = asyncio.create_task(store.add_domain("example.com", "standard"))
        assert await store.get_domain("example.com") is None  # the loop still serves
        assert not add.done()  # the write waits for the other worker
        await asyncio.to_thread(_release, pid, w)
        await asyncio.wait_for(add, 30)
        assert await store.get_domain("example.com") is not None
        assert await asyncio.to_thread(_wait_free, lock)  # given back after the commit

        # a write cancelled while it waits never keeps the lock afterwards
        pid, w = _hold_lock(lock)
        waiting = asyncio.create_task(store.add_domain("example.org", "standard"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.to_thread(_release, pid, w)
        assert await asyncio.to_thread(_wait_free, lock)
        assert await store.get_domain("example.org") is None  # nothing half-done
    finally:
        await store.close()


async def test_mail_queued_by_any_worker_wakes_worker_0s_queue_runner(tmp_path: Path) -> None:
    """Worker 0 runs the outbound queue runner; a row queued by worker 1 sets worker
    0's wake-up at once (through the supervisor's socket pair), not at the next poll."""
    import asyncio

    from mailstack.app import App
    from mailstack.config import settings_from_dict
    from mailstack.workers import WorkerInfo

    settings = settings_from_dict({
        "server": {"data_dir": str(tmp_path / "data"), "shutdown_grace_seconds": 0},
        "listeners": {f.name: {"enabled": False}
                      for f in dataclasses.fields(Settings().listeners)},
        "outbound": {"enabled": False}})
    counts = SharedCounts(2, slots=64)
    recv, send = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    apps = [App(settings, worker=WorkerInfo(i, 2, {}, counts, send, recv)) for i in (0, 1)]
    for app in apps:
        await app.start()
    try:
        primary, other = (app.store for app in apps)
        assert primary is not None and other is not None
        assert apps[0].runs_singletons and not apps[1].runs_singletons
        primary.queue_wakeup.clear()
        await other.enqueue("anna@example.com", ["bob@remote.example"], "0" * 64, 10)
        await asyncio.wait_for(primary.queue_wakeup.wait(), 30)
        rows = await primary.list_queue()  # the row the woken runner will find
        assert [r.recipient for r in rows] == ["bob@remote.example"]
    finally:
        for app in apps:
            await app.stop(0)
        recv.close()
        send.close()

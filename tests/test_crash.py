"""Crash durability with a real process kill (docs/behaviour.md §12 "Durability", "Faults";
RFC 5321 §6.1): ``mailstack serve`` runs in a subprocess and is SIGKILLed; with
``--workers 2`` the supervisor and every worker are (the whole process group).

- Every message answered 250 before the kill is readable after a restart.
- A message whose DATA was cut by the kill leaves nothing: no row, no temp file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailstack.store import Store

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, db_url: str, port: int) -> Path:
    off = "\n".join(f"[listeners.{n}]\nenabled = false" for n in (
        "submissions", "submission", "imaps", "imap", "pop3s", "pop3", "https", "http",
        "metrics"))
    cfg = tmp_path / "mailstack.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\ndatabase_url = "{db_url}"\n'
        f'[listeners.smtp]\naddress = "127.0.0.1"\nport = {port}\ntls = "none"\n{off}\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 64\nargon2_parallelism = 1\n"
        "[outbound]\nenabled = false\n[sender_auth]\nenabled = false\n")
    return cfg


def start_server(cfg: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(cfg),
                             "serve", "--workers", str(workers)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def kill_all(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the server's whole process group and wait until none of it is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("server processes still alive after SIGKILL")


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("server did not start")


class Client:
    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    @classmethod
    async def open(cls, port: int) -> Client:
        c = cls(*await asyncio.open_connection("127.0.0.1", port))
        assert (await c.reply()).startswith(b"220")
        return c

    async def reply(self) -> bytes:
        while True:
            line = await asyncio.wait_for(self.r.readline(), 30)
            if line[3:4] != b"-":
                return line

    async def cmd(self, data: bytes) -> bytes:
        self.w.write(data)
        await self.w.drain()
        return await self.reply()


def msg(n: int) -> bytes:
    return (f"From: sender@remote.example\r\nTo: anna@example.com\r\nSubject: n{n}\r\n"
            f"Message-ID: <n{n}@remote.example>\r\n\r\n" + "line of text\r\n" * 200
            ).encode()


@pytest.mark.parametrize("workers", [1, 2])
async def test_kill_keeps_acknowledged_and_leaves_no_half_message(
        tmp_path: Path, db_url: str, workers: int) -> None:
    port = free_port()
    cfg = write_config(tmp_path, db_url, port)
    store = Store(db_url, tmp_path / "data" / "blobs")
    await store.open()
    try:
        await store.add_domain("example.com", "standard")
        anna = await store.add_address("anna", "example.com", password_hash="x")
        inbox = await store.get_folder(anna.id, "INBOX")
        assert inbox is not None
    finally:
        await store.close()

    proc = start_server(cfg, workers)
    try:
        await wait_listening(port, proc)
        c = await Client.open(port)
        await c.cmd(b"EHLO crash.example\r\n")
        acknowledged = 0
        for n in range(15):
            assert (await c.cmd(b"MAIL FROM:<sender@remote.example>\r\n")).startswith(b"250")
            assert (await c.cmd(b"RCPT TO:<anna@example.com>\r\n")).startswith(b"250")
            assert (await c.cmd(b"DATA\r\n")).startswith(b"354")
            if (await c.cmd(msg(n) + b".\r\n")).startswith(b"250"):
                acknowledged += 1
        # a second client is half way through DATA when the process dies
        h = await Client.open(port)
        await h.cmd(b"EHLO half.example\r\n")
        await h.cmd(b"MAIL FROM:<sender@remote.example>\r\n")
        await h.cmd(b"RCPT TO:<anna@example.com>\r\n")
        assert (await h.cmd(b"DATA\r\n")).startswith(b"354")
        h.w.write(msg(99)[:1500])
        await h.w.drain()
        await asyncio.sleep(0.2)
        kill_all(proc)  # no clean shutdown, no flush
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert acknowledged == 15

    # restart: the server sweeps temp files; everything acknowledged is there
    proc = start_server(cfg, workers)
    try:
        await wait_listening(port, proc)
        store = Store(db_url, tmp_path / "data" / "blobs")
        await store.open()
        try:
            msgs = await store.list_messages(inbox.id)
            subjects = []
            for m in msgs:
                data = await store.message_bytes(m)
                assert data.endswith(b"line of text\r\n")  # whole, never truncated
                subjects.append(data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0])
            assert sorted(subjects) == sorted(f"n{n}".encode() for n in range(15))
            assert list(store.blobs.tmp.iterdir()) == []
        finally:
            await store.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0  # clean shutdown on SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()

"""A real ``mailstack serve`` SIGKILLed in the middle of a delivery (docs/behaviour.md §12
"Faults": killed mid outbound delivery): after a restart the row is delivered (a
duplicate would be acceptable, a loss is not)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from mailstack.store import Store
from tests.test_crash import free_port, start_server, wait_listening

from .conftest import message, start_script


def write_config(tmp_path: Path, db_url: str, smtp_port: int, remote_port: int) -> Path:
    off = "\n".join(f"[listeners.{n}]\nenabled = false" for n in (
        "submissions", "submission", "imaps", "imap", "pop3s", "pop3", "https", "http",
        "metrics"))
    cfg = tmp_path / "mailstack.toml"
    cfg.write_text(
        f'[server]\nshutdown_grace_seconds = 0.5\ndata_dir = "{tmp_path / "data"}"\n'
        f'database_url = "{db_url}"\n'
        f'[listeners.smtp]\naddress = "127.0.0.1"\nport = {smtp_port}\ntls = "none"\n{off}\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 64\nargon2_parallelism = 1\n"
        "[sender_auth]\nenabled = false\n"
        "[outbound]\npoll_interval_seconds = 0.2\nlease_seconds = 2.0\n"
        f'[outbound.transport]\n"remote.example" = "127.0.0.1:{remote_port}"\n'
        # DNS only on loopback (nothing answers there: the transport map routes)
        '[outbound_tls]\ndns_resolver = "127.0.0.1:9"\n')
    return cfg


async def test_sigkill_mid_delivery_then_retried_after_restart(
        tmp_path: Path, db_url: str) -> None:
    got_data = asyncio.Event()
    delivered: list[bytes] = []
    phase = {"stall": True}

    async def remote(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        async def send(text: str) -> None:
            w.write(text.encode())
            await w.drain()

        await send("220 mx ESMTP\r\n")
        while line := await r.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                await send("250-mx\r\n250 8BITMIME\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET"):
                await send("250 ok\r\n")
            elif verb == b"DATA":
                await send("354 go\r\n")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    chunk = await r.read(65536)
                    if not chunk:
                        return
                    data += chunk
                if phase["stall"]:  # the sender dies while waiting for this reply
                    got_data.set()
                    await asyncio.sleep(60)
                    return
                delivered.append(data)
                await send("250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                await send("221 bye\r\n")
                return

    server, remote_port = await start_script(remote)
    port = free_port()
    cfg = write_config(tmp_path, db_url, port, remote_port)
    store = Store(db_url, tmp_path / "data" / "blobs")
    await store.open()
    try:
        await store.add_domain("example.com", "standard")
        await store.add_address("anna", "example.com", password_hash="x")
        blob = await store.put_blob(message("anna@example.com", "x@remote.example", "crash"))
        await store.enqueue("anna@example.com", ["x@remote.example"], blob, 100)
    finally:
        await store.close()

    proc = start_server(cfg)
    try:
        await wait_listening(port, proc)
        await asyncio.wait_for(got_data.wait(), 30)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert delivered == []
    phase["stall"] = False

    proc = start_server(cfg)
    try:
        await wait_listening(port, proc)
        for _ in range(300):  # the lease of the dead process runs out after 2 s
            if delivered:
                break
            await asyncio.sleep(0.05)
        assert len(delivered) == 1
        assert b"Subject: crash" in delivered[0]
        store = Store(db_url, tmp_path / "data" / "blobs")
        await store.open()
        try:
            for _ in range(100):
                (row,) = await store.queue_rows()
                if row.state == "delivered":
                    break
                await asyncio.sleep(0.05)
            assert row.state == "delivered" and row.attempts == 1
        finally:
            await store.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
        server.close()

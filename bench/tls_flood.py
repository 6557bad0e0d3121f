"""RSS under a flood of half-open connections to an implicit-TLS port, and after.

Starts mailstack in this process (SQLite, temporary data dir, self-signed certificate),
opens N TCP connections to 993 that never send a byte (spread over loopback source
addresses 127.0.x.y so the per-IP cap does not hide the effect), holds them, closes
them, and prints RSS at start, at the peak and after each round. With the fixes in
``mailstack/memory.py`` (pinned mmap threshold, malloc_trim after bursts) and the
pending-handshake cap, RSS returns to within 20 % of its start.

    .venv/bin/python -m bench.tls_flood --connections 2000 --rounds 3
    .venv/bin/python -m bench.tls_flood --no-fixes     # asyncio ssl=, no trimming

Figures only (never asserted): speed and memory belong here, not in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import resource
import tempfile
from pathlib import Path

from mailstack import memory
from mailstack.app import App
from mailstack.config import settings_from_dict
from mailstack.tls import ensure_self_signed

MB = 1024 * 1024


async def flood(port: int, n: int) -> list[asyncio.StreamWriter]:
    writers = []
    for i in range(n):
        ip = f"127.0.{1 + i // 40 % 250}.{2 + i % 40}"
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
            writers.append(w)
    return writers


async def main(n: int, rounds: int, fixes: bool, pending: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 2 * n + 1000)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        ensure_self_signed(cert, key, "mail.example.net")
        listeners = {name: {"enabled": name == "imaps", "address": "127.0.0.1", "port": 0}
                     for name in ("smtp", "submissions", "submission", "imaps", "imap",
                                  "pop3s", "pop3")}
        settings = settings_from_dict({
            "server": {"data_dir": str(Path(tmp, "data")), "blob_gc_interval_seconds": 0,
                       "max_pending_tls_handshakes": pending,
                       "tls_handshake_timeout_seconds": 600},
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "listeners": listeners, "imap": {"max_connections_per_ip": 50}})
        if not fixes:
            memory.pin_mmap_threshold = lambda size=0: False  # type: ignore[assignment]
        app = App(settings)
        await app.start()
        assert app.services is not None
        if not fixes:
            app.services.handshakes.maximum = 10**9
            app.services.handshakes.trimmer.burst = 10**9
        port = app.ports["imaps"]
        gc.collect()
        start = memory.rss_bytes()
        print(f"fixes={'on' if fixes else 'off'} connections={n} pending cap={pending}")
        print(f"start RSS {start / MB:.1f} MB")
        for r in range(1, rounds + 1):
            writers = await flood(port, n)
            await asyncio.sleep(1.0)
            peak = memory.rss_bytes()
            held = app.services.handshakes.pending
            opened = len(writers)
            for w in writers:
                w.close()
            del writers  # the client side's own objects must not count
            await asyncio.sleep(3.0)  # the server sees the closes; the trimmer runs
            gc.collect()
            memory.malloc_trim()  # what the client side freed too
            after = memory.rss_bytes()
            print(f"round {r}: {opened} open, {held} handshakes pending, "
                  f"{app.services.handshakes.refused} refused; peak RSS {peak / MB:.1f} MB, "
                  f"after close {after / MB:.1f} MB ({100 * (after - start) / start:+.0f} %"
                  f" of start), trims {app.services.handshakes.trimmer.trims}")
        await app.stop(grace=0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pending", type=int, default=256, help="max pending handshakes")
    ap.add_argument("--no-fixes", action="store_true")
    a = ap.parse_args()
    asyncio.run(main(a.connections, a.rounds, not a.no_fixes, a.pending))

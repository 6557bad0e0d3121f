"""Benchmark 5, the Python ceiling: a bare aiosmtpd server that accepts every message
and stores nothing (no parsing, no fsync). Run: ``python bench/sink.py --port P``.
Prints ``ready`` on stdout once listening; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class Sink:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok: discarded"


async def main(port: int) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    handler = Sink()

    def factory() -> Any:
        return SMTP(handler, hostname="sink.bench.test", data_size_limit=64 * 1024 * 1024)

    server = await loop.create_server(factory, "127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(main(ap.parse_args().port))

"""Benchmark: outbound delivery throughput (docs/behaviour.md §6), mailstack's queue
runner side by side with Postfix relaying the same load to the same sink.

N messages (default 1,000) to recipients spread over D destination domains (default 10),
all routed by each server's transport map to ONE timing sink on loopback (aiosmtpd in a
thread of this process: records when each Message-ID arrives). Messages are injected over
C connections (mailstack: submission with AUTH PLAIN; Postfix: smtpd, loopback is in
mynetworks). Reported per server: messages/s from the first acceptance to the last
arrival at the sink, and p50/p99 of queue-to-delivered latency (the 250 to the client ->
the arrival at the sink).

    python -m bench.outbound [--messages 1000] [--domains 10] [--conns 10]
        [--servers mailstack-sqlite,mailstack-pg,postfix] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .clients import Smtp
from .common import (
    ARGON2_FAST,
    HOST,
    PASSWORD,
    Results,
    free_port,
    make_dataset,
    pct,
    standalone_main,
    wait_port,
)
from .peers import Postfix, postfix_missing

BENCH = "outbound"
SENDER_DOMAIN = "example.com"
REPO = Path(__file__).resolve().parent.parent


class TimingSink:
    """aiosmtpd on its own event loop in a thread: arrival time per Message-ID."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.content
        start = data.find(b"Message-ID: <")
        if start >= 0:
            mid = data[start + 13:data.index(b">", start)].decode()
            self.arrived.setdefault(mid, time.time())
        return "250 2.0.0 Ok"

    def _run(self) -> None:
        from aiosmtpd.smtp import SMTP

        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(self._loop.create_server(
            lambda: SMTP(self, hostname="sink.bench.test"), HOST, self.port))
        self._ready.set()
        self._loop.run_forever()
        server.close()

    def __enter__(self) -> TimingSink:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def domains(n: int) -> list[str]:
    return [f"d{i}.bench.test" for i in range(n)]


def payload(mid: str, rcpt: str) -> bytes:
    body = "This is line of an outbound benchmark message.\r\n" * 40
    return (f"From: anna@{SENDER_DOMAIN}\r\nTo: {rcpt}\r\nSubject: bench {mid}\r\n"
            f"Message-ID: <{mid}>\r\n\r\n{body}").encode()


async def inject(port: int, n: int, doms: list[str], conns: int, auth: bool
                 ) -> dict[str, float]:
    """Send ``n`` messages over ``conns`` connections; accept time per Message-ID."""
    accepted: dict[str, float] = {}
    todo = list(range(n))

    async def client() -> None:
        c = await Smtp.connect(port)
        if auth:
            await c.auth_plain(f"anna@{SENDER_DOMAIN}", PASSWORD)
        while todo:
            i = todo.pop()
            mid = f"{uuid.uuid4().hex}@bench"
            rcpt = f"user{i}@{doms[i % len(doms)]}"
            await c.send(f"anna@{SENDER_DOMAIN}", rcpt, payload(mid, rcpt))
            accepted[mid] = time.time()
        await c.close()

    await asyncio.gather(*(client() for _ in range(conns)))
    return accepted


async def wait_all(sink: TimingSink, accepted: dict[str, float], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the sink fills ``arrived`` from its thread
        if all(m in sink.arrived for m in accepted):
            return
        await asyncio.sleep(0.05)


def report(res: Results, server: str, case: str, sink: TimingSink,
           accepted: dict[str, float]) -> None:
    lat = [sink.arrived[m] - t for m, t in accepted.items() if m in sink.arrived]
    done = len(lat)
    if not done:
        res.skip(BENCH, case, server, "nothing arrived at the sink")
        return
    span = max(sink.arrived[m] for m in accepted if m in sink.arrived) - min(
        accepted.values())
    inject = max(accepted.values()) - min(accepted.values())
    note = f"injection took {inject:.1f} s"
    if done != len(accepted):
        note += f"; only {done}/{len(accepted)} arrived"
    res.add(BENCH, case, "msgs/s", server, done / span, unit="msg/s", note=note)
    res.add(BENCH, case, "p50 queue->delivered", server, pct(lat, 50) * 1000, unit="ms")
    res.add(BENCH, case, "p99 queue->delivered", server, pct(lat, 99) * 1000, unit="ms")


# --- mailstack -------------------------------------------------------------------------


def start_serve(cfg: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "mailstack", "--config", str(cfg),
                                 "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)


@contextlib.asynccontextmanager
async def mailstack(pg: bool, doms: list[str], sink_port: int) -> AsyncIterator[int]:
    from mailstack.policy.passwords import Passwords
    from mailstack.store import Store

    base = Path(tempfile.mkdtemp(prefix="bench-outbound-"))
    schema = None
    db_url = ""
    if pg:
        import asyncpg

        from .servers import PG_DSN
        schema = "bench_" + uuid.uuid4().hex[:12]
        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.close()
        db_url = PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1) + \
            f"?schema={schema}"
    port = free_port()
    off = "\n".join(f"[listeners.{n}]\nenabled = false" for n in (
        "smtp", "submissions", "imaps", "imap", "pop3s", "pop3", "https", "http", "metrics"))
    routes = "\n".join(f'"{d}" = "{HOST}:{sink_port}"' for d in doms)
    cfg = base / "mailstack.toml"
    cfg.write_text(
        f'[server]\ndata_dir = "{base / "data"}"\ndatabase_url = "{db_url}"\n'
        "allow_plaintext_auth_on_loopback = true\n"
        f'[listeners.submission]\naddress = "{HOST}"\nport = {port}\ntls = "none"\n{off}\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 64\nargon2_parallelism = 1\n"
        "notify_new_network = false\n"
        f"[outbound.transport]\n{routes}\n")
    url = db_url or f"sqlite+aiosqlite:///{base / 'data' / 'mailstack.db'}"
    (base / "data").mkdir()
    store = Store(url, base / "data" / "blobs")
    await store.open(listen=False)
    await store.add_domain(SENDER_DOMAIN, "standard")
    pw = await Passwords(1, 64, 1).hash(PASSWORD)
    await store.add_address("anna", SENDER_DOMAIN, password_hash=pw)
    await store.close()
    proc = await asyncio.to_thread(start_serve, cfg, base / "serve.log")
    try:
        await asyncio.to_thread(wait_port, port, 60)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if schema:
            import asyncpg

            from .servers import PG_DSN
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await conn.close()
        shutil.rmtree(base, ignore_errors=True)


# --- Postfix ---------------------------------------------------------------------------


class RelayPostfix(Postfix):
    """bench.peers' private Postfix, relaying the bench domains to the sink."""

    def __init__(self, doms: list[str], sink_port: int) -> None:
        super().__init__(make_dataset(1, hash_profile=ARGON2_FAST))
        self.doms, self.sink_port = doms, sink_port

    def _configure(self) -> None:
        super()._configure()
        etc = self.conf
        (etc / "transport").write_text("".join(f"{d} smtp:[{HOST}]:{self.sink_port}\n"
                                               for d in self.doms))
        with open(etc / "main.cf", "a") as f:
            f.write(f"relay_domains = {' '.join(self.doms)}\n"
                    f"transport_maps = texthash:{etc}/transport\n"
                    "smtpd_relay_restrictions = permit_mynetworks, reject\n"
                    "smtp_dns_support_level = disabled\n"
                    "smtp_host_lookup = native\n")


# --- the benchmark -----------------------------------------------------------------------


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--domains", type=int, default=10)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--servers", default="mailstack-sqlite,mailstack-pg,postfix")


def run_from_args(a: argparse.Namespace) -> Results:
    return asyncio.run(run(a))


async def run(a: argparse.Namespace) -> Results:
    res = Results()
    doms = domains(a.domains)
    case = f"{a.messages} msgs/{a.domains} domains"
    for server in a.servers.split(","):
        with TimingSink() as sink:
            if server == "postfix":
                missing = postfix_missing()
                if missing:
                    res.skip(BENCH, case, server, missing)
                    continue
                with RelayPostfix(doms, sink.port) as pf:
                    accepted = await inject(pf.port, a.messages, doms, a.conns, auth=False)
                    await wait_all(sink, accepted, a.timeout)
            else:
                async with mailstack(server == "mailstack-pg", doms, sink.port) as port:
                    accepted = await inject(port, a.messages, doms, a.conns, auth=True)
                    await wait_all(sink, accepted, a.timeout)
            report(res, server, case, sink, accepted)
    return res


if __name__ == "__main__":
    standalone_main(__doc__, add_args, run_from_args, BENCH)

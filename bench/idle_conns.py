"""Benchmark 4: idle IMAP connections.

Opens N connections (default 1,000; 5,000 with --conns 5000) spread over U users; each
logs in, SELECTs INBOX and enters IDLE. Measured: total server memory as PSS summed over
all server processes (/proc/PID/smaps_rollup; Dovecot: master + every child; mailstack:
its one process; PostgreSQL's own backends are NOT counted) before and with the
connections open, the difference per connection, and the time a NEW client needs to
connect + LOGIN + SELECT while they are open (median of 5). Logins use the cheap Argon2id
profile on both sides unless --full-hash (each login costs ~0.18 s of CPU otherwise).

    python -m bench.idle_conns [--conns 1000] [--users 50]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from .clients import Imap
from .common import (
    ARGON2_FAST,
    ARGON2_FULL,
    DOMAIN,
    PASSWORD,
    Results,
    make_dataset,
    median,
    pss_kib,
    raise_nofile,
    standalone_main,
)
from .servers import probe_unavailable, serve

BENCH = "idle"
ALL_SERVERS = ["dovecot", "mailstack-sqlite", "mailstack-pg"]


async def open_idle(port: int, user: str) -> tuple[Imap, bytes]:
    c = await Imap.connect(port)
    await c.login(f"{user}@{DOMAIN}", PASSWORD)
    await c.cmd(b"SELECT INBOX")
    return c, await c.idle_start()


async def login_time(port: int, user: str, samples: int = 5) -> float:
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        c = await Imap.connect(port)
        await c.login(f"{user}@{DOMAIN}", PASSWORD)
        await c.cmd(b"SELECT INBOX")
        out.append(time.perf_counter() - t0)
        await c.logout()
    return median(out)


async def run(conns: int, users: int, servers: list[str], hash_profile: dict[str, int],
              parallel: int = 50, timeout: float = 300.0) -> Results:
    res = Results()
    raise_nofile(conns * 2 + 1024)
    case = f"{conns} conns"
    ds = make_dataset(users, msgs_per_user=10, hash_profile=hash_profile)
    reasons = await asyncio.to_thread(probe_unavailable, servers, "imap")
    for server in servers:
        if reasons[server]:
            res.skip(BENCH, case, server, reasons[server] or "")
            continue
        async with serve(server, ds, protocols={"imap"}, argon2=hash_profile,
                         max_conns=conns + 50) as srv:
            port = srv.ports["imap"]
            idle_login = await login_time(port, ds.users[0])
            # one login per user first, one at a time: mailstack records the client
            # network of each address on its first login, and concurrent first logins of
            # one address race on PostgreSQL (reported; see bench/README.md)
            for u in ds.users:
                await login_time(port, u, samples=1)
            await asyncio.sleep(0.5)
            base = pss_kib(srv.pids())
            sem = asyncio.Semaphore(parallel)
            opened: list[tuple[Imap, bytes]] = []
            errors: list[str] = []
            deadline = time.monotonic() + timeout

            async def one(i: int, port: int = port, deadline: float = deadline,
                          sem: asyncio.Semaphore = sem, opened: list[tuple[Imap, bytes]]
                          = opened, errors: list[str] = errors) -> None:
                async with sem:
                    if time.monotonic() > deadline:
                        return
                    try:
                        opened.append(await open_idle(port, ds.users[i % users]))
                    except Exception as exc:
                        errors.append(repr(exc)[:200])

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(conns)))
            open_s = time.perf_counter() - t0
            await asyncio.sleep(2.0)
            loaded = pss_kib(srv.pids())
            busy_login = await login_time(port, ds.users[1 % users])
            nprocs = len(srv.pids())
            for c, _tag in opened:
                c.abort()
        n = len(opened)
        note = f"{n} of {conns} opened" + (f"; {len(errors)} errors, first: {errors[0]}"
                                           if errors else "")
        res.add(BENCH, case, "PSS total", server, loaded / 1024, "MiB", "lower", note)
        res.add(BENCH, case, "PSS before", server, base / 1024, "MiB", "lower")
        res.add(BENCH, case, "PSS per conn", server, (loaded - base) / max(1, n), "KiB",
                "lower", f"{nprocs} server processes")
        res.add(BENCH, case, "login while idle", server, busy_login * 1000, "ms", "lower")
        res.add(BENCH, case, "login alone", server, idle_login * 1000, "ms", "lower")
        res.add(BENCH, case, "open all", server, open_s, "s", "lower",
                f"{parallel} logins in parallel")
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))
    ap.add_argument("--full-hash", action="store_true",
                    help="production Argon2id (m=65536,t=3,p=1) for every login")


def run_from_args(a: argparse.Namespace) -> Results:
    return asyncio.run(run(a.conns, a.users, a.servers.split(","),
                           ARGON2_FULL if a.full_hash else ARGON2_FAST))


def main() -> None:
    standalone_main(__doc__, add_args, run_from_args, "idle")


if __name__ == "__main__":
    main()

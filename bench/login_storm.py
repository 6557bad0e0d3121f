"""Benchmark 7: a login storm. 50 clients (50 users) each open a connection, LOGIN and
LOGOUT, again and again, until 1,000 logins are done: logins/s and p50/p99 of the LOGIN
command. Both servers get the SAME Argon2id hash string (Dovecot's own parameters by
default) and the SAME verified-credential cache setting, once off and once on
(Dovecot ``auth_cache_size``, mailstack ``auth.credential_cache_seconds``): with the
cache on, each user costs one Argon2 computation, then memory lookups.

    python -m bench.login_storm [--logins 1000] [--clients 50] [--fast-hash]
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
    pct,
    standalone_main,
)
from .servers import probe_unavailable, serve

BENCH = "login_storm"
ALL_SERVERS = ["dovecot", "mailstack-sqlite", "mailstack-pg"]


async def storm(port: int, users: tuple[str, ...], logins: int, deadline: float
                ) -> tuple[float, list[float]]:
    lat: list[float] = []
    left = [logins]

    async def client(user: str) -> None:
        while left[0] > 0 and time.monotonic() < deadline:
            left[0] -= 1
            c = await Imap.connect(port)
            t0 = time.perf_counter()
            await c.login(f"{user}@{DOMAIN}", PASSWORD)
            lat.append(time.perf_counter() - t0)
            await c.logout()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(u) for u in users))
    return time.perf_counter() - t0, lat


async def run(logins: int, clients: int, servers: list[str], fast: bool) -> Results:
    res = Results()
    profile = ARGON2_FAST if fast else ARGON2_FULL
    ds = make_dataset(clients, hash_profile=profile)
    reasons = await asyncio.to_thread(probe_unavailable, servers, "imap")
    for cache in (False, True):
        case = f"{logins} logins, {clients} clients, cache {'on' if cache else 'off'}"
        for server in servers:
            if reasons[server]:
                res.skip(BENCH, case, server, reasons[server] or "")
                continue
            async with serve(server, ds, protocols={"imap"}, argon2=profile,
                             auth_cache=cache) as srv:
                seconds, lat = await storm(srv.ports["imap"], ds.users, logins,
                                           time.monotonic() + 600)
            res.add(BENCH, case, "logins/s", server, len(lat) / seconds, "/s", "higher")
            res.add(BENCH, case, "LOGIN p50", server, median(lat) * 1000, "ms", "lower")
            res.add(BENCH, case, "LOGIN p99", server, pct(lat, 99) * 1000, "ms", "lower")
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--logins", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))
    ap.add_argument("--fast-hash", action="store_true",
                    help="a cheap Argon2id profile on both sides (default: Dovecot's own)")


def run_from_args(a: argparse.Namespace) -> Results:
    return asyncio.run(run(a.logins, a.clients, a.servers.split(","), a.fast_hash))


def main() -> None:
    standalone_main(__doc__, add_args, run_from_args, "login-storm")


if __name__ == "__main__":
    main()

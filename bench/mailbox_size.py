"""Benchmark 3: how cost grows with mailbox size.

For each size (default 1,000, 10,000 and 100,000 messages; ``--skip-100k`` leaves the
100k mailbox out, it takes minutes to fill) a
server is started with ONE user whose INBOX holds that many messages (half \\Seen), then
one client logs in and times SELECT INBOX, FETCH 1:* (UID FLAGS), UID SEARCH UNSEEN,
UID SORT (DATE) and UID THREAD REFERENCES (RFC 5256):
once cold (the first time after start: Dovecot builds its index here, mailstack reads
SQLite/PostgreSQL pages for the first time) and ``--repeat`` times warm (median).
Mailboxes are populated directly: mailstack through the Store API, Dovecot as a Maildir
with the same bytes.

    python -m bench.mailbox_size [--sizes 1000,10000,100000] [--skip-100k] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from .clients import Imap
from .common import (
    ARGON2_FAST,
    DOMAIN,
    PASSWORD,
    Results,
    make_dataset,
    median,
    standalone_main,
)
from .servers import probe_unavailable, serve

BENCH = "mailbox_size"
ALL_SERVERS = ["dovecot", "mailstack-sqlite", "mailstack-pg"]
STEPS = [("SELECT", b"SELECT INBOX"), ("FETCH 1:* (UID FLAGS)", b"FETCH 1:* (UID FLAGS)"),
         ("UID SEARCH UNSEEN", b"UID SEARCH UNSEEN"),
         ("UID SORT (DATE)", b"UID SORT (DATE) UTF-8 ALL"),
         ("UID THREAD REFERENCES", b"UID THREAD REFERENCES UTF-8 ALL")]


async def measure(port: int, user: str, repeat: int,
                  steps: list[tuple[str, bytes]]) -> dict[str, list[float]]:
    c = await Imap.connect(port)
    await c.login(f"{user}@{DOMAIN}", PASSWORD)
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    for _ in range(1 + repeat):  # first pass = cold
        for name, cmd in steps:
            t0 = time.perf_counter()
            await c.cmd(cmd)
            times[name].append(time.perf_counter() - t0)
    await c.logout()
    return times


async def run(sizes: list[int], repeat: int, servers: list[str],
              steps: list[tuple[str, bytes]] = STEPS) -> Results:
    res = Results()
    reasons = await asyncio.to_thread(probe_unavailable, servers, "imap")
    for size in sizes:
        ds = make_dataset(1, msgs_per_user=size, hash_profile=ARGON2_FAST, body_size=1024)
        for server in servers:
            case = f"{size} msgs"
            if reasons[server]:
                res.skip(BENCH, case, server, reasons[server] or "")
                continue
            async with serve(server, ds, protocols={"imap"}, argon2=ARGON2_FAST) as srv:
                times = await measure(srv.ports["imap"], ds.users[0], repeat, steps)
            for name, _ in steps:
                res.add(BENCH, case, f"{name} warm", server, median(times[name][1:]) * 1000,
                        "ms", "lower")
                res.add(BENCH, case, f"{name} cold", server, times[name][0] * 1000, "ms",
                        "lower")
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--skip-100k", action="store_true",
                    help="leave out sizes of 100,000 messages and more")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))
    ap.add_argument("--steps", default="",
                    help="comma list of step names to time (default: all); e.g. 'SELECT,"
                         "FETCH' against a commit without SORT (bench.compare)")


def run_from_args(a: argparse.Namespace) -> Results:
    wanted = [w.strip() for w in a.steps.split(",") if w.strip()]
    steps = [st for st in STEPS if not wanted or any(st[0].startswith(w) for w in wanted)]
    sizes = [int(x) for x in a.sizes.split(",")]
    if a.skip_100k:
        sizes = [n for n in sizes if n < 100_000]
    return asyncio.run(run(sizes, a.repeat,
                           a.servers.split(","), steps))


def main() -> None:
    standalone_main(__doc__, add_args, run_from_args, "mailbox-size")


if __name__ == "__main__":
    main()

"""Benchmark: POP3 download of a whole mailbox (RFC 1939), side by side with Dovecot.

One user whose INBOX holds ``--messages`` messages (default 1,000, ``--body-size``
bytes of body each, the same bytes on both servers). One client logs in (USER/PASS,
not timed) and downloads the mailbox as a POP3 client does: STAT, UIDL, then RETR of
every message, one command at a time; QUIT without DELE, so the next round finds the
same mailbox. ``--rounds`` sessions one after the other (default 3); the first is also
reported alone as "cold" (Dovecot builds its index and UIDL list there). Every RETR's
size is checked against the octets STAT and LIST announce (a mismatch is an error).

Figures: messages/s and MB/s of the whole download (STAT + UIDL + all RETR), the STAT
and UIDL times, p50/p99 per RETR (warm rounds).

    python -m bench.pop3_download [--messages 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from .clients import Pop3, ProtocolError
from .common import (
    ARGON2_FAST,
    DOMAIN,
    PASSWORD,
    Results,
    make_dataset,
    median,
    pct,
    standalone_main,
)
from .servers import probe_unavailable, serve

BENCH = "pop3"
# -w2: `serve --workers 2` (the default on 2 cores), beside one process
ALL_SERVERS = ["dovecot", "mailstack-sqlite", "mailstack-sqlite-w2", "mailstack-pg"]


@dataclass
class Download:
    count: int
    octets: int
    stat: float
    uidl: float
    retr: list[float]
    elapsed: float


async def download(port: int, user: str) -> Download:
    """One session: the timings of STAT, UIDL and every RETR, and the octets read."""
    c = await Pop3.connect(port)
    await c.login(f"{user}@{DOMAIN}", PASSWORD)
    t0 = time.perf_counter()
    stat = await c.cmd(b"STAT")
    t_stat = time.perf_counter() - t0
    count, total = (int(x) for x in stat.split()[1:3])
    t1 = time.perf_counter()
    uidl = await c.multi(b"UIDL")
    t_uidl = time.perf_counter() - t1
    if len(uidl) != count:
        raise ProtocolError(f"UIDL listed {len(uidl)} of {count} messages")
    retr: list[float] = []
    octets = 0
    for n in range(1, count + 1):
        t = time.perf_counter()
        lines = await c.multi(b"RETR %d" % n)
        retr.append(time.perf_counter() - t)
        octets += sum(len(x) for x in lines)
    elapsed = time.perf_counter() - t0
    await c.quit()
    if octets != total:
        raise ProtocolError(f"RETR gave {octets} octets, STAT announced {total}")
    return Download(count, octets, t_stat, t_uidl, retr, elapsed)


async def run(n_messages: int, rounds: int, body_size: int, servers: list[str]) -> Results:
    res = Results()
    case = f"{n_messages} msgs"
    ds = make_dataset(1, msgs_per_user=n_messages, hash_profile=ARGON2_FAST,
                      body_size=body_size)
    reasons = await asyncio.to_thread(probe_unavailable, servers, "pop3")
    for server in servers:
        if reasons[server]:
            res.skip(BENCH, case, server, reasons[server] or "")
            continue
        async with serve(server, ds, protocols={"pop3"}, argon2=ARGON2_FAST) as srv:
            runs = [await download(srv.ports["pop3"], ds.users[0])
                    for _ in range(1 + rounds)]
        cold, warm = runs[0], runs[1:]
        elapsed = median([r.elapsed for r in warm])
        res.add(BENCH, case, "download msgs/s", server, cold.count / elapsed, "msg/s",
                "higher")
        res.add(BENCH, case, "download MB/s", server, cold.octets / elapsed / 1e6, "MB/s",
                "higher")
        res.add(BENCH, case, "download cold", server, cold.elapsed * 1000, "ms", "lower",
                "first session after start")
        res.add(BENCH, case, "STAT warm", server, median([r.stat for r in warm]) * 1000,
                "ms", "lower")
        res.add(BENCH, case, "UIDL warm", server, median([r.uidl for r in warm]) * 1000,
                "ms", "lower")
        retr = [x for r in warm for x in r.retr]
        res.add(BENCH, case, "p50 RETR", server, pct(retr, 50) * 1000, "ms", "lower")
        res.add(BENCH, case, "p99 RETR", server, pct(retr, 99) * 1000, "ms", "lower")
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="warm sessions after the cold one")
    ap.add_argument("--body-size", type=int, default=4096)
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))


def run_from_args(a: argparse.Namespace) -> Results:
    return asyncio.run(run(a.messages, a.rounds, a.body_size, a.servers.split(",")))


def main() -> None:
    standalone_main(__doc__, add_args, run_from_args, "pop3-download")


if __name__ == "__main__":
    main()

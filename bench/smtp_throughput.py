"""Benchmark 1 (SMTP accept throughput) and 5 (the Python ceiling).

For each server and each (concurrency, message size) cell: open C connections (and AUTH
on submission) BEFORE the clock starts, then every client sends messages one after the
other on its connection until the cell's deadline (or the per-client count bound).
Reported: messages/s over the cell, p50/p99 latency from the end of DATA (the final
``.`` written) to the ``250``.

Servers: ``postfix`` (MX, virtual(8) delivery to maildir), ``mailstack-sqlite`` /
``mailstack-pg`` (MX to a hosted address, and submission with AUTH PLAIN to a hosted
address), ``aiosmtpd-sink`` (stores nothing). Every message is unique (Message-ID), so no
server can skip work for repeated bytes.

    python -m bench.smtp_throughput [--concurrency 10,50] [--sizes 4096,102400]
        [--duration 4] [--servers ...] [--auth-dns] [--json out.json]

mailstack's inbound sender checks (SPF/DKIM/DMARC on the MX) are off by default here;
``--auth-dns`` turns them on against a loopback DNS responder (bench/dnsstub.py), so the
MX figures include them. No bench query ever leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from .clients import ProtocolError, Smtp
from .common import (
    ARGON2_FAST,
    ARGON2_FULL,
    DOMAIN,
    PASSWORD,
    Results,
    make_dataset,
    pct,
    smtp_message,
    standalone_main,
)
from .dnsstub import DnsStub
from .servers import probe_unavailable, serve

BENCH = "smtp"
# -w2: `serve --workers 2` (the default on 2 cores), beside one process
ALL_SERVERS = ["postfix", "mailstack-sqlite", "mailstack-sqlite-w2", "mailstack-pg",
               "aiosmtpd-sink"]
MAX_PER_CLIENT = 100_000
EXTERNAL_SENDER = "sender@remote.test"


def size_label(n: int) -> str:
    return f"{n // 1024}KB" if n >= 1024 else f"{n}B"


async def run_cell(port: int, mode: str, conc: int, size: int, duration: float,
                   users: tuple[str, ...], tag: str) -> dict[str, Any]:
    """One cell; returns count, errors, elapsed, latencies."""
    async def open_client(i: int) -> Smtp:
        c = await Smtp.connect(port)
        if mode == "submission":
            await c.auth_plain(f"{users[i % len(users)]}@{DOMAIN}", PASSWORD)
        return c

    clients = await asyncio.gather(*(open_client(i) for i in range(conc)))
    lat: list[float] = []
    errors: list[str] = []
    counts = [0] * conc
    start = time.perf_counter()
    deadline = start + duration

    async def loop(i: int, c: Smtp) -> None:
        if mode == "submission":
            sender = f"{users[i % len(users)]}@{DOMAIN}"
            rcpt = f"{users[(i + 1) % len(users)]}@{DOMAIN}"
        else:
            sender, rcpt = EXTERNAL_SENDER, f"{users[i % len(users)]}@{DOMAIN}"
        n = 0
        while time.perf_counter() < deadline and n < MAX_PER_CLIENT:
            data = smtp_message(sender, rcpt, size, hash((tag, i, n)) & 0xFFFFFFFFFFFF)
            n += 1
            try:
                lat.append(await c.send(sender, rcpt, data))
                counts[i] += 1
            except ProtocolError as exc:
                errors.append(str(exc))
                if "closed" in str(exc) or len(errors) > 1000:
                    return
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors.append(repr(exc))
                return

    await asyncio.gather(*(loop(i, c) for i, c in enumerate(clients)))
    elapsed = time.perf_counter() - start
    await asyncio.gather(*(c.close() for c in clients))
    return {"count": sum(counts), "errors": errors, "elapsed": elapsed, "lat": lat}


def _record(res: Results, case: str, server: str, cell: dict[str, Any],
            peer_case: str = "") -> None:
    note = ""
    if cell["errors"]:
        note = f"{len(cell['errors'])} errors, first: {cell['errors'][0][:80]}"
    rate = cell["count"] / cell["elapsed"] if cell["elapsed"] else 0.0
    res.add(BENCH, case, "msgs/s", server, rate, "msg/s", "higher", note, peer_case)
    res.add(BENCH, case, "p50", server, pct(cell["lat"], 50) * 1000, "ms", "lower", "",
            peer_case)
    res.add(BENCH, case, "p99", server, pct(cell["lat"], 99) * 1000, "ms", "lower", "",
            peer_case)


async def run(concurrency: list[int], sizes: list[int], duration: float,
              servers: list[str], hash_profile: dict[str, int],
              auth_dns: bool = False) -> Results:
    if auth_dns:
        with DnsStub() as stub:
            res = await _run(concurrency, sizes, duration, servers, hash_profile,
                             f"127.0.0.1:{stub.port}")
            print(f"loopback DNS responder answered {stub.queries} queries",
                  file=sys.stderr)
            return res
    return await _run(concurrency, sizes, duration, servers, hash_profile, "")


async def _run(concurrency: list[int], sizes: list[int], duration: float,
               servers: list[str], hash_profile: dict[str, int],
               dns_resolver: str) -> Results:
    res = Results()
    users = max(concurrency)
    ds = make_dataset(users, hash_profile=hash_profile)
    reasons = await asyncio.to_thread(probe_unavailable, servers, "smtp")
    for server in servers:
        modes = ["mx", "submission"] if server.startswith("mailstack") else ["mx"]
        cases = [(c, s, m) for c in concurrency for s in sizes for m in modes]
        if reasons[server]:
            for c, s, m in cases:
                res.skip(BENCH, f"c={c} {size_label(s)} {m}", server, reasons[server] or "")
            continue
        async with serve(server, ds, protocols={"smtp"}, argon2=hash_profile,
                         max_conns=max(concurrency) * 2, dns_resolver=dns_resolver) as srv:
            # warm-up (not recorded): a short burst at the smallest settings
            await run_cell(srv.ports["smtp"], "mx", min(concurrency), min(sizes),
                           min(1.0, duration), ds.users, f"warm{server}")
            for c, s, m in cases:
                port = srv.ports["submission" if m == "submission" else "smtp"]
                case = f"c={c} {size_label(s)} {m}"
                cell = await run_cell(port, m, c, s, duration, ds.users, f"{server}{case}")
                pf = srv.extra.get("postfix")
                if pf is not None:  # let the queue drain so the next cell starts clean
                    drain = await asyncio.to_thread(pf.wait_drained, 120)
                    cell["drain"] = drain
                _record(res, case, server, cell,
                        peer_case=f"c={c} {size_label(s)} mx" if m == "submission" else "")
                if "drain" in cell:
                    res.add(BENCH, case, "drain after", server, cell["drain"], "s", "lower",
                            "queue empty (all delivered) this long after the last 250")
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--concurrency", default="10,50")
    ap.add_argument("--sizes", default="4096,102400", help="message sizes in octets")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per cell")
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))
    ap.add_argument("--auth-dns", action="store_true",
                    help="mailstack MX runs its SPF/DKIM/DMARC checks against a loopback "
                         "DNS responder (default: checks off)")
    ap.add_argument("--fast-hash", action="store_true",
                    help="cheap Argon2id on both sides (default: m=65536,t=3,p=1)")


def run_from_args(a: argparse.Namespace) -> Results:
    return asyncio.run(run([int(x) for x in a.concurrency.split(",")],
                           [int(x) for x in a.sizes.split(",")], a.duration,
                           a.servers.split(","), ARGON2_FAST if a.fast_hash else ARGON2_FULL,
                           a.auth_dns))


def main() -> None:
    standalone_main(__doc__, add_args, run_from_args, "smtp")


if __name__ == "__main__":
    main()

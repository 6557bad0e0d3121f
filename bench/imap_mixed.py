"""Benchmark 2: IMAP mixed workload.

N clients, each logged in (before the clock starts) to its OWN mailbox of M messages, loop
over a realistic mix until the deadline: SELECT INBOX; FETCH 1:* (FLAGS); FETCH the
headers (From, Subject, Date) of the last 20; FETCH one whole body; STORE +FLAGS (\\Seen)
on one; APPEND one message; SEARCH UNSEEN; SEARCH SUBJECT (a text search); STORE
\\Deleted on the first + EXPUNGE (so the mailbox keeps its size); NOOP.
Before the clock starts every client does one full round (not counted; its wall time is
reported as "first round": first-touch costs such as index/cache building).
Reported: operations (commands) per second over all clients and p99 per command.

    python -m bench.imap_mixed [--clients 10] [--messages 200] [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import time
from collections import defaultdict

from .clients import Imap, ProtocolError
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
from .servers import probe_unavailable, serve

BENCH = "imap_mixed"
# -w2: `serve --workers 2` (the default on 2 cores), beside one process
ALL_SERVERS = ["dovecot", "mailstack-sqlite", "mailstack-sqlite-w2", "mailstack-pg"]
COMMANDS = ["SELECT", "FETCH FLAGS", "FETCH HEADERS", "FETCH BODY", "STORE", "APPEND",
            "SEARCH UNSEEN", "SEARCH TEXT", "EXPUNGE", "NOOP"]
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")
MAX_ROUNDS = 100_000


async def client_loop(c: Imap, deadline: float, rng: random.Random,
                      lat: dict[str, list[float]], errors: list[str],
                      max_rounds: int = MAX_ROUNDS) -> int:
    """Rounds of the mix until ``deadline``; returns the number of commands done."""
    done = 0
    append_data = smtp_message("a@remote.test", f"x@{DOMAIN}", 3000, rng.randrange(1 << 30))

    async def timed(name: str, command: bytes, literal: bytes | None = None) -> list[bytes]:
        nonlocal done
        t0 = time.perf_counter()
        out = await c.cmd(command, literal)
        lat[name].append(time.perf_counter() - t0)
        done += 1
        return out

    rounds = 0
    while time.perf_counter() < deadline and rounds < max_rounds:
        rounds += 1
        try:
            untagged = await timed("SELECT", b"SELECT INBOX")
            exists = next((int(m.group(1)) for line in untagged
                           if (m := _EXISTS.match(line))), 0)
            if exists < 2:
                raise ProtocolError(f"mailbox nearly empty ({exists})")
            await timed("FETCH FLAGS", b"FETCH 1:* (FLAGS)")
            lo = max(1, exists - 19)
            await timed("FETCH HEADERS",
                        b"FETCH %d:%d (UID BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"
                        % (lo, exists))
            k = rng.randint(1, exists)
            await timed("FETCH BODY", b"FETCH %d BODY.PEEK[]" % k)
            await timed("STORE", b"STORE %d +FLAGS (\\Seen)" % k)
            await timed("APPEND", b"APPEND INBOX ()", append_data)
            await timed("SEARCH UNSEEN", b"SEARCH UNSEEN")
            await timed("SEARCH TEXT", b'SEARCH SUBJECT "topic%d"' % rng.randrange(17))
            await timed("STORE", b"STORE 1 +FLAGS.SILENT (\\Deleted)")
            await timed("EXPUNGE", b"EXPUNGE")
            await timed("NOOP", b"NOOP")
        except (ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc)[:200])
            return done
    return done


async def run(n_clients: int, n_messages: int, duration: float, servers: list[str],
              hash_profile: dict[str, int]) -> Results:
    res = Results()
    case = f"clients={n_clients} msgs={n_messages}"
    ds = make_dataset(n_clients, msgs_per_user=n_messages, hash_profile=hash_profile)
    reasons = await asyncio.to_thread(probe_unavailable, servers, "imap")
    for server in servers:
        if reasons[server]:
            res.skip(BENCH, case, server, reasons[server] or "")
            continue
        async with serve(server, ds, protocols={"imap"}, argon2=hash_profile) as srv:
            port = srv.ports["imap"]

            async def login(i: int, port: int = port) -> Imap:
                c = await Imap.connect(port)
                await c.login(f"{ds.users[i]}@{DOMAIN}", PASSWORD)
                return c

            clients = await asyncio.gather(*(login(i) for i in range(n_clients)))
            lat: dict[str, list[float]] = defaultdict(list)
            errors: list[str] = []
            # warm-up: one full round per client (not in the figures): first-touch costs
            # (Dovecot's index cache, mailstack's cached envelope/bodystructure) are paid
            # here; its duration is reported as "first round"
            t0 = time.perf_counter()
            await asyncio.gather(*(client_loop(c, t0 + 300, random.Random(i),
                                               defaultdict(list), errors, max_rounds=1)
                                   for i, c in enumerate(clients)))
            first_round = time.perf_counter() - t0
            start = time.perf_counter()
            counts = await asyncio.gather(*(
                client_loop(c, start + duration, random.Random(i), lat, errors)
                for i, c in enumerate(clients)))
            elapsed = time.perf_counter() - start
            await asyncio.gather(*(c.logout() for c in clients))
        note = f"{len(errors)} errors, first: {errors[0]}" if errors else ""
        res.add(BENCH, case, "ops/s", server, sum(counts) / elapsed, "op/s", "higher", note)
        res.add(BENCH, case, "first round", server, first_round, "s", "lower",
                "warm-up: every client's first round of the mix, in parallel")
        for name in COMMANDS:
            res.add(BENCH, case, f"p99 {name}", server, pct(lat[name], 99) * 1000, "ms",
                    "lower")
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--messages", type=int, default=200, help="messages per mailbox")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))
    ap.add_argument("--fast-hash", action="store_true")


def run_from_args(a: argparse.Namespace) -> Results:
    return asyncio.run(run(a.clients, a.messages, a.duration, a.servers.split(","),
                           ARGON2_FAST if a.fast_hash else ARGON2_FULL))


def main() -> None:
    standalone_main(__doc__, add_args, run_from_args, "imap-mixed")


if __name__ == "__main__":
    main()

"""Benchmark: the state-checking IMAP stress mix (several clients, ONE mailbox).

``--clients`` clients (default 5) share one user's INBOX (``--messages`` to start, default
200) for ``--duration`` seconds. Each client loops over a session until the deadline:

    LOGIN, SELECT INBOX, UID FETCH 1:* (UID FLAGS), APPEND (one message with the client's
    own keyword), NOOP, UID FETCH of the appended UID, UID STORE +FLAGS (\\Seen) on a
    random message, UID STORE +FLAGS.SILENT (\\Deleted) on the message it appended in its
    previous session, EXPUNGE, FETCH 1:* (UID), NOOP, LOGOUT

and compares what it has been told with what the server answers. The client keeps the
mailbox as it must look to it (sequence number -> UID), applying every untagged EXISTS
and EXPUNGE it receives, and counts an **inconsistency** when:

- ``UID FETCH 1:*`` after SELECT (or the final ``FETCH 1:*``) leaves out a message the
  client was told exists and the server does not report its EXPUNGE by the NOOP before
  LOGOUT (RFC 2180 §4.1 lets a server skip a message another session expunged), or
  UIDVALIDITY changes, or UIDNEXT goes down, or a UID is not below UIDNEXT;
- UIDs are not strictly ascending in sequence order;
- an APPENDUID is not above every UID the client has seen, or its message (which no one
  else deletes) is missing or lacks the client's keyword after the NOOP;
- a STORE reply's FETCH puts a UID at another sequence number than the client's map, or
  lacks the flag just set;
- an EXPUNGE response names a sequence number the client does not have, EXISTS goes down,
  or an EXPUNGE arrives during a (non-UID) FETCH (RFC 3501 §7.4.1);
- after its EXPUNGE, the message the client marked \\Deleted is still in its map (it
  must have been told of its removal, by its own EXPUNGE or another client's);
- any FETCH response gives a sequence number the client does not have, or another UID
  for a sequence number than the client's map (unsolicited flag updates included).

The goal is zero. Reported: commands/s over all clients, p50/p99 per command, sessions
done and the inconsistency count (the first few are quoted in the note). Both servers
get the same Argon2id hash string (``--full-hash``: Dovecot's own parameters; default:
the cheap profile, since every session logs in) and no credential cache.

    python -m bench.imap_stress [--clients 5] [--messages 200] [--duration 20]
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

BENCH = "imap_stress"
# -w2: `serve --workers 2` (the default on 2 cores), beside one process
ALL_SERVERS = ["dovecot", "mailstack-sqlite", "mailstack-sqlite-w2", "mailstack-pg"]
COMMANDS = ["LOGIN", "SELECT", "FETCH ALL", "APPEND", "NOOP", "FETCH UID", "STORE",
            "STORE DELETED", "EXPUNGE", "FETCH CHECK", "LOGOUT"]
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")
_EXPUNGE = re.compile(rb"^\* (\d+) EXPUNGE")
_FETCH = re.compile(rb"^\* (\d+) FETCH \((.*)\)\r?\n?$", re.S)
_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")
MAX_SESSIONS = 100_000


class Checker:
    """One client's picture of the mailbox and the inconsistencies found."""

    def __init__(self, name: str, problems: list[str]) -> None:
        self.name = name
        self.problems = problems
        # sequence number - 1 -> UID; a message announced by EXISTS whose UID is not
        # known yet holds a unique negative placeholder
        self.model: list[int] = []
        self._placeholder = 0
        self.unresolved: set[int] = set()  # placeholders FETCH 1:* did not fill
        self.max_uid = 0
        self.uidvalidity: int | None = None
        self.uidnext = 0

    def bad(self, what: str) -> None:
        self.problems.append(f"{self.name}: {what}")

    def apply(self, untagged: list[bytes], *, expunge_allowed: bool) -> None:
        """Apply EXISTS/EXPUNGE and learn UIDs from FETCH responses, in order."""
        for line in untagged:
            if (m := _EXPUNGE.match(line)) is not None:
                n = int(m.group(1))
                if not expunge_allowed:
                    self.bad(f"EXPUNGE {n} during a command that forbids it")
                if 1 <= n <= len(self.model):
                    del self.model[n - 1]
                else:
                    self.bad(f"EXPUNGE {n} but only {len(self.model)} messages")
            elif (m := _EXISTS.match(line)) is not None:
                n = int(m.group(1))
                if n < len(self.model):
                    self.bad(f"EXISTS went down from {len(self.model)} to {n}")
                    del self.model[n:]
                while len(self.model) < n:
                    self._placeholder -= 1
                    self.model.append(self._placeholder)
            elif (m := _FETCH.match(line)) is not None:
                seq = int(m.group(1))
                u = _UID.search(m.group(2))
                if u is None:
                    continue
                uid = int(u.group(1))
                if not 1 <= seq <= len(self.model):
                    self.bad(f"FETCH for sequence {seq} of {len(self.model)}")
                    continue
                known = self.model[seq - 1]
                if known < 0:
                    self.model[seq - 1] = uid
                elif known != uid:
                    self.bad(f"sequence {seq} is UID {uid} for the server, {known} here")
                self.max_uid = max(self.max_uid, uid)

    def check_all_known(self, announced: int) -> None:
        """After ``FETCH 1:*``: the first ``announced`` messages without a UID. A server
        may return nothing for a message another session expunged meanwhile (RFC 2180
        §4.1); then it must report that EXPUNGE later: ``check_resolved``."""
        self.unresolved |= {u for u in self.model[:announced] if u < 0}

    def check_resolved(self) -> None:
        """After a NOOP: every message FETCH 1:* left out has been expunged since."""
        left = self.unresolved & set(self.model)
        if left:
            seqs = [i + 1 for i, u in enumerate(self.model) if u in left]
            self.bad(f"sequence numbers {seqs[:5]} neither returned by FETCH 1:* nor "
                     "expunged")
        self.unresolved.clear()

    def check_ascending(self) -> None:
        prev = 0
        for uid in self.model:
            if uid > 0:
                if uid <= prev:
                    self.bad(f"UIDs not ascending: {prev} then {uid}")
                prev = uid


async def session(c: Imap, ck: Checker, rng: random.Random, user: str, data: bytes,
                  keyword: bytes, state: dict[str, int],
                  timed: dict[str, list[float]]) -> int:
    """One LOGIN..LOGOUT session; returns the number of commands."""
    done = 0

    async def cmd(name: str, command: bytes, literal: bytes | None = None,
                  expect_ok: bool = True, expunge_allowed: bool = True) -> list[bytes]:
        """Run, time, and apply every untagged EXISTS/EXPUNGE/FETCH to the view (RFC
        3501 §7.4.1: EXPUNGE may come during UID FETCH/STORE, never during FETCH)."""
        nonlocal done
        t0 = time.perf_counter()
        out = await c.cmd(command, literal, expect_ok=expect_ok)
        timed[name].append(time.perf_counter() - t0)
        done += 1
        ck.apply(out, expunge_allowed=expunge_allowed)
        return out

    await cmd("LOGIN", f'LOGIN "{user}" "{PASSWORD}"'.encode())
    ck.model = []
    out = await cmd("SELECT", b"SELECT INBOX")
    exists = next((int(m.group(1)) for x in out if (m := _EXISTS.match(x))), -1)
    validity = next((int(m.group(1)) for x in out if (m := _UIDVALIDITY.search(x))), None)
    uidnext = next((int(m.group(1)) for x in out if (m := _UIDNEXT.search(x))), 0)
    if ck.uidvalidity is not None and validity != ck.uidvalidity:
        ck.bad(f"UIDVALIDITY {ck.uidvalidity} -> {validity}")
    ck.uidvalidity = validity
    if uidnext < ck.uidnext:
        ck.bad(f"UIDNEXT went down {ck.uidnext} -> {uidnext}")
    ck.uidnext = uidnext
    out = await cmd("FETCH ALL", b"UID FETCH 1:* (UID FLAGS)")
    # every message announced before the command must have come back (one announced by
    # an EXISTS in the same response may have arrived after 1:* was evaluated)
    ck.check_all_known(exists)
    for line in out:  # the messages SELECT counted (numbers valid until an EXPUNGE)
        if _EXPUNGE.match(line):
            break
        if (fm := _FETCH.match(line)) and int(fm.group(1)) <= exists and \
                (u := _UID.search(line)) and int(u.group(1)) >= uidnext:
            ck.bad(f"UID {int(u.group(1))} of message {fm.group(1)!r} at or above the "
                   f"UIDNEXT {uidnext} of SELECT")
    ck.check_ascending()
    # APPEND: a UID above all seen, present after NOOP with our keyword
    seen_before = ck.max_uid
    await cmd("APPEND", b"APPEND INBOX (" + keyword + b")", data)
    m = _APPENDUID.search(c.last_tagged)
    uid = int(m.group(2)) if m else 0
    if m is None:
        ck.bad(f"no APPENDUID: {c.last_tagged[:80]!r}")
    elif int(m.group(1)) != ck.uidvalidity:
        ck.bad("APPENDUID with another UIDVALIDITY")
    elif uid <= seen_before:
        ck.bad(f"APPENDUID {uid} not above UID {seen_before} seen before")
    await cmd("NOOP", b"NOOP")
    if uid:
        out = await cmd("FETCH UID", b"UID FETCH %d (UID FLAGS)" % uid)
        mine = [x for x in out if _FETCH.match(x) and (u := _UID.search(x))
                and int(u.group(1)) == uid]
        if not mine:
            ck.bad(f"appended UID {uid} not there after NOOP")
        elif keyword.lower() not in (f.group(1).lower() if (f := _FLAGS.search(mine[0]))
                                     else b""):
            ck.bad(f"appended UID {uid} lacks {keyword!r}: {mine[0][:120]!r}")
    # STORE \Seen on a random known message: the reply agrees with the map
    known = [u for u in ck.model if u > 0]
    if known:
        target = rng.choice(known)
        out = await cmd("STORE", b"UID STORE %d +FLAGS (\\Seen)" % target)
        for x in out:
            fm = _FETCH.match(x)
            if fm and (u := _UID.search(x)) and int(u.group(1)) == target:
                f = _FLAGS.search(x)
                if f is None or b"\\seen" not in f.group(1).lower():
                    ck.bad(f"STORE reply for UID {target} without \\Seen: {x[:120]!r}")
    # delete what we appended last session; after EXPUNGE it must be gone from our map
    previous = state.get("previous", 0)
    if previous:
        await cmd("STORE DELETED", b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % previous)
    await cmd("EXPUNGE", b"EXPUNGE")
    if previous and previous in ck.model:
        ck.bad(f"UID {previous} marked \\Deleted and expunged, still in the view")
    state["previous"] = uid
    # the whole view against the server's
    before = len(ck.model)
    await cmd("FETCH CHECK", b"FETCH 1:* (UID)", expunge_allowed=False)
    ck.check_all_known(before)
    ck.check_ascending()
    await cmd("NOOP", b"NOOP")  # pending EXPUNGEs of others arrive here at the latest
    ck.check_resolved()
    await cmd("LOGOUT", b"LOGOUT", expect_ok=False)
    return done


async def client_loop(port: int, index: int, user: str, deadline: float,
                      timed: dict[str, list[float]], problems: list[str],
                      errors: list[str], max_sessions: int = MAX_SESSIONS) -> tuple[int, int]:
    """Sessions until ``deadline``; returns (commands, sessions)."""
    rng = random.Random(index)
    data = smtp_message("a@remote.test", f"{user}@{DOMAIN}", 2000, rng.randrange(1 << 30))
    keyword = b"$Client%d" % index
    ck = Checker(f"client {index}", problems)
    state: dict[str, int] = {}
    commands = sessions = 0
    while time.perf_counter() < deadline and sessions < max_sessions:
        try:
            c = await Imap.connect(port)
        except (OSError, ProtocolError, TimeoutError) as exc:
            errors.append(f"connect: {exc!r}"[:200])
            return commands, sessions
        try:
            commands += await session(c, ck, rng, f"{user}@{DOMAIN}", data, keyword, state,
                                      timed)
            sessions += 1
        except (ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
            errors.append(repr(exc)[:200])
            return commands, sessions
        finally:
            c.abort()
    return commands, sessions


async def run(n_clients: int, n_messages: int, duration: float, servers: list[str],
              hash_profile: dict[str, int]) -> Results:
    res = Results()
    case = f"clients={n_clients} msgs={n_messages}"
    ds = make_dataset(1, msgs_per_user=n_messages, hash_profile=hash_profile)
    reasons = await asyncio.to_thread(probe_unavailable, servers, "imap")
    for server in servers:
        if reasons[server]:
            res.skip(BENCH, case, server, reasons[server] or "")
            continue
        timed: dict[str, list[float]] = defaultdict(list)
        problems: list[str] = []
        errors: list[str] = []
        async with serve(server, ds, protocols={"imap"}, argon2=hash_profile) as srv:
            port = srv.ports["imap"]
            # warm-up (not counted): one session per client, one after the other
            for i in range(n_clients):
                await client_loop(port, 100 + i, ds.users[0], time.perf_counter() + 60,
                                  defaultdict(list), problems, errors, max_sessions=1)
            start = time.perf_counter()
            done = await asyncio.gather(*(
                client_loop(port, i, ds.users[0], start + duration, timed, problems, errors)
                for i in range(n_clients)))
            elapsed = time.perf_counter() - start
        commands = sum(d[0] for d in done)
        sessions = sum(d[1] for d in done)
        note = f"{len(errors)} errors, first: {errors[0]}" if errors else ""
        res.add(BENCH, case, "ops/s", server, commands / elapsed, "op/s", "higher", note)
        res.add(BENCH, case, "sessions/s", server, sessions / elapsed, "/s", "higher")
        res.add(BENCH, case, "inconsistencies", server, float(len(problems)), "", "lower",
                "; ".join(problems[:3]))
        for name in COMMANDS:
            res.add(BENCH, case, f"p50 {name}", server, pct(timed[name], 50) * 1000, "ms",
                    "lower")
            res.add(BENCH, case, f"p99 {name}", server, pct(timed[name], 99) * 1000, "ms",
                    "lower")
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--messages", type=int, default=200, help="messages in the mailbox")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--servers", default=",".join(ALL_SERVERS))
    ap.add_argument("--full-hash", action="store_true",
                    help="Dovecot's own Argon2id parameters (~0.18 s CPU per LOGIN)")


def run_from_args(a: argparse.Namespace) -> Results:
    return asyncio.run(run(a.clients, a.messages, a.duration, a.servers.split(","),
                           ARGON2_FULL if a.full_hash else ARGON2_FAST))


def main() -> None:
    standalone_main(__doc__, add_args, run_from_args, "imap-stress")


if __name__ == "__main__":
    main()

"""Shared pieces of the benchmark harness: the data set, statistics, result rows, the
table/JSON output, process memory (PSS) and small process helpers.

Invariants:
- Every server talks on 127.0.0.1 only, on a high port picked here.
- The data set (users, password hash, messages) is generated here, deterministically, and
  given to every server of a comparison, so both sides hold the same bytes.
- Every load loop is bounded by a count AND a deadline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
DOMAIN = "example.com"
PASSWORD = "bench-password-1"
REPO = Path(__file__).resolve().parent.parent

# Argon2id parameters used on BOTH sides. "full" = what `doveadm pw -s ARGON2ID` makes on
# Debian 12 (Dovecot 2.3.19 / libsodium: m=65536 KiB, t=3, p=1); libsodium (Dovecot)
# supports p=1 only, so mailstack is configured with p=1 too.
ARGON2_FULL = {"memory_kib": 65536, "time_cost": 3, "parallelism": 1}
# For benchmarks that log in hundreds of connections (idle) the login cost would dominate
# the run time (~0.18 s of CPU per login); they use this cheap profile on both sides
# unless --full-hash is given.
ARGON2_FAST = {"memory_kib": 1024, "time_cost": 1, "parallelism": 1}


def argon2_hash(password: str, profile: dict[str, int]) -> str:
    """One Argon2id hash string, usable verbatim by argon2-cffi (mailstack) and by
    libsodium (Dovecot `{ARGON2ID}` scheme)."""
    from argon2 import PasswordHasher

    ph = PasswordHasher(time_cost=profile["time_cost"], memory_cost=profile["memory_kib"],
                        parallelism=profile["parallelism"])
    return ph.hash(password)


@dataclass(frozen=True)
class DataSet:
    """Users and mailbox contents every server of a comparison is loaded with."""

    users: tuple[str, ...]                     # local parts, domain DOMAIN
    password_hash: str
    messages: dict[str, int] = field(default_factory=dict)  # local part -> count in INBOX
    body_size: int = 2048
    seen_ratio: float = 0.5                    # share of messages flagged \Seen

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DataSet:
        return cls(users=tuple(d["users"]), password_hash=d["password_hash"],
                   messages=dict(d["messages"]), body_size=d["body_size"],
                   seen_ratio=d["seen_ratio"])


def make_dataset(n_users: int, *, msgs_per_user: int = 0, body_size: int = 2048,
                 hash_profile: dict[str, int] | None = None,
                 prefix: str = "user") -> DataSet:
    users = tuple(f"{prefix}{i}" for i in range(n_users))
    return DataSet(users=users, password_hash=argon2_hash(PASSWORD, hash_profile
                                                          or ARGON2_FULL),
                   messages={u: msgs_per_user for u in users if msgs_per_user},
                   body_size=body_size)


def is_seen(i: int, ratio: float) -> bool:
    return (i * 7919 % 1000) < ratio * 1000


def message_parts(user: str, i: int, body_size: int) -> tuple[bytes, bytes]:
    """(header block, body) of message ``i`` of ``user``: headers unique, body shared by
    all messages of that size. Lines are short, CRLF, never start with a dot."""
    head = (f"Return-Path: <sender{i % 13}@remote.test>\r\n"
            f"From: Sender {i % 13} <sender{i % 13}@remote.test>\r\n"
            f"To: {user}@{DOMAIN}\r\n"
            f"Subject: benchmark message {i} topic{i % 17}\r\n"
            f"Date: Mon, 03 Mar 2025 10:{i // 60 % 60:02d}:{i % 60:02d} +0000\r\n"
            f"Message-ID: <{user}.{i}@bench.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    return head, shared_body(body_size)


_BODIES: dict[int, bytes] = {}


def shared_body(size: int) -> bytes:
    if size not in _BODIES:
        line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij.\r\n"
        n = max(1, size // len(line))
        _BODIES[size] = line * n
    return _BODIES[size]


def smtp_message(sender: str, rcpt: str, size: int, seq: int) -> bytes:
    """A message of about ``size`` octets for SMTP load (dot-stuffing never needed)."""
    head = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: load {seq}\r\n"
            f"Message-ID: <load.{seq}.{os.getpid()}@bench.test>\r\n"
            "Date: Mon, 03 Mar 2025 10:00:00 +0000\r\n\r\n").encode()
    return head + shared_body(max(64, size - len(head)))


# --- statistics and results --------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Row:
    bench: str          # "smtp", "imap_mixed", "mailbox_size", "idle", ...
    case: str           # e.g. "c=10 size=4KB mx"
    metric: str         # e.g. "msgs/s"
    server: str         # "mailstack-sqlite", "postfix", ...
    value: float | None
    unit: str = ""
    better: str = "higher"   # "higher" or "lower"
    note: str = ""           # e.g. why it is missing
    peer_case: str = ""      # compare with the peer's row of this case (default: same)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)

    def add(self, *args: Any, **kw: Any) -> None:
        self.rows.append(Row(*args, **kw))

    def skip(self, bench: str, case: str, server: str, reason: str) -> None:
        self.rows.append(Row(bench, case, "-", server, None, note=reason))

    def extend(self, other: Results) -> None:
        self.rows.extend(other.rows)


PEERS = ("postfix", "dovecot", "mbsync")


def ratios(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Each row as a dict, mailstack rows with ratio = mailstack / peer (same bench, case,
    metric) when the peer row exists."""
    rows = list(rows)
    peer: dict[tuple[str, str, str], float] = {}
    for r in rows:
        if r.server in PEERS and r.value:
            peer[(r.bench, r.case, r.metric)] = r.value
    out = []
    for r in rows:
        d = dataclasses.asdict(r)
        p = peer.get((r.bench, r.peer_case or r.case, r.metric))
        d["ratio"] = (r.value / p) if (r.server.startswith("mailstack") and p
                                        and r.value is not None) else None
        out.append(d)
    return out


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v != v:  # nan
        return "nan"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(rows: Iterable[Row]) -> str:
    """One text table: bench | case | metric | server | value | ratio | note."""
    data = ratios(rows)
    head = ["bench", "case", "metric", "server", "value", "unit", "ms/peer", "note"]
    lines = [[d["bench"], d["case"], d["metric"], d["server"], fmt(d["value"]), d["unit"],
              (f"{d['ratio']:.2f}x" if d["ratio"] is not None else ""), d["note"]]
             for d in data]
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    out = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) for x in lines]
    return "\n".join(out)


def write_json(path: str | Path, rows: Iterable[Row], meta: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps({"meta": meta, "rows": ratios(rows)}, indent=1))


def machine_meta() -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
            "python": sys.version.split()[0], "argv": sys.argv,
            "loadavg": os.getloadavg()}


# --- sockets and processes ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None
              ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before port {port} "
                               "was open")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} not open after {timeout}s")


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE (soft, and hard when root) to at least ``want``; returns the
    soft limit now in force. Children started afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    new_hard = hard
    if hard != resource.RLIM_INFINITY and hard < want:
        new_hard = want
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, new_hard))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def pss_kib(pids: Iterable[int]) -> int:
    """Sum of Pss over ``pids`` (KiB), from /proc/PID/smaps_rollup."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: only the process we started."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def python_cmd(script: str) -> list[str]:
    return [sys.executable, str(REPO / "bench" / script)]


def standalone_main(doc: str | None, add_args: Callable[[argparse.ArgumentParser], None],
                    run_from_args: Callable[[argparse.Namespace], Results],
                    name: str) -> None:
    """``python -m bench.NAME``: parse the benchmark's options, run it, print the table
    and write the JSON (default ``bench/results/latest-NAME.json``, not committed)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(ap)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" /
                                          f"latest-{name}.json"))
    a = ap.parse_args()
    res = run_from_args(a)
    print(table(res.rows))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    write_json(a.json, res.rows, machine_meta())

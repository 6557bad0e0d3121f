"""Benchmark 6: moving a mailbox in from another provider.

A private Dovecot holds ONE account with N messages (default 10,000, half \\Seen). Two
ways copy it into a fresh mailstack server:

- ``mailstack-import``: mailstack's own importer (a job recorded in the server's store,
  run by the server); time = the job's started -> finished, RSS = the server's peak
  (VmHWM) and its RSS before the job.
- ``mbsync``: Debian's isync as an imapsync-style copier, Dovecot -> mailstack over
  IMAP (APPEND), ``Sync Pull`` + ``Create Near``; time = the run of ``mbsync -a``, RSS =
  mbsync's peak (the server it feeds is the same mailstack).

Both read the same Dovecot over plaintext loopback IMAP and write into a mailstack on
SQLite. Goal: the importer >= 1.0x mbsync's messages/s, with flat memory.

    python -m bench.import_mail [--messages 10000] [--body-size 2048]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .common import (
    ARGON2_FAST,
    DOMAIN,
    PASSWORD,
    DataSet,
    Results,
    make_dataset,
    standalone_main,
)
from .peers import Dovecot, dovecot_missing
from .servers import serve

BENCH = "import"
TARGET = "mover"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _server_pid(pids: list[int]) -> int:
    return max(pids, key=lambda p: _status_kib(p, "VmRSS"))


async def _importer(source: DataSet, dovecot_port: int, n: int, res: Results) -> None:
    from mailstack.importer import secret
    from mailstack.store import NewImportJob, Store

    target = DataSet(users=(TARGET,), password_hash=source.password_hash)
    async with serve("mailstack-sqlite", target, protocols={"imap"},
                     argon2=ARGON2_FAST) as srv:
        data_dir = Path(srv.extra["log"]).parent / "data"
        pid = _server_pid(srv.pids())
        rss_before = _status_kib(pid, "VmRSS")
        store = Store(f"sqlite+aiosqlite:///{data_dir / 'mailstack.db'}", data_dir / "blobs")
        await store.open(listen=False)
        try:
            addr = await store.get_address(f"{TARGET}@{DOMAIN}")
            assert addr is not None
            (job_id,) = await store.create_import_jobs([NewImportJob(
                addr.id, "127.0.0.1", dovecot_port, "none", f"{source.users[0]}@{DOMAIN}",
                secret.seal(data_dir, PASSWORD))])
            deadline = time.monotonic() + 600 + n / 20
            while time.monotonic() < deadline:
                job = await store.get_import_job(job_id)
                assert job is not None
                if job.state not in ("queued", "running"):
                    break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError("import did not finish in time")
        finally:
            await store.close()
        peak = _status_kib(pid, "VmHWM")
    if job.state != "done" or job.copied != n:
        raise RuntimeError(f"import ended {job.state}, {job.copied}/{n}: {job.last_error}")
    assert job.started_at and job.finished_at
    seconds = job.finished_at - job.started_at
    case = f"{n} msgs"
    res.add(BENCH, case, "msgs/s", "mailstack-import", n / seconds, "msgs/s", "higher",
            peer_case=case)
    res.add(BENCH, case, "seconds", "mailstack-import", seconds, "s", "lower")
    res.add(BENCH, case, "server RSS before", "mailstack-import", rss_before / 1024, "MiB", "lower")
    res.add(BENCH, case, "server peak RSS", "mailstack-import", peak / 1024, "MiB", "lower")


async def _mbsync(source: DataSet, dovecot_port: int, n: int, res: Results) -> None:
    target = DataSet(users=(TARGET,), password_hash=source.password_hash)
    async with serve("mailstack-sqlite", target, protocols={"imap"},
                     argon2=ARGON2_FAST) as srv:
        work = Path(tempfile.mkdtemp(prefix="bench-mbsync-"))
        try:
            (work / "state").mkdir()
            rc = work / "mbsyncrc"
            rc.write_text(f"""\
IMAPAccount src
Host 127.0.0.1
Port {dovecot_port}
User {source.users[0]}@{DOMAIN}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore src
Account src

IMAPAccount dst
Host 127.0.0.1
Port {srv.ports['imap']}
User {TARGET}@{DOMAIN}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore dst
Account dst

Channel copy
Far :src:
Near :dst:
Patterns INBOX
Create Near
Sync Pull
SyncState {work}/state/
""")
            t0 = time.perf_counter()
            proc = await asyncio.to_thread(
                subprocess.run, ["/usr/bin/time", "-f", "%M", "mbsync", "-q", "-c", str(rc),
                                 "-a"], capture_output=True, text=True, timeout=600 + n / 20)
            seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"mbsync failed: {proc.stderr[-2000:]}")
            peak_kib = int(proc.stderr.strip().splitlines()[-1])
        finally:
            shutil.rmtree(work, ignore_errors=True)
    case = f"{n} msgs"
    res.add(BENCH, case, "msgs/s", "mbsync", n / seconds, "msgs/s", "higher")
    res.add(BENCH, case, "seconds", "mbsync", seconds, "s", "lower")
    res.add(BENCH, case, "client peak RSS", "mbsync", peak_kib / 1024, "MiB", "lower")


async def run(n: int, body_size: int) -> Results:
    res = Results()
    reason = dovecot_missing() or (None if shutil.which("mbsync") else "mbsync missing")
    if reason:
        res.skip(BENCH, f"{n} msgs", "mailstack-import", reason)
        return res
    source = make_dataset(1, msgs_per_user=n, hash_profile=ARGON2_FAST, body_size=body_size,
                          prefix="old")
    with Dovecot(source) as dv:
        await _importer(source, dv.ports["imap"], n, res)
        await _mbsync(source, dv.ports["imap"], n, res)
    return res


def add_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--body-size", type=int, default=2048)


def run_from_args(a: argparse.Namespace) -> Results:
    return asyncio.run(run(a.messages, a.body_size))


def main() -> None:
    standalone_main(__doc__, add_args, run_from_args, "import")


if __name__ == "__main__":
    main()

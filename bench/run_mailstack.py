"""Run mailstack for a benchmark, in its own process: ``python bench/run_mailstack.py
SPEC.json``. The spec (written by bench/servers.py) gives the data dir, database URL,
ports, Argon2 parameters and the data set; this script starts ``App(settings)`` with
plaintext listeners on loopback, creates the users and mailbox contents through the
Store API (messages share one fsynced blob per size and differ in their per-copy header
prefix, so a 10k mailbox loads in seconds; like SMTP delivery, the loader stores each
message's sort/thread keys with it when the commit under test does so), writes
``ready_file`` (JSON: pid, ports) and runs until SIGTERM. ``"workers": N`` (N > 1) in
the spec: the data is created first, then ``serve --workers N``'s supervisor
(mailstack/workers.py) forks N workers on the same ports, and the ready file names the
supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DOMAIN, DataSet, is_seen, message_parts, raise_nofile
from mailstack import config as mconfig
from mailstack.app import App
from mailstack.config import settings_from_dict
from mailstack.store import DeliveryTarget

try:  # a commit that stores sort/thread keys at delivery: the loader stores them too
    from mailstack.headerkeys import header_keys
except ImportError:  # an older commit (bench.compare): keys are computed on first use
    header_keys = None

BIG = 10**9


def _has(cls: type, name: str) -> bool:
    return any(f.name == name for f in dataclasses.fields(cls))


def build_settings(spec: dict[str, Any]) -> Any:
    ports = spec["ports"]
    listeners: dict[str, Any] = {}
    for name in ("smtp", "submissions", "submission", "imaps", "imap", "pop3s", "pop3",
                 "https", "http", "metrics"):
        if name in ports:
            listeners[name] = {"address": "127.0.0.1", "port": ports[name], "tls": "none"}
        elif _has(mconfig.ListenersSettings, name):  # older commits (bench.compare) lack some
            listeners[name] = {"enabled": False}
    a = spec["argon2"]
    plans = {p: {"daily_recipients": BIG} for p in ("free", "starter", "standard")}
    data: dict[str, Any] = {
        "server": {"hostname": "mail.bench.test", "data_dir": spec["data_dir"],
                   "database_url": spec["db_url"],
                   "allow_plaintext_auth_on_loopback": True,
                   "shutdown_grace_seconds": 0.5},
        "listeners": listeners,
        "plans": plans,
        "auth": {"argon2_time_cost": a["time_cost"], "argon2_memory_kib": a["memory_kib"],
                 "argon2_parallelism": a["parallelism"]},
        "smtp": {"max_connections_per_ip": 100000},
        "pop3": {"max_connections_per_ip": 100000},
    }
    if _has(mconfig.Settings, "outbound"):  # no delivery to the internet, no DNS
        data["outbound"] = {"enabled": False}
    if _has(mconfig.Settings, "sender_auth"):
        # Inbound SPF/DKIM/DMARC checks on the MX path: off unless the spec points them
        # at a loopback resolver (spec["dns_resolver"], e.g. bench/smtp_throughput.py
        # --auth-dns), so a bench never sends DNS off loopback.
        resolver = spec.get("dns_resolver", "")
        data["sender_auth"] = {"enabled": bool(resolver)}
        if resolver:
            data["outbound_tls"] = {"dns_resolver": resolver}
    # e.g. {"auth": {...}}; a setting this version of mailstack does not have is left
    # out, so bench.compare can drive older commits with the current harness
    sections = {f.name: f.type for f in dataclasses.fields(mconfig.Settings)}
    for section, values in spec.get("overrides", {}).items():
        cls = getattr(mconfig, str(sections.get(section, "")), None)
        known = {k: v for k, v in values.items() if cls is not None and _has(cls, k)}
        if known:
            data[section] = {**data.get(section, {}), **known}
    # settings other engineers may add for their protocol: lift per-IP caps if present
    if _has(mconfig.ImapSettings, "max_connections_per_ip"):
        data["imap"] = {"max_connections_per_ip": 100000}
    return settings_from_dict(data)


async def populate(store: Any, ds: DataSet) -> None:
    if await store.get_domain(DOMAIN) is None:
        await store.add_domain(DOMAIN, "standard")
    body_blobs: dict[int, str] = {}
    for user in ds.users:
        addr = await store.add_address(user, DOMAIN, password_hash=ds.password_hash)
        count = ds.messages.get(user, 0)
        if not count:
            continue
        inbox = await store.get_folder(addr.id, "INBOX")
        assert inbox is not None
        if ds.body_size not in body_blobs:
            _h, body = message_parts(user, 0, ds.body_size)
            body_blobs[ds.body_size] = await store.put_blob(body)
        blob = body_blobs[ds.body_size]
        body_len = len(message_parts(user, 0, ds.body_size)[1])
        for start in range(0, count, 1000):
            targets = []
            for i in range(start, min(count, start + 1000)):
                head, _b = message_parts(user, i, ds.body_size)
                flags = frozenset({"\\Seen"}) if is_seen(i, ds.seen_ratio) else frozenset()
                extra = {"keys": header_keys(head)} if header_keys is not None else {}
                targets.append(DeliveryTarget(inbox.id, head, flags, **extra))
            await store.deliver(blob, body_len, targets)


def write_ready(path: str, info: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(info))
    os.replace(tmp, path)


def install_sql_trace(app: App, out_path: str) -> Any:
    """BENCH_SQL_TRACE=FILE: time every SQL statement (cursor execute, commit) in this
    process; ``dump()`` writes the totals per statement, largest first."""
    import time
    from collections import defaultdict

    from sqlalchemy import event

    assert app.store is not None
    engine = app.store.engine.sync_engine
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info.setdefault("t0", []).append(time.perf_counter())

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        dt = time.perf_counter() - conn.info["t0"].pop()
        key = " ".join(statement.split())[:160]
        totals[key][0] += 1
        totals[key][1] += dt

    @event.listens_for(engine, "commit")
    def _commit(conn: Any) -> None:
        conn.info["c0"] = time.perf_counter()

    def dump() -> None:
        rows = sorted(totals.items(), key=lambda kv: -kv[1][1])
        with open(out_path, "w") as f:
            for key, (n, t) in rows:
                f.write(f"{t:9.3f}s {int(n):7d}x {t / max(n, 1) * 1000:8.2f}ms  {key}\n")

    return dump


def install_gc_trace(out_path: str) -> Any:
    """BENCH_GC_TRACE=FILE: count the cyclic GC's collections per generation and the
    time they took (the process's pauses); ``dump()`` writes them."""
    import gc
    import time

    stats = {g: [0, 0.0, 0.0] for g in range(3)}  # count, total s, longest s
    t0 = [0.0]

    def cb(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            t0[0] = time.perf_counter()
            return
        dt = time.perf_counter() - t0[0]
        st = stats[info["generation"]]
        st[0] += 1
        st[1] += dt
        st[2] = max(st[2], dt)

    gc.callbacks.append(cb)

    def dump() -> None:
        with open(out_path, "w") as f:
            for g, (n, total, longest) in stats.items():
                f.write(f"gen{g} {int(n)} collections {total * 1000:.1f} ms total "
                        f"{longest * 1000:.1f} ms longest\n")

    return dump


async def main(spec: dict[str, Any]) -> None:
    raise_nofile(int(spec.get("nofile", 4096)))
    logging.basicConfig(level=logging.WARNING)
    app = App(build_settings(spec))
    await app.start()
    try:
        assert app.store is not None
        await populate(app.store, DataSet.from_json(spec["dataset"]))
        dump = None
        if os.environ.get("BENCH_SQL_TRACE"):
            dump = install_sql_trace(app, os.environ["BENCH_SQL_TRACE"])
        gc_dump = None
        if os.environ.get("BENCH_GC_TRACE"):
            gc_dump = install_gc_trace(os.environ["BENCH_GC_TRACE"])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.to_thread(write_ready, spec["ready_file"],
                                {"pid": os.getpid(), "ports": app.ports})
        await stop.wait()
        if dump is not None:
            dump()
        if gc_dump is not None:
            gc_dump()
    finally:
        with contextlib.suppress(Exception):
            await app.stop(grace=0.5)


def main_workers(spec: dict[str, Any], workers: int) -> None:
    """The data first (one process), then the supervisor and its workers."""
    from mailstack.store import Store
    from mailstack.workers import Supervisor, WorkerInfo, bind_listeners

    raise_nofile(int(spec.get("nofile", 4096)))
    logging.basicConfig(level=logging.WARNING)
    settings = build_settings(spec)

    async def fill() -> None:
        store = await Store.open_from_settings(settings, listen=False)
        try:
            await populate(store, DataSet.from_json(spec["dataset"]))
        finally:
            await store.close()

    asyncio.run(fill())

    def run_worker(info: WorkerInfo) -> int:
        asyncio.run(App(settings, worker=info).run_until_signal())
        return 0

    def started(sup: Supervisor) -> None:
        write_ready(spec["ready_file"], {"pid": os.getpid(), "ports": sup.ports,
                                         "workers": sup.pids()})

    Supervisor(settings, workers, run_worker, bind_listeners(settings, workers)).run(started)


if __name__ == "__main__":
    SPEC = json.loads(Path(sys.argv[1]).read_text())
    if int(SPEC.get("workers", 1)) > 1:
        main_workers(SPEC, int(SPEC["workers"]))
    else:
        asyncio.run(main(SPEC))

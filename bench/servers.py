"""Start any server of a comparison by name, as an async context manager that always
stops what it started:

    async with serve("mailstack-sqlite", dataset, protocols={"imap"}) as srv:
        srv.ports["imap"], srv.pids()

Names: ``mailstack-sqlite`` (embedded default), ``mailstack-pg`` (PostgreSQL at
127.0.0.1, a fresh schema ``bench_<random>`` created before and dropped after), each
with an optional ``-wN`` suffix (``mailstack-sqlite-w2``: ``serve --workers 2``'s
supervisor and workers; without it, one process), ``postfix``, ``dovecot``,
``aiosmtpd-sink``. ``unavailable(name, protocol)`` says why a
server cannot run here (peer not installed, our front-end not written yet), or None.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import ARGON2_FULL, DataSet, descendants, free_port, python_cmd, stop_process
from .peers import Dovecot, Postfix, dovecot_missing, postfix_missing

PG_DSN = os.environ.get("MAILSTACK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MAILSTACK = ("mailstack-sqlite", "mailstack-pg")
FRONTEND_MODULE = {"smtp": "mailstack.smtp", "submission": "mailstack.smtp",
                   "imap": "mailstack.imap", "pop3": "mailstack.pop3"}
_pg_reason: dict[str, str | None] = {}


def mailstack_variant(name: str) -> tuple[str, int] | None:
    """``mailstack-pg-w2`` -> ("mailstack-pg", 2); ``mailstack-sqlite`` -> (.., 1);
    None for a server that is not mailstack."""
    base, _, suffix = name.rpartition("-w")
    if base in MAILSTACK and suffix.isdigit() and int(suffix) >= 1:
        return base, int(suffix)
    return (name, 1) if name in MAILSTACK else None


@dataclass
class Running:
    name: str
    ports: dict[str, int]
    pids: Callable[[], list[int]]
    extra: dict[str, Any] = field(default_factory=dict)


def _frontend_missing(protocol: str) -> str | None:
    module = FRONTEND_MODULE[protocol]
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # a half-written module must not stop the other rows
        return f"{module} does not import yet: {exc!r}"
    if getattr(mod, "build", None) is None:
        return f"not available yet ({module} has no build())"
    return None


def _pg_missing() -> str | None:
    if "r" not in _pg_reason:
        async def probe() -> None:
            import asyncpg
            conn = await asyncpg.connect(PG_DSN, timeout=5)
            await conn.close()
        try:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(1) as ex:  # callable from inside a running loop
                ex.submit(asyncio.run, probe()).result(timeout=15)
            _pg_reason["r"] = None
        except Exception as exc:
            _pg_reason["r"] = f"PostgreSQL at {PG_DSN} not reachable: {exc!r}"
    return _pg_reason["r"]


def unavailable(name: str, protocol: str) -> str | None:
    """Why ``name`` cannot serve ``protocol`` here, or None."""
    variant = mailstack_variant(name)
    if variant is not None:
        reason = _frontend_missing(protocol)
        if reason is None and variant[0] == "mailstack-pg":
            reason = _pg_missing()
        return reason
    if name == "postfix":
        return postfix_missing()
    if name == "dovecot":
        return dovecot_missing()
    if name == "aiosmtpd-sink":
        try:
            importlib.import_module("aiosmtpd.smtp")
        except ImportError:
            return "aiosmtpd not installed"
        return None
    return f"unknown server {name}"


def probe_unavailable(names: list[str], protocol: str) -> dict[str, str | None]:
    """``unavailable`` for several servers; PG is probed once, outside any loop."""
    return {n: unavailable(n, protocol) for n in names}


@contextlib.asynccontextmanager
async def serve(name: str, dataset: DataSet, *, protocols: set[str],
                argon2: dict[str, int] | None = None, max_conns: int = 1200,
                workdir: Path | None = None, auth_cache: bool = False,
                dns_resolver: str = "") -> AsyncIterator[Running]:
    """Start ``name`` with ``dataset``. ``auth_cache``: both kinds of server remember
    verified credentials (Dovecot ``auth_cache_size``/``ttl``; mailstack
    ``auth.credential_cache_seconds``) for an hour, or neither does. ``dns_resolver``
    (a loopback ``host:port``, bench/dnsstub.py): mailstack's inbound sender checks ask
    it; without it they are off (bench/run_mailstack.py)."""
    base = Path(tempfile.mkdtemp(prefix=f"bench-{name}-", dir=workdir))
    os.chmod(base, 0o755)
    try:
        if mailstack_variant(name) is not None:
            async with _mailstack(name, dataset, protocols, argon2 or ARGON2_FULL,
                                  max_conns, base, auth_cache, dns_resolver) as r:
                yield r
        elif name == "postfix":
            pf = Postfix(dataset, base / "postfix")
            await asyncio.to_thread(pf.start)
            try:
                yield Running(name, pf.ports, pf.pids, {"postfix": pf})
            finally:
                await asyncio.to_thread(pf.stop)
        elif name == "dovecot":
            dv = Dovecot(dataset, base / "dovecot", max_conns=max_conns,
                         auth_cache=auth_cache)
            await asyncio.to_thread(dv.start)
            try:
                yield Running(name, dv.ports, dv.pids, {"dovecot": dv})
            finally:
                await asyncio.to_thread(dv.stop)
        elif name == "aiosmtpd-sink":
            port = free_port()
            proc = await asyncio.to_thread(_start_sink, port)
            try:
                yield Running(name, {"smtp": port}, lambda: descendants(proc.pid))
            finally:
                await asyncio.to_thread(stop_process, proc)
        else:
            raise ValueError(name)
    finally:
        if os.environ.get("BENCH_KEEP"):  # debugging: keep logs and data
            print(f"kept {base}")
        else:
            await asyncio.to_thread(shutil.rmtree, base, True)


def _start_sink(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*python_cmd("sink.py"), "--port", str(port)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if b"ready" not in proc.stdout.readline():  # the sink prints it once listening
        stop_process(proc)
        raise RuntimeError("aiosmtpd sink did not start")
    return proc


def _start_runner(base: Path, spec: dict[str, Any], timeout: float = 120.0
                  ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start bench/run_mailstack.py and wait (bounded) for its ready file."""
    spec_file = base / "spec.json"
    spec_file.write_text(json.dumps(spec))
    with open(base / "mailstack.log", "wb") as log:
        proc = subprocess.Popen([*python_cmd("run_mailstack.py"), str(spec_file)],
                                stdout=log, stderr=subprocess.STDOUT)
    ready = Path(spec["ready_file"])
    deadline = time.monotonic() + timeout
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if not ready.exists():
        stop_process(proc)
        tail = (base / "mailstack.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"mailstack did not start (exit {proc.poll()}): {tail}")
    return proc, json.loads(ready.read_text())


@contextlib.asynccontextmanager
async def _mailstack(name: str, dataset: DataSet, protocols: set[str],
                     argon2: dict[str, int], max_conns: int, base: Path,
                     auth_cache: bool = False, dns_resolver: str = ""
                     ) -> AsyncIterator[Running]:
    schema = None
    backend, workers = mailstack_variant(name) or (name, 1)
    if backend == "mailstack-pg":
        import asyncpg
        schema = "bench_" + uuid.uuid4().hex[:12]
        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.close()
        db_url = PG_DSN.replace("postgresql://", "postgresql+asyncpg://", 1) + \
            f"?schema={schema}"
    else:
        db_url = ""  # embedded default: SQLite in data_dir
    ports: dict[str, int] = {}
    if "smtp" in protocols:
        ports["smtp"] = free_port()
        ports["submission"] = free_port()
    for p in ("imap", "pop3"):
        if p in protocols:
            ports[p] = free_port()
    spec: dict[str, Any] = {"data_dir": str(base / "data"), "db_url": db_url, "ports": ports,
                            "argon2": argon2, "dataset": dataset.to_json(),
                            "ready_file": str(base / "ready.json"),
                            "nofile": max_conns * 2 + 1024, "workers": workers,
                            "overrides": {"auth": {"credential_cache_seconds":
                                                   3600.0 if auth_cache else 0.0}},
                            "dns_resolver": dns_resolver}
    try:
        # filling the store takes time: 120 s plus 8 s per 1,000 messages (100k: ~15 min;
        # a loaded machine needed more than 5 min for 100k)
        total = sum(dataset.messages.values())
        proc, info = await asyncio.to_thread(_start_runner, base, spec,
                                             120.0 + total / 125)
        try:
            yield Running(name, {**ports, **info["ports"]}, lambda: descendants(proc.pid),
                          {"log": base / "mailstack.log"})
        finally:
            await asyncio.to_thread(stop_process, proc, 20)
    finally:
        if schema is not None:
            import asyncpg
            conn = await asyncpg.connect(PG_DSN)
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await conn.close()

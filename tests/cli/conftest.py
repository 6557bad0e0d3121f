"""Fixtures for the command-line tests: a temp config file and a runner that calls
``python -m mailstack`` in a subprocess (the real entry point, real exit codes)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailstack.store import Store

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, data_dir: Path, db_url: str = "", extra: str = "") -> Path:
    """A config with a private data dir, fast Argon2 and no outbound runner (tests
    only)."""
    path.write_text(
        "[server]\n"
        f"data_dir = {toml_str(str(data_dir))}\n"
        f"database_url = {toml_str(db_url)}\n"
        "shutdown_grace_seconds = 0.5\n"
        "[auth]\n"
        "argon2_time_cost = 1\n"
        "argon2_memory_kib = 64\n"
        "argon2_parallelism = 1\n"
        # a server started from this file never asks DNS outside loopback: no delivery
        # to the internet (tests of it write their own config)
        "[outbound]\nenabled = false\n"
        # no sender authentication DNS from subprocess servers (tests/smtp turn it on
        # against the loopback DNS rig)
        "[sender_auth]\nenabled = false\n" + extra, encoding="utf-8")
    return path


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class Cli:
    """``cli("domain", "add", "x.org")`` runs ``mailstack --config FILE domain add x.org``
    with stdin from ``input`` (or /dev/null: never a terminal)."""

    config: Path
    cwd: Path
    db_url: str
    data_dir: Path

    def __call__(self, *args: str, input: str | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "mailstack", "--config", str(self.config), *args],
            input=input, stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, cwd=self.cwd, env=cli_env(), timeout=60)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, input: str | None = None) -> Result:
        r = self(*args, input=input)
        assert r.code == 0, f"mailstack {' '.join(args)} failed ({r.code}): {r.err}"
        return r

    def query(self, fn: Callable[[Store], Coroutine[Any, Any, T]]) -> T:
        """Look at the stored state directly, through the store."""
        async def go() -> T:
            store = Store(self.database_url, self.data_dir / "blobs")
            await store.open()
            try:
                return await fn(store)
            finally:
                await store.close()
        return asyncio.run(go())

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite+aiosqlite:///{self.data_dir / 'mailstack.db'}"


def make_cli(tmp_path: Path, db_url: str = "", extra: str = "") -> Cli:
    data_dir = tmp_path / "data"
    config = write_config(tmp_path / "test.toml", data_dir, db_url, extra)
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    return Cli(config, work, db_url, data_dir)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """SQLite only (the embedded default), for flows whose backend does not matter."""
    return make_cli(tmp_path)


@pytest.fixture
def cli_both(tmp_path: Path, db_url: str) -> Cli:
    """Runs on SQLite and on PostgreSQL (per-test schema from the ``db_url`` fixture)."""
    if db_url.startswith("sqlite"):
        return make_cli(tmp_path)
    return make_cli(tmp_path, db_url)

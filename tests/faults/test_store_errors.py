"""How driver and disk failures become the store's refusals (no server needed)."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from mailstack.cli.main import main as cli_main
from mailstack.smtp import replies
from mailstack.store import InsufficientStorage, Store, Unavailable
from mailstack.store.base import unavailable
from tests.cli.conftest import write_config


def test_driver_errors_map_to_unavailable() -> None:
    refused = unavailable(ConnectionRefusedError(111, "Connect call failed"))
    assert type(refused) is Unavailable and "ConnectionRefusedError" in str(refused)
    assert "\n" not in str(unavailable(OSError("two\nlines")))
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # type: ignore[attr-defined]
    assert isinstance(unavailable(OperationalError("INSERT", {}, full)), InsufficientStorage)
    assert isinstance(unavailable(OSError(errno.ENOSPC, "No space left on device")),
                      InsufficientStorage)
    assert replies.store_failure(InsufficientStorage("x")).startswith("452 4.3.1 ")
    assert replies.store_failure(Unavailable("x")).startswith("451 4.3.0 ")


async def test_unreachable_database_is_unavailable(tmp_path: Path) -> None:
    """A store whose PostgreSQL refuses connections answers Unavailable on every call
    (the pool's connect error is a plain ConnectionRefusedError)."""
    store = Store("postgresql+asyncpg://postgres@127.0.0.1:9/none", tmp_path / "blobs")
    try:
        with pytest.raises(Unavailable):
            await store.get_address("anna@example.com")
        with pytest.raises(Unavailable):
            await store.log_activity("login_ok", address="anna@example.com")
    finally:
        await store.close()


def test_cli_auth_unlock_refuses_garbage(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "c.toml", tmp_path / "data")
    assert cli_main(["--config", str(config), "auth", "unlock", "not a network"]) == 1
    assert "neither an address" in capsys.readouterr().err
    assert cli_main(["--config", str(config), "auth", "unlock", "198.51.100.7"]) == 0
    assert "198.51.100.0/24: nothing was locked" in capsys.readouterr().out
    assert cli_main(["--config", str(config), "auth", "list"]) == 0


async def test_prune_login_throttle(store: Store) -> None:
    await store.record_login_failure("198.51.100.0/24", "a@example.com", 100.0, 900)
    await store.record_login_failure("203.0.113.0/24", "b@example.com", 2000.0, 900)
    await store.lock_logins("192.0.2.0/24", "c@example.com", 5000.0, 100.0)
    assert await store.prune_login_throttle(older_than=1100.0, now=2100.0) == 1
    left = {(n, a) for n, a, *_ in await store.list_login_throttle()}
    assert left == {("203.0.113.0/24", "b@example.com"), ("192.0.2.0/24", "c@example.com")}

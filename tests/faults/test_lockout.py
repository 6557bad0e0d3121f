"""Collateral lockout (docs/behaviour.md §2): wrong passwords for one address from one
network refuse only that pair; a colleague behind the same NAT still logs in; the
throttle state survives a restart; refused attempts are aggregated in the activity log
(one row per network, address and minute); ``mailstack auth unlock`` lifts a lock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailstack.app import App
from mailstack.cli.main import main as cli_main
from tests.cli.conftest import write_config
from tests.conftest import add_mailbox
from tests.faults.conftest import Lines

ANNA, BOB, PW = "anna@example.com", "bob@example.com", "secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # the start of a minute

    def __call__(self) -> float:
        return self.now


async def _login(app: App, user: str, password: str,
                 local_ip: str = "127.0.0.1") -> bytes:
    c = await Lines.connect(app.ports["imap"], local_addr=(local_ip, 0))
    assert (await c.line()).startswith(b"* OK")
    out = await c.imap("L", f'LOGIN {user} "{password}"')
    await c.close()
    return out[-1]


async def test_wrong_passwords_lock_only_the_pair(app_factory: Callable[..., Any],
                                                  tmp_path: Path, db_url: str) -> None:
    clock = Clock()
    auth = {"lock_after_failures": 3, "slow_after_failures": 2,
            "network_lock_after_failures": 40, "network_lock_min_addresses": 5}
    app: App = await app_factory(clock=clock, auth=auth)
    assert app.store is not None
    await add_mailbox(app, ANNA, PW)
    await add_mailbox(app, BOB, PW)
    for _ in range(3):
        assert (await _login(app, ANNA, "wrong")).startswith(b"L NO [AUTHENTICATIONFAILED]")
    # the pair is refused, even with the right password
    for _ in range(5):
        assert (await _login(app, ANNA, PW)).startswith(b"L NO [UNAVAILABLE]")
    # a colleague behind the same NAT (same /24) is served
    assert (await _login(app, BOB, PW)).startswith(b"L OK")
    assert (await _login(app, BOB, PW, "127.0.0.9")).startswith(b"L OK")
    # the five refusals are one activity row with a count
    refused = [e for e in await app.store.list_activity(ANNA) if e.event == "login_refused"]
    assert [e.count for e in refused] == [5]
    clock.now += 60  # the next minute gets its own row
    assert (await _login(app, ANNA, PW)).startswith(b"L NO [UNAVAILABLE]")
    refused = [e for e in await app.store.list_activity(ANNA) if e.event == "login_refused"]
    assert sorted(e.count for e in refused) == [1, 5]

    # a restart lifts nothing: the state is in the store
    await app.stop(grace=0)
    await app.start()
    assert (await _login(app, ANNA, PW)).startswith(b"L NO [UNAVAILABLE]")
    assert (await _login(app, BOB, PW)).startswith(b"L OK")

    # support lifts the lock
    config = write_config(tmp_path / "cli.toml", tmp_path / "data",
                          db_url)
    code = await asyncio.to_thread(cli_main, ["--config", str(config), "auth", "unlock",
                                              ANNA])
    assert code == 0
    assert (await _login(app, ANNA, PW)).startswith(b"L OK")
    assert await app.store.list_login_throttle() == []


async def test_spray_refuses_the_network_not_others(app_factory: Callable[..., Any],
                                                    tmp_path: Path, db_url: str) -> None:
    """Failures spread over many addresses past the network threshold refuse the whole
    network (a spray); other networks are served; unlock NETWORK lifts it."""
    clock = Clock()
    auth = {"lock_after_failures": 10, "slow_after_failures": 20,
            "network_lock_after_failures": 8, "network_lock_min_addresses": 4}
    app: App = await app_factory(clock=clock, auth=auth)
    await add_mailbox(app, ANNA, PW)
    for i in range(8):
        reply = await _login(app, f"user{i % 4}@example.com", "guess", "127.0.0.2")
        assert reply.startswith(b"L NO [AUTHENTICATIONFAILED]"), reply
    assert (await _login(app, ANNA, PW, "127.0.0.2")).startswith(b"L NO [UNAVAILABLE]")
    assert (await _login(app, ANNA, PW, "127.0.1.1")).startswith(b"L OK")  # another /24
    config = write_config(tmp_path / "cli.toml", tmp_path / "data",
                          db_url)
    code = await asyncio.to_thread(cli_main, ["--config", str(config), "auth", "unlock",
                                              "127.0.0.0/24"])
    assert code == 0
    assert (await _login(app, ANNA, PW, "127.0.0.2")).startswith(b"L OK")

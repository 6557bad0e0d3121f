"""Support commands (docs/behaviour.md §2, §10) through the real entry point (a
subprocess per command), on SQLite and PostgreSQL: ``user passwd``, ``user remove``,
``address app-only``, ``domain set-plan``, ``plan list``. Every refusal exits non-zero,
names the problem and changes nothing. Set-up goes through the store directly (fewer
processes on a loaded machine); what is checked goes through the command."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import argon2
from sqlalchemy import select

from mailstack.policy.passwords import Passwords
from mailstack.store import Store
from mailstack.store import schema as t

from .conftest import Cli, make_cli

PW = Passwords(1, 64, 1)


def verifies(stored: str, password: str) -> bool:
    try:
        return bool(argon2.PasswordHasher().verify(stored, password))
    except argon2.exceptions.VerifyMismatchError:
        return False


def user_row(cli: Cli, login: str) -> tuple[str, int] | None:
    """(password hash, credential epoch) of the user, or None."""
    async def go(store: Store) -> tuple[str, int] | None:
        async with store._read() as conn:
            row = (await conn.execute(select(t.users.c.password_hash,
                                             t.users.c.credential_epoch).where(
                t.users.c.login == login))).first()
        return (row.password_hash, row.credential_epoch) if row else None
    return cli.query(go)


def users(cli: Cli) -> list[tuple[str, list[tuple[str, frozenset[str]]]]]:
    return cli.query(lambda s: s.list_users())


def address(cli: Cli, email: str) -> Any:
    return cli.query(lambda s: s.get_address(email))


def setup(cli: Cli, *, domains: dict[str, str], addresses: Sequence[str] = (),
          user_logins: Sequence[str] = (),
          grants: Sequence[tuple[str, str, list[str]]] = ()) -> None:
    async def go(store: Store) -> None:
        for name, plan in domains.items():
            await store.add_domain(name, plan)
        for email in addresses:
            local, _, domain = email.partition("@")
            await store.add_address(local, domain, password_hash=PW.hash_sync("a-secret"))
        ids = {login: await store.add_user(login, PW.hash_sync("u-secret"))
               for login in user_logins}
        for login, email, perms in grants:
            addr = await store.get_address(email)
            assert addr is not None
            await store.grant(ids[login], addr.id, perms)
    cli.query(go)


def test_user_passwd(cli_both: Cli) -> None:
    cli = cli_both
    setup(cli, domains={}, user_logins=["boss@remote.example"])
    before = user_row(cli, "boss@remote.example")
    assert before is not None and verifies(before[0], "u-secret")
    r = cli.ok("user", "passwd", "BOSS@remote.example", "--password-stdin",
               input="second-secret\n")
    assert "boss@remote.example" in r.out and "signed out" in r.out
    assert "second-secret" not in r.both
    after = user_row(cli, "boss@remote.example")
    assert after is not None
    assert verifies(after[0], "second-secret") and not verifies(after[0], "u-secret")
    assert after[1] == before[1] + 1  # the user's web sessions end
    events = cli.query(lambda s: s.list_activity("boss@remote.example"))
    assert events[0].event == "user_password_changed"

    # refusals: exit 1, the reason on stderr, nothing changed
    for args, stdin, fragment in [
        (("user", "passwd", "nobody@remote.example", "--password-stdin"), "third-secret\n",
         "no user nobody@remote.example"),
        (("user", "passwd", "boss@remote.example", "--password-stdin"), "short\n",
         "shorter than 8"),
        (("user", "passwd", "boss@remote.example"), None, "--password-stdin"),
    ]:
        r = cli(*args, input=stdin)
        assert r.code == 1 and fragment in r.err, (args, r)
    assert user_row(cli, "boss@remote.example") == after


def test_user_remove_keeps_addresses(cli_both: Cli) -> None:
    cli = cli_both
    setup(cli, domains={"example.com": "standard"},
          addresses=["anna@example.com", "team@example.com"],
          user_logins=["boss@remote.example", "other@remote.example"],
          grants=[("boss@remote.example", "anna@example.com", ["read", "send"]),
                  ("boss@remote.example", "team@example.com", ["read"]),
                  ("other@remote.example", "team@example.com", ["passwd"])])
    stored = users(cli)

    r = cli("user", "remove", "boss@remote.example")  # no --yes: exit 2, nothing removed
    assert r.code == 2 and "--yes" in r.err and "2 addresses" in r.err
    r = cli("user", "remove", "ghost@remote.example", "--yes")
    assert r.code == 1 and "no user ghost@remote.example" in r.err
    assert users(cli) == stored

    r = cli.ok("user", "remove", "Boss@remote.example", "--yes")
    assert "anna@example.com, team@example.com" in r.out
    assert users(cli) == [("other@remote.example",
                           [("team@example.com", frozenset({"passwd"}))])]
    assert address(cli, "anna@example.com") is not None
    assert address(cli, "team@example.com") is not None
    assert cli.query(lambda s: s.get_user_id("boss@remote.example")) is None
    assert cli.query(lambda s: s.list_activity("boss@remote.example"))[0].event == \
        "user_removed"


def test_address_app_only(cli_both: Cli) -> None:
    cli = cli_both
    setup(cli, domains={"example.com": "standard"}, addresses=["anna@example.com"])
    r = cli.ok("address", "app-only", "Anna@example.com", "on")
    assert "app passwords only" in r.out and "no app password" in r.err
    assert address(cli, "anna@example.com").app_passwords_only
    r = cli.ok("address", "app-only", "anna@example.com", "off")
    assert "accepts its password" in r.out
    assert not address(cli, "anna@example.com").app_passwords_only
    # refusals
    r = cli("address", "app-only", "ghost@example.com", "on")
    assert r.code == 1 and "no address ghost@example.com" in r.err
    r = cli("address", "app-only", "anna@example.com", "maybe")
    assert r.code == 2 and "invalid choice" in r.err
    assert not address(cli, "anna@example.com").app_passwords_only
    events = [e.event for e in cli.query(lambda s: s.list_activity("anna@example.com"))]
    assert events[:2] == ["app_only_off", "app_only_on"]


def test_domain_set_plan(cli_both: Cli) -> None:
    cli = cli_both
    setup(cli, domains={"example.com": "standard"},
          addresses=[f"u{i}@example.com" for i in range(6)])
    r = cli("domain", "set-plan", "example.com", "gold")
    assert r.code == 1 and "no plan 'gold'" in r.err and "free, standard, starter" in r.err
    r = cli("domain", "set-plan", "nowhere.example", "free")
    assert r.code == 1 and "nowhere.example is not hosted" in r.err
    assert cli.query(lambda s: s.get_domain("example.com")).plan == "standard"
    r = cli.ok("domain", "set-plan", "EXAMPLE.com", "free")
    assert "standard -> free" in r.out
    assert "holds 6 addresses, more than plan free allows (5)" in r.err
    assert cli.query(lambda s: s.get_domain("example.com")).plan == "free"
    assert len(cli.query(lambda s: s.list_addresses("example.com"))) == 6  # they stay


def test_plan_list(cli_both: Cli) -> None:
    cli = cli_both
    setup(cli, domains={"example.com": "free", "two.example": "free",
                        "three.example": "starter"})
    r = cli.ok("plan", "list")
    lines = r.out.splitlines()
    assert lines[0].split()[:2] == ["plan", "addresses/domain"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"free", "standard", "starter"}
    # free: 5 addresses, 10 recipients/message, 100/day, 25 MiB, 1 GiB, no message cap
    assert rows["free"].split()[1:4] == ["5", "10", "100"]
    assert "25 MiB" in rows["free"] and "1 GiB" in rows["free"]
    assert rows["free"].split()[-1] == "2" and rows["starter"].split()[-1] == "1"
    assert "(default)" in rows["standard"] and "(default)" not in rows["free"]


def test_plan_list_reads_the_config(tmp_path: Path) -> None:
    cli = make_cli(tmp_path, extra=(
        "[smtp]\ndefault_plan = \"basic\"\n"
        "[plans.basic]\nmax_addresses = 3\nmax_recipients_per_message = 7\n"
        "daily_recipients = 70\nmax_message_size = 10485760\nstorage_quota = 0\n"
        "message_quota = 5000\n"))
    r = cli.ok("plan", "list")
    basic = next(line for line in r.out.splitlines() if line.startswith("basic"))
    assert basic.split() == ["basic", "(default)", "3", "7", "70", "10", "MiB", "no",
                             "limit", "5000", "0"]

"""The ``mailstack`` command end to end: a subprocess per command, a temp config, and
the stored state checked through the store (docs/behaviour.md §3, §10)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from mailstack.cli import build_parser, main
from mailstack.config import render_example
from mailstack.policy.passwords import Passwords
from mailstack.store import Store

from .conftest import Cli, cli_env, make_cli, write_config

FAST = Passwords(1, 64, 1)


async def emails(store: Store) -> list[str]:
    return [a.email for a in await store.list_addresses()]


async def kinds(store: Store) -> dict[str, str]:
    return {a.email: a.kind for a in await store.list_addresses()}


# --- domains and addresses of each kind (both backends) --------------------------------


def test_domain_and_address_kinds(cli_both: Cli) -> None:
    cli = cli_both
    r = cli.ok("init")
    assert "schema up to date" in r.out
    cli.ok("domain", "add", "Example.COM")
    cli.ok("address", "add", "Anna.Alpha@example.com", "--password-stdin", "--name", "Anna",
           input="correct horse\n")
    cli.ok("address", "add", "no-reply@example.com", "--kind", "no-reply")
    cli.ok("address", "add", "all@example.com", "--kind", "catchall")
    r = cli("address", "add", "all2@example.com", "--kind", "catchall")
    assert r.code == 1 and "catchall" in r.err
    assert cli.query(kinds) == {"Anna.Alpha@example.com": "mailbox",
                                "no-reply@example.com": "no-reply",
                                "all@example.com": "catchall"}

    async def folders(store: Store) -> list[str]:
        addr = await store.get_address("anna.alpha@example.com")
        assert addr is not None and addr.display_name == "Anna"
        assert addr.password_hash and await FAST.verify(addr.password_hash, "correct horse")
        return sorted(f.name for f in await store.list_folders(addr.id))
    assert cli.query(folders) == ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]

    r = cli.ok("address", "list", "example.com")
    assert [line.split("\t")[:2] for line in r.out.splitlines()] == [
        ["all@example.com", "catchall"], ["Anna.Alpha@example.com", "mailbox"],
        ["no-reply@example.com", "no-reply"]]

    r = cli("domain", "remove", "example.com")
    assert r.code == 1 and "remove them first" in r.err
    for a in ("anna.alpha@example.com", "no-reply@example.com", "all@example.com"):
        cli.ok("address", "remove", a, "--yes")
    assert cli.query(emails) == []
    cli.ok("domain", "remove", "example.com")
    assert cli.ok("domain", "list").out == ""


def test_domain_and_address_refusals(tmp_path: Path) -> None:
    cli = make_cli(tmp_path, extra="[plans.tiny]\nmax_addresses = 2\n")
    cli.ok("domain", "add", "tiny.example", "--plan", "tiny")
    r = cli("domain", "add", "TINY.example")
    assert r.code == 1 and "already exists" in r.err
    r = cli("domain", "add", "other.example", "--plan", "gold")
    assert r.code == 1 and "gold" in r.err
    r = cli("domain", "add", "bad_label.example")
    assert r.code == 1 and "bad_label" in r.err
    r = cli.ok("domain", "list")
    assert r.out == "tiny.example\tplan=tiny\taddresses=0/2\tdmarc=default\n"

    cli.ok("address", "add", "a@tiny.example")
    r = cli("address", "add", "A@TINY.example")  # addresses compare case-insensitively
    assert r.code == 1 and "already exists" in r.err
    r = cli("address", "add", "x@unknown.example")
    assert r.code == 1 and "not hosted" in r.err
    cli.ok("address", "add", "b@tiny.example")
    r = cli("address", "add", "c@tiny.example")  # the plan's cap
    assert r.code == 1 and "allows 2 addresses" in r.err
    assert sorted(cli.query(emails)) == ["a@tiny.example", "b@tiny.example"]


# --- the local-part rules ----------------------------------------------------------------


RULE_CASES = [
    ("an!na@example.com", "character '!' at position 3"),
    ("anna..b@example.com", "position 6"),
    (".anna@example.com", "position 1"),
    ("ann a@example.com", "space at position 4"),
    ("jörg@example.com", "position 2"),
]


def test_rule_error_names_character_and_position(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    for address, expected in RULE_CASES:
        r = cli("address", "add", address)
        assert r.code == 1, address
        assert expected in r.err, (address, r.err)
    assert cli.query(emails) == []


# --- CSV import (both backends) ----------------------------------------------------------

CSV_BAD = (
    "address,password,name\n"          # 1 header
    "ok1@example.com,password1,One\n"  # 2 ok
    "b!d@example.com,password1\n"      # 3 rule
    "\n"                               # 4 blank
    "ok2@example.com,\n"               # 5 missing password
    "OK1@example.com,password2\n"      # 6 duplicate of 2
    "x@nohost.example,password1\n"     # 7 unknown domain
    "old@example.com,password1\n"      # 8 exists
    "ok3@example.com,password3,Three\n"  # 9 ok
    "lonely@example.com\n"             # 10 one column
    "ok4@example.com,short\n"          # 11 too short
)


def test_csv_import_all_or_nothing(cli_both: Cli, tmp_path: Path) -> None:
    cli = cli_both
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "old@example.com")
    path = tmp_path / "people.csv"
    path.write_text(CSV_BAD, encoding="utf-8")

    r = cli("address", "import-csv", str(path))
    assert r.code == 1
    reported = {int(line.split(":")[1]) for line in r.err.splitlines()
                if line.startswith(f"{path}:")}
    assert reported == {3, 5, 6, 7, 8, 10, 11}
    assert "character '!' at position 2" in r.err
    assert "duplicate of line 2" in r.err
    assert "nothing was created" in r.err
    assert "password1" not in r.both and "short" not in r.both.replace("shorter", "")
    assert cli.query(emails) == ["old@example.com"]

    r = cli.ok("address", "import-csv", str(path), "--valid-only")
    assert "2 addresses created" in r.out
    assert sorted(cli.query(emails)) == ["ok1@example.com", "ok3@example.com",
                                         "old@example.com"]

    async def check(store: Store) -> None:
        a = await store.get_address("ok3@example.com")
        assert a is not None and a.display_name == "Three" and a.password_hash
        assert await FAST.verify(a.password_hash, "password3")
        assert len(await store.list_folders(a.id)) == 6
    cli.query(check)


def test_csv_import_all_valid_and_over_cap(tmp_path: Path) -> None:
    cli = make_cli(tmp_path, extra="[plans.tiny]\nmax_addresses = 2\n")
    cli.ok("domain", "add", "tiny.example", "--plan", "tiny")
    path = tmp_path / "in.csv"
    path.write_text("a@tiny.example,password1\nb@tiny.example,password2\n"
                    "c@tiny.example,password3\n", encoding="utf-8")
    r = cli("address", "import-csv", str(path))
    assert r.code == 1 and f"{path}:3:" in r.err and "limit of 2" in r.err
    assert cli.query(emails) == []
    path.write_text("a@tiny.example,password1\nb@tiny.example,password2\n", encoding="utf-8")
    r = cli.ok("address", "import-csv", str(path))
    assert "2 addresses created" in r.out
    assert sorted(cli.query(emails)) == ["a@tiny.example", "b@tiny.example"]


# --- removal needs confirmation -----------------------------------------------------------


def test_remove_without_yes_is_refused(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com", "--password-stdin", input="password1\n")

    async def put_mail(store: Store) -> None:
        addr = await store.get_address("anna@example.com")
        assert addr is not None
        inbox = await store.get_folder(addr.id, "INBOX")
        assert inbox is not None
        await store.append(inbox.id, b"Subject: keep me\r\n\r\nhello\r\n")
    cli.query(put_mail)

    r = cli("address", "remove", "anna@example.com")
    assert r.code == 2
    assert "--yes" in r.err and "1 messages" in r.err

    async def inbox_count(store: Store) -> int:
        addr = await store.get_address("anna@example.com")
        assert addr is not None
        inbox = await store.get_folder(addr.id, "INBOX")
        assert inbox is not None
        return (await store.folder_status(inbox.id)).messages
    assert cli.query(inbox_count) == 1

    cli.ok("address", "remove", "anna@example.com", "--yes")
    assert cli.query(emails) == []
    r = cli("address", "remove", "anna@example.com", "--yes")
    assert r.code == 1 and "no address" in r.err


# --- passwords -------------------------------------------------------------------------------


def test_passwd_via_stdin_and_never_printed(cli: Cli) -> None:
    first, second = "first-Secret-1", "second-Secret-2"
    cli.ok("domain", "add", "example.com")
    outputs = [cli.ok("address", "add", "anna@example.com", "--password-stdin",
                      input=first + "\n")]

    async def hash_of(store: Store) -> str:
        a = await store.get_address("anna@example.com")
        assert a is not None and a.password_hash
        return a.password_hash
    h1 = cli.query(hash_of)
    assert FAST._verify_sync(h1, first)

    outputs.append(cli.ok("address", "passwd", "anna@example.com", "--password-stdin",
                          input=second + "\r\n"))
    h2 = cli.query(hash_of)
    assert FAST._verify_sync(h2, second) and not FAST._verify_sync(h2, first)

    # refused: too short, none given (stdin is not a terminal), unknown address
    for args, stdin in ((("address", "passwd", "anna@example.com", "--password-stdin"),
                         "short\n"),
                        (("address", "passwd", "anna@example.com"), None),
                        (("address", "passwd", "bob@example.com", "--password-stdin"),
                         first + "\n")):
        r = cli(*args, input=stdin)
        assert r.code == 1, r
        outputs.append(r)
    assert cli.query(hash_of) == h2

    outputs.append(cli.ok("activity", "anna@example.com"))
    assert "password_changed" in outputs[-1].out
    for r in outputs:
        for secret in (first, second, "short"):
            assert secret not in r.both.replace("shorter", "")


def test_app_password_printed_once_and_revocable(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com")
    r = cli.ok("app-password", "add", "anna@example.com", "phone")
    secret = r.out.strip().rsplit(" ", 1)[1]
    assert len(secret) == 19

    async def app_hashes(store: Store) -> list[str]:
        a = await store.get_address("anna@example.com")
        assert a is not None
        return [h for _, h in await store.app_password_hashes(a.id)]
    hashes = cli.query(app_hashes)
    assert len(hashes) == 1 and FAST._verify_sync(hashes[0], secret)
    r = cli.ok("app-password", "list", "anna@example.com")
    assert r.out.startswith("phone\t") and secret not in r.out
    r = cli("app-password", "add", "anna@example.com", "phone")
    assert r.code == 1 and "exists" in r.err
    cli.ok("app-password", "revoke", "anna@example.com", "phone")
    assert cli.query(app_hashes) == []
    r = cli("app-password", "revoke", "anna@example.com", "phone")
    assert r.code == 1 and "no app password" in r.err


# --- aliases, forwarding, client settings ---------------------------------------------------


def test_alias_and_forward(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com")
    cli.ok("alias", "add", "info@example.com", "anna@example.com", "bob@remote.example")
    r = cli("alias", "add", "sales@example.com", "ghost@example.com")
    assert r.code == 1 and "does not exist" in r.err
    r = cli("alias", "add", "a(b@example.com", "anna@example.com")
    assert r.code == 1 and "position 2" in r.err
    r = cli("alias", "add", "anna@example.com", "bob@remote.example")
    assert r.code == 1 and "already an address" in r.err
    r = cli.ok("alias", "list")
    assert r.out == "info@example.com\t-> anna@example.com, bob@remote.example\n"

    async def alias_targets(store: Store) -> object:
        a = await store.get_alias("INFO@example.com")
        return a.targets if a else None
    assert cli.query(alias_targets) == ("anna@example.com", "bob@remote.example")
    cli.ok("alias", "remove", "info@example.com")
    assert cli.query(alias_targets) is None

    cli.ok("forward", "set", "anna@example.com", "anna@elsewhere.example", "--keep-copy")

    async def fwd(store: Store) -> tuple[tuple[str, ...], bool]:
        a = await store.get_address("anna@example.com")
        assert a is not None
        return a.forward_to, a.keep_copy
    assert cli.query(fwd) == (("anna@elsewhere.example",), True)
    r = cli("forward", "set", "anna@example.com", "anna@example.com")
    assert r.code == 1 and "itself" in r.err
    assert cli.query(fwd) == (("anna@elsewhere.example",), True)
    cli.ok("forward", "set", "anna@example.com", "x@elsewhere.example")
    assert cli.query(fwd) == (("x@elsewhere.example",), False)
    cli.ok("forward", "clear", "anna@example.com")
    assert cli.query(fwd) == ((), True)

    r = cli.ok("client-settings", "anna@example.com")
    assert "user name: anna@example.com" in r.out
    lines = r.out.splitlines()
    assert any("IMAP" in x and "port 993" in x and "SSL/TLS" in x and "mail.example.net" in x
               for x in lines)
    assert any("SMTP" in x and "port 465" in x and "SSL/TLS" in x for x in lines)
    assert any("POP3" in x and "port 995" in x for x in lines)


# --- config ------------------------------------------------------------------------------------


def test_check_config(tmp_path: Path, cli: Cli) -> None:
    r = cli.ok("check-config", str(cli.config))
    assert r.out.startswith("OK")
    bad = tmp_path / "bad.toml"
    bad.write_text('[listeners.imaps]\ntls = "sometimes"\n', encoding="utf-8")
    r = cli("check-config", str(bad))
    assert r.code == 1
    assert "listeners.imaps.tls" in r.err and "sometimes" in r.err
    # the same file given globally stops any command, naming the key
    r = cli("--config", str(bad), "domain", "list")
    assert r.code == 1 and "listeners.imaps.tls" in r.err
    assert not (tmp_path / "cwd" / "data").exists()


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_config_example_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-example"]) == 0
    assert capsys.readouterr().out == render_example()
    # every command and sub-command answers --help
    commands: list[list[str]] = [[]]
    for name, sub in subcommands(build_parser()).items():
        commands.append([name])
        commands.extend([name, action] for action in subcommands(sub))
    assert len(commands) > 20
    for cmd in commands:
        with pytest.raises(SystemExit) as info:
            main([*cmd, "--help"])
        assert info.value.code == 0
        assert "usage: mailstack" in capsys.readouterr().out


def test_config_file_discovery(tmp_path: Path) -> None:
    """No --config: $MAILSTACK_CONFIG first, else ./mailstack.toml."""
    work = tmp_path / "work"
    work.mkdir()
    write_config(work / "mailstack.toml", tmp_path / "from-cwd")
    bad = write_config(tmp_path / "bad.toml", tmp_path / "from-env",
                       extra="[plans.free]\nmax_addresses = 0\n")

    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mailstack", "init"], cwd=work, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)

    r = run(cli_env())
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "from-cwd" / "mailstack.db").exists()
    r = run({**cli_env(), "MAILSTACK_CONFIG": str(bad)})
    assert r.returncode == 1
    assert "plans.free.max_addresses" in r.stderr and "at least 1" in r.stderr
    assert not (tmp_path / "from-env").exists()


def test_domain_dmarc_action_override(cli_both: Cli) -> None:
    """docs/behaviour.md §5: the per-domain DMARC action, set, shown, reset, refused."""
    cli = cli_both
    cli.ok("domain", "add", "example.com")
    cli.ok("domain", "add", "other.example")
    r = cli.ok("domain", "dmarc-action", "example.com", "quarantine")
    assert "DMARC action quarantine" in r.out

    async def actions(store: Store) -> dict[str, str]:
        return await store.dmarc_actions(["example.com", "other.example"])
    assert cli.query(actions) == {"example.com": "quarantine"}
    lines = cli.ok("domain", "list").out.splitlines()
    assert [line.split("\t")[-1] for line in lines] == ["dmarc=quarantine", "dmarc=default"]
    cli.ok("domain", "dmarc-action", "example.com", "mark")
    assert cli.query(actions) == {"example.com": "mark"}
    r = cli.ok("domain", "dmarc-action", "example.com", "default")
    assert "server default (reject)" in r.out
    assert cli.query(actions) == {}
    r = cli("domain", "dmarc-action", "nothere.example", "mark")
    assert r.code == 1 and "domain add nothere.example" in r.err
    r = cli("domain", "dmarc-action", "example.com", "drop")
    assert r.code == 2 and "invalid choice" in r.err
    assert cli.query(actions) == {}
    # the setting never stops a domain from being removed, and goes with it
    cli.ok("domain", "dmarc-action", "other.example", "mark")
    cli.ok("domain", "remove", "other.example")
    assert cli.query(actions) == {}

"""What a new operator trips over, through the real command line: forwarding and alias
targets checked alike, IDNA 2008 domain names, the activity listing, every bad config
key in one run (docs/behaviour.md §3, §10). Each refusal checks the exit code, the
message and that nothing was stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailstack.store import Store

from .conftest import Cli, make_cli


async def domains(store: Store) -> list[str]:
    return [d.name for d in await store.list_domains()]


async def forward_of(store: Store) -> tuple[str, ...]:
    a = await store.get_address("anna@example.com")
    assert a is not None
    return a.forward_to


async def alias_names(store: Store) -> list[str]:
    return [f"{a.local_part}@{a.domain}" for a in await store.list_aliases()]


# --- 1: forward targets are checked like alias targets -------------------------------


@pytest.mark.parametrize("target,fragment", [
    ("bad..x@elsewhere.example", "not a deliverable address"),
    (".x@elsewhere.example", "not a deliverable address"),
    ("x y@elsewhere.example", "not a deliverable address"),
    ("x@elsewhere..example", "not a deliverable address"),
    ("x@[10.0.0.1]", "address literal"),
    ("x@xn--zz.example", "not a deliverable address"),
    ("no-at-sign.example", "not a deliverable address"),
    ("ghost@example.com", "does not exist"),
])
def test_forward_and_alias_refuse_the_same_targets(cli: Cli, target: str,
                                                   fragment: str) -> None:
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com")
    cli.ok("forward", "set", "anna@example.com", "ok@elsewhere.example")
    fwd = cli("forward", "set", "anna@example.com", target)
    ali = cli("alias", "add", "info@example.com", target)
    for r in (fwd, ali):
        assert r.code == 1, r
        assert fragment in r.err, r.err
    assert cli.query(forward_of) == ("ok@elsewhere.example",)  # unchanged
    assert cli.query(alias_names) == []


def test_forward_and_alias_accept_the_same_remote_targets(cli: Cli) -> None:
    """What the SMTP router accepts for a remote mailbox (RFC 5321 dot-string, Unicode
    domain) is accepted by both, stored with its A-label domain."""
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com")
    for target, stored in (("bob+tag@Remote.Example", "bob+tag@remote.example"),
                           ("o'neil@bücher.example", "o'neil@xn--bcher-kva.example")):
        cli.ok("forward", "set", "anna@example.com", target)
        assert cli.query(forward_of) == (stored,)
        cli.ok("alias", "add", "info@example.com", target)

        async def alias_targets(store: Store) -> tuple[str, ...]:
            a = await store.get_alias("info@example.com")
            assert a is not None
            return a.targets
        assert cli.query(alias_targets) == (stored,)
        cli.ok("alias", "remove", "info@example.com")


# --- 2: domain names via IDNA 2008 ------------------------------------------------------


@pytest.mark.parametrize("bad", ["xn--zz.example", "xn--a.example", "ex--ample.example",
                                 "a_b.example", "-a.example", "example", "1.2.3.4"])
def test_domain_add_refuses_invalid_names(cli: Cli, bad: str) -> None:
    r = cli("domain", "add", "--", bad)
    assert r.code == 1, r
    assert repr(bad) in r.err
    assert cli.query(domains) == []


def test_unicode_domain_stored_as_a_label(cli: Cli) -> None:
    r = cli.ok("domain", "add", "Bücher.Example")
    assert "xn--bcher-kva.example" in r.out
    assert cli.query(domains) == ["xn--bcher-kva.example"]
    r = cli("domain", "add", "xn--bcher-kva.example")  # the same domain, other spelling
    assert r.code == 1 and "already exists" in r.err
    cli.ok("address", "add", "anna@bücher.example")
    assert cli.ok("address", "list").out.startswith("anna@xn--bcher-kva.example\t")
    cli.ok("address", "remove", "anna@xn--bcher-kva.example", "--yes")
    cli.ok("domain", "remove", "bücher.example")
    assert cli.query(domains) == []


# --- 3: activity: a header, --json, unknown addresses ---------------------------------------


def test_activity_header_json_and_unknown_address(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com")
    cli.ok("address", "add", "bob@example.com")
    r = cli.ok("activity", "anna@example.com")
    lines = r.out.splitlines()
    assert lines[0].split("\t") == ["when", "address", "client", "protocol", "event",
                                    "detail"]
    assert len(lines) == 2
    row = lines[1].split("\t")
    assert len(row) == 6 and row[1] == "anna@example.com" and row[3] == "cli"
    assert row[4] == "address_created"

    entries = json.loads(cli.ok("activity", "--json").out)
    assert {e["address"] for e in entries} == {"anna@example.com", "bob@example.com"}
    assert all(set(e) == {"at", "when", "address", "client", "protocol", "event", "detail"}
               for e in entries)
    assert json.loads(cli.ok("activity", "Anna@Example.com", "--json").out)[0]["event"] \
        == "address_created"

    r = cli("activity", "nobody@example.com")
    assert r.code == 1 and "no such address" in r.err and r.out == ""
    r = cli("activity", "nobody@example.com", "--json")
    assert r.code == 1 and "no such address" in r.err and r.out == ""

    # a removed address keeps its history: still listed, not "no such address"
    cli.ok("address", "remove", "bob@example.com", "--yes")
    r = cli.ok("activity", "bob@example.com")
    assert [x.split("\t")[4] for x in r.out.splitlines()[1:]] == [
        "address_removed", "address_created"]


# --- 7: every bad config key in one run -----------------------------------------------------


def test_every_bad_config_key_reported_at_once(tmp_path: Path) -> None:
    cli = make_cli(tmp_path, extra=(
        "[listeners.imap]\nport = \"143\"\ntls = \"yes\"\n"
        "[smtp]\nmax_line_length = 10\nno_such_key = 1\n"
        "[plans.free]\nmax_addresses = 0\n"))
    for args in (("domain", "list"), ("check-config",)):
        r = cli(*args)
        assert r.code == 1
        for key in ("listeners.imap.port", "listeners.imap.tls", "smtp.max_line_length",
                    "smtp.no_such_key", "plans.free.max_addresses"):
            assert key in r.err, (key, r.err)
        assert len(r.err.strip().splitlines()) == 5, r.err
    assert not (cli.data_dir / "mailstack.db").exists()  # nothing ran

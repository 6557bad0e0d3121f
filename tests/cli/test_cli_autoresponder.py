"""``mailstack autoresponder ...`` (docs/behaviour.md §7, §10) on SQLite and PostgreSQL:
the first commands through the real entry point (a subprocess), the many refusals
in-process through ``cli.main`` (same parser, same handlers, same exit codes) to keep
the test fast; every refusal names the problem, exits 1 and stores nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailstack.cli import main
from mailstack.store import AutoResponder, Store

from .conftest import Cli, Result


class InProcess:
    """``run(*args)`` = ``mailstack --config FILE *args`` inside this process."""

    def __init__(self, cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
        self.cli, self.capsys = cli, capsys

    def __call__(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = main(["--config", str(self.cli.config), *args])
        out, err = self.capsys.readouterr()
        return Result(code, out, err)

    def ok(self, *args: str) -> Result:
        r = self(*args)
        assert r.code == 0, f"mailstack {' '.join(args)} failed ({r.code}): {r.err}"
        return r


def responders(cli: Cli, address: str = "anna@example.com") -> list[AutoResponder]:
    async def go(store: Store) -> list[AutoResponder]:
        addr = await store.get_address(address)
        assert addr is not None
        return await store.list_autoresponders(addr.id)
    return cli.query(go)


def test_autoresponder_commands(cli_both: Cli, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    sub = cli_both  # a subprocess per command
    cli = InProcess(sub, capsys)
    cli.ok("domain", "add", "example.com")
    cli.ok("address", "add", "anna@example.com")
    cli.ok("address", "add", "bob@example.com")
    cli.ok("alias", "add", "team@example.com", "anna@example.com")
    body = tmp_path / "body.txt"
    body.write_text("Ich bin bis am 3. Januar weg.\nGrüße, Anna\n", encoding="utf-8")
    html = tmp_path / "body.html"
    html.write_text("<p>Ich bin <b>weg</b>.</p>", encoding="utf-8")

    sub.ok("autoresponder", "add", "Anna@example.com", "holiday", "--subject",
           "Out of office – zurück am 3.", "--body-file", str(body), "--html-file", str(html),
           "--start", "2026-12-24T17:00", "--end", "2027-01-03T08:00", "--days",
           "mon,TUE,wed,thu,fri", "--tz", "Europe/Zurich", "--from", "team@example.com",
           "--exclude", "Boss@Corp.example,@partner.example")
    [r] = responders(sub)
    assert r.name == "holiday" and not r.active
    assert r.subject == "Out of office – zurück am 3."
    assert r.body == "Ich bin bis am 3. Januar weg.\nGrüße, Anna\n"
    assert r.html == "<p>Ich bin <b>weg</b>.</p>"
    assert r.starts_at == datetime(2026, 12, 24, 16, 0, tzinfo=UTC).timestamp()
    assert r.ends_at == datetime(2027, 1, 3, 7, 0, tzinfo=UTC).timestamp()
    assert r.weekdays == frozenset({0, 1, 2, 3, 4}) and r.timezone == "Europe/Zurich"
    assert r.from_address == "team@example.com"
    assert r.exclusions == ("boss@corp.example", "@partner.example")

    # every refusal: exit 1, the problem named, nothing stored
    missing = str(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    base = ["autoresponder", "add", "anna@example.com", "sick", "--subject", "Ill",
            "--body-file", str(body)]
    for extra, fragment in [
        (["--days", "mon,funday"], "unknown weekday 'funday'"),
        (["--start", "2026-12-24", "--end", "2026-12-23"], "end must be after the start"),
        (["--start", "2026-12-24T10:00", "--end", "2026-12-24T10:00"], "end must be after"),
        (["--from", "bob@example.com"], "may not send as bob@example.com"),
        (["--from", "someone@remote.example"], "may not send as"),
        (["--exclude", "boss@corp.example,corp"], "exclusion 'corp'"),
        (["--exclude", "@"], "exclusion '@'"),
        (["--tz", "Europe/Nowhere"], "unknown time zone"),
        (["--start", "24.12.2026"], "ISO 8601"),
        (["--html-file", missing], "cannot read the HTML file"),
        (["--html-file", str(empty)], "is empty"),
    ]:
        res = cli(*base, *extra)
        assert res.code == 1 and fragment in res.err, (extra, res.err)
    res = cli("autoresponder", "add", "anna@example.com", "holiday", "--subject", "x",
              "--body-file", str(body))
    assert res.code == 1 and "already has a responder named 'holiday'" in res.err
    res = cli("autoresponder", "add", "ghost@example.com", "x", "--subject", "x",
              "--body-file", str(body))
    assert res.code == 1 and "no address ghost@example.com" in res.err
    assert [x.name for x in responders(sub)] == ["holiday"]
    assert responders(sub)[0] == r

    # a second responder; activating one deactivates the other
    cli.ok(*base, "--activate")
    cli.ok("autoresponder", "activate", "anna@example.com", "holiday")
    assert [(x.name, x.active) for x in responders(sub)] == [("holiday", True),
                                                              ("sick", False)]
    cli.ok("autoresponder", "activate", "anna@example.com", "sick")
    assert [(x.name, x.active) for x in responders(sub)] == [("holiday", False),
                                                              ("sick", True)]
    out = sub.ok("autoresponder", "list", "anna@example.com").out.splitlines()
    assert out[0].startswith("holiday\tinactive\t2026-12-24T17:00+01:00 .. "
                             "2027-01-03T08:00+01:00 mon,tue,wed,thu,fri Europe/Zurich")
    assert out[1] == "sick\tactive\talways\tIll"
    shown = cli.ok("autoresponder", "show", "anna@example.com", "holiday").out
    assert "from:       team@example.com" in shown and "Grüße, Anna" in shown
    assert "exclusions: boss@corp.example, @partner.example" in shown

    # edit: only what is given changes; refusals change nothing
    r = responders(sub)[0]
    res = cli("autoresponder", "edit", "anna@example.com", "holiday", "--end",
              "2026-12-01")
    assert res.code == 1 and "end must be after the start" in res.err
    res = cli("autoresponder", "edit", "anna@example.com", "holiday", "--subject", "a\tb")
    assert res.code == 1 and "one line" in res.err
    res = cli("autoresponder", "edit", "anna@example.com", "nope", "--subject", "x")
    assert res.code == 1 and "no responder named 'nope'" in res.err
    assert responders(sub)[0] == r
    cli.ok("autoresponder", "edit", "anna@example.com", "holiday", "--subject", "",
           "--days", "", "--no-html", "--from", "", "--exclude", "", "--start", "")
    edited = responders(sub)[0]
    assert (edited.subject, edited.weekdays, edited.html, edited.from_address,
            edited.exclusions, edited.starts_at) == ("", frozenset(), None, None, (), None)
    assert edited.ends_at == r.ends_at and edited.body == r.body

    # reset, deactivate, remove
    before = responders(sub)[1].generation
    cli.ok("autoresponder", "reset", "anna@example.com")
    assert responders(sub)[1].generation == before + 1
    cli.ok("autoresponder", "deactivate", "anna@example.com")
    assert not any(x.active for x in responders(sub))
    cli.ok("autoresponder", "remove", "anna@example.com", "sick")
    assert [x.name for x in responders(sub)] == ["holiday"]
    res = cli("autoresponder", "remove", "anna@example.com", "sick")
    assert res.code == 1 and "no responder named 'sick'" in res.err

"""The autoresponder rules, pure (RFC 3834 §2, docs/behaviour.md §7): every never-reply
rule, the schedule edges (weekdays in the responder's zone across midnight UTC), the
throttle window and reset, exclusions, and the validation of what an operator saves."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

import pytest

from mailstack.policy.autoresponder import (
    DAY,
    MessageFacts,
    ResponderRuleError,
    ThrottleRules,
    check_schedule,
    decide,
    in_schedule,
    is_system_sender,
    matches_exclusion,
    message_facts,
    parse_exclusions,
    parse_weekdays,
    parse_when,
    weekday_names,
)

NOW = datetime(2026, 12, 21, 12, 0, tzinfo=UTC).timestamp()  # a Monday


@dataclass(frozen=True)
class R:
    active: bool = True
    starts_at: float | None = None
    ends_at: float | None = None
    weekdays: frozenset[int] = frozenset()
    timezone: str = "UTC"
    exclusions: tuple[str, ...] = ()


def facts(headers: str = "", sender: str | None = "bob@remote.example",
          to: str = "anna@example.com", via_catchall: bool = False) -> MessageFacts:
    raw = (f"From: Bob <bob@remote.example>\r\nTo: {to}\r\n{headers}Subject: hi\r\n"
           "\r\n").encode()
    parsed = BytesHeaderParser(policy=compat32).parsebytes(raw)
    return message_facts(parsed, sender, ["anna@example.com", "a.alias@example.com"],
                         via_catchall=via_catchall)


def reason(f: MessageFacts, r: R = R(), **kw: object) -> str:
    return decide(f, r, now=kw.pop("now", NOW), **kw).reason  # type: ignore[arg-type]


def test_plain_personal_message_gets_a_reply() -> None:
    v = decide(facts(), R(), now=NOW)
    assert v.reply and v.reason == "reply"


@pytest.mark.parametrize("headers,expected", [
    ("Auto-Submitted: auto-generated\r\n", "auto-submitted"),
    ("Auto-Submitted: auto-replied\r\n", "auto-submitted"),
    ("Auto-Submitted: auto-notified; owner-email=x@y\r\n", "auto-submitted"),
    ("Auto-Submitted: whatever\r\n", "auto-submitted"),
    ("Precedence: bulk\r\n", "precedence"),
    ("Precedence: List\r\n", "precedence"),
    ("Precedence: junk\r\n", "precedence"),
    ("X-Auto-Response-Suppress: DR, OOF\r\n", "suppress"),
    ("X-Auto-Response-Suppress: All\r\n", "suppress"),
    ("List-Id: Friends <friends.lists.example>\r\n", "list"),
    ("List-Unsubscribe: <mailto:leave@lists.example>\r\n", "list"),
    ("List-Post: <mailto:friends@lists.example>\r\n", "list"),
    ("MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
     " boundary=x\r\n", "report"),
    ("MIME-Version: 1.0\r\nContent-Type: multipart/report; "
     "report-type=disposition-notification; boundary=x\r\n", "report"),
])
def test_never_reply_headers(headers: str, expected: str) -> None:
    assert reason(facts(headers)) == expected


@pytest.mark.parametrize("headers", [
    "Auto-Submitted: no\r\n", "Auto-Submitted: No (a comment)\r\n",
    "Precedence: first-class\r\n", "X-Auto-Response-Suppress: DR, RN\r\n",
])
def test_harmless_headers_still_get_a_reply(headers: str) -> None:
    assert reason(facts(headers)) == "reply"


@pytest.mark.parametrize("sender,expected", [
    (None, "null-sender"),
    ("MAILER-DAEMON@remote.example", "system-sender"),
    ("mailer-daemon@remote.example", "system-sender"),
    ("owner-friends@lists.example", "system-sender"),
    ("friends-request@lists.example", "system-sender"),
    ("friends-owner@lists.example", "system-sender"),
    ("LISTSERV@lists.example", "system-sender"),
    ("majordomo@lists.example", "system-sender"),
    ("anna@example.com", "self"),
    ("ANNA@Example.COM", "self"),
    ("a.alias@example.com", "self"),
    ("jörg@remote.example", "utf8-sender"),
])
def test_never_reply_senders(sender: str | None, expected: str) -> None:
    assert reason(facts(sender=sender)) == expected


def test_system_sender_names() -> None:
    assert is_system_sender("owner-x@a.b") and is_system_sender("x-request@a.b")
    assert not is_system_sender("requester@a.b") and not is_system_sender("owner@a.b")


def test_catchall_delivery_gets_no_reply() -> None:
    assert reason(facts(via_catchall=True)) == "catchall"


@pytest.mark.parametrize("to,expected", [
    ("someone@else.example", "not-addressed"),  # Bcc or list expansion
    ("undisclosed-recipients:;", "not-addressed"),
    ("Anna <ANNA@example.com>", "reply"),
    ("x@y.example, A <a.alias@EXAMPLE.com>", "reply"),  # an alias of the address
])
def test_address_must_be_in_to_or_cc(to: str, expected: str) -> None:
    assert reason(facts(to=to)) == expected


def test_cc_counts() -> None:
    f = facts(to="x@y.example", headers="Cc: Anna <anna@example.com>\r\n")
    assert reason(f) == "reply"


def test_inactive_responder() -> None:
    assert reason(facts(), R(active=False)) == "inactive"


def test_exclusions() -> None:
    assert matches_exclusion("bob@remote.example", ["BOB@remote.example"])
    assert matches_exclusion("bob@remote.example", ["@Remote.Example"])
    assert not matches_exclusion("bob@mail.remote.example", ["@remote.example"])
    assert matches_exclusion("bob@mail.remote.example", ["@remote.example"], subdomains=True)
    assert not matches_exclusion("bob@notremote.example", ["@remote.example"],
                                 subdomains=True)
    assert not matches_exclusion("bob@remote.example", ["rob@remote.example"])
    assert reason(facts(), R(exclusions=("@remote.example",))) == "excluded"
    assert reason(facts(), R(exclusions=("bob@remote.example",))) == "excluded"
    sub = facts(sender="bob@eu.remote.example")
    assert reason(sub, R(exclusions=("@remote.example",))) == "reply"
    assert reason(sub, R(exclusions=("@remote.example",)),
                  rules=ThrottleRules(exclude_subdomains=True)) == "excluded"


def test_schedule_start_and_end_edges() -> None:
    r = R(starts_at=NOW, ends_at=NOW + DAY)
    assert reason(facts(), r, now=NOW - 1) == "schedule"
    assert reason(facts(), r, now=NOW) == "reply"  # start inclusive
    assert reason(facts(), r, now=NOW + DAY - 1) == "reply"
    assert reason(facts(), r, now=NOW + DAY) == "schedule"  # end exclusive


def test_weekdays_in_the_responders_zone_across_midnight_utc() -> None:
    # Monday 2026-12-21 23:30 UTC is already Tuesday 00:30 in Zurich (UTC+1).
    late_monday_utc = datetime(2026, 12, 21, 23, 30, tzinfo=UTC).timestamp()
    zurich_mon = R(weekdays=frozenset({0}), timezone="Europe/Zurich")
    zurich_tue = R(weekdays=frozenset({1}), timezone="Europe/Zurich")
    utc_mon = R(weekdays=frozenset({0}), timezone="UTC")
    assert not in_schedule(zurich_mon, late_monday_utc)
    assert in_schedule(zurich_tue, late_monday_utc)
    assert in_schedule(utc_mon, late_monday_utc)
    # and the other way: Monday 00:30 in New York is Monday 05:30 UTC; Sunday 23:30 in
    # New York is Monday 04:30 UTC
    sunday_ny = datetime(2026, 12, 21, 4, 30, tzinfo=UTC).timestamp()
    assert not in_schedule(R(weekdays=frozenset({0}), timezone="America/New_York"),
                           sunday_ny)
    assert in_schedule(R(weekdays=frozenset({6}), timezone="America/New_York"), sunday_ny)
    assert reason(facts(), zurich_mon, now=late_monday_utc) == "schedule"
    # an unknown zone never matches (no guessing)
    assert not in_schedule(R(weekdays=frozenset(range(7)), timezone="Mars/Base"), NOW)


def test_throttle_window() -> None:
    r = R()
    week = ThrottleRules().window
    assert reason(facts(), r, last_reply_at=NOW - 60) == "throttled"
    assert reason(facts(), r, last_reply_at=NOW - week + 1) == "throttled"
    assert reason(facts(), r, last_reply_at=NOW - week) == "reply"  # 7 days or more
    assert reason(facts(), r, last_reply_at=None) == "reply"  # none since the last reset
    short = ThrottleRules(window=3600)
    assert reason(facts(), r, last_reply_at=NOW - 3600, rules=short) == "reply"


def test_hourly_cap() -> None:
    rules = ThrottleRules(hourly_cap=3)
    assert reason(facts(), R(), replies_last_hour=2, rules=rules) == "reply"
    assert reason(facts(), R(), replies_last_hour=3, rules=rules) == "hourly-cap"


# --- validation of saved settings ---------------------------------------------------


def test_parse_weekdays() -> None:
    assert parse_weekdays("mon,TUE, sun") == frozenset({0, 1, 6})
    assert parse_weekdays("") == frozenset()
    assert weekday_names({6, 0}) == "mon,sun"
    with pytest.raises(ResponderRuleError, match="unknown weekday 'funday'"):
        parse_weekdays("mon,funday")
    with pytest.raises(ResponderRuleError, match="unknown weekday"):
        parse_weekdays("monday")


def test_parse_exclusions() -> None:
    assert parse_exclusions(["Boss@Corp.Example", "@Partner.Example", " ", "@partner.example"]
                            ) == ("boss@corp.example", "@partner.example")
    for bad in ["boss", "@", "@nodot", "a@b@c.example", "@bad_domain.example", "x@",
                "@-x.example", "<a@b.example>"]:
        with pytest.raises(ResponderRuleError, match="exclusion"):
            parse_exclusions([bad])


def test_schedule_validation_and_dates() -> None:
    start = parse_when("2026-12-24T17:00", "Europe/Zurich")
    assert start == datetime(2026, 12, 24, 16, 0, tzinfo=UTC).timestamp()
    assert parse_when("2026-12-24T17:00+00:00", "Europe/Zurich") == start + 3600
    assert parse_when("2026-12-24", "UTC") == datetime(2026, 12, 24, tzinfo=UTC).timestamp()
    with pytest.raises(ResponderRuleError, match="ISO 8601"):
        parse_when("24.12.2026", "UTC")
    with pytest.raises(ResponderRuleError, match="time zone"):
        parse_when("2026-12-24", "Europe/Nowhere")
    check_schedule(start, start + 1)
    check_schedule(None, start)
    with pytest.raises(ResponderRuleError, match="end must be after the start"):
        check_schedule(start, start)

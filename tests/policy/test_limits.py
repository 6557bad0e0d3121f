"""Recipient cap, rolling daily limit, per-client connection cap (docs/behaviour.md §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailstack.policy.limits import (
    ConnectionCounter,
    check_daily_limit,
    check_recipient_cap,
    format_utc,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


# --- recipient cap (RFC 5321 §4.5.3.1.10) --------------------------------------------


@pytest.mark.parametrize(
    ("n", "cap", "ok"),
    [
        (1, 10, True),
        (10, 10, True),
        (11, 10, False),
        (12, 10, False),
        (99, 100, True),
        (100, 100, True),
        (101, 100, False),
    ],
)
def test_recipient_cap_boundaries(n: int, cap: int, ok: bool) -> None:
    v = check_recipient_cap(n, cap)
    assert v.allowed is ok
    if not ok:
        assert v.reply.startswith("452 4.5.3 Too many recipients")


def test_recipient_cap_sequence_keeps_first() -> None:
    verdicts = [check_recipient_cap(n, 10) for n in range(1, 16)]
    assert [v.allowed for v in verdicts] == [True] * 10 + [False] * 5


def test_recipient_cap_rejects_bad_n() -> None:
    with pytest.raises(ValueError):
        check_recipient_cap(0, 10)


# --- daily limit over a rolling 24 hours ---------------------------------------------


def test_under_limit() -> None:
    v = check_daily_limit([(NOW - H, 10)], 100, NOW, 5)
    assert v.ok and v.allowed == 5 and v.used == 10 and v.code == 250


def test_exactly_at_limit_then_refused() -> None:
    assert check_daily_limit([(NOW - H, 95)], 100, NOW, 5).ok
    v = check_daily_limit([(NOW - H, 100)], 100, NOW, 1)
    assert not v.ok and v.allowed == 0
    assert (v.code, v.enhanced) == (450, "4.7.1")
    assert v.resume_at == NOW + 23 * H
    assert "2024-05-02 11:00:00 UTC" in v.text


def test_partial_allowance() -> None:
    v = check_daily_limit([(NOW - H, 97)], 100, NOW, 5)
    assert v.allowed == 3 and not v.ok and v.code == 450
    assert "only 3 more" in v.text


def test_window_edges() -> None:
    # a send exactly 24 h old no longer counts; one a microsecond younger does
    assert check_daily_limit([(NOW - 24 * H, 100)], 100, NOW, 1).ok
    v = check_daily_limit([(NOW - 24 * H + timedelta(microseconds=1), 100)], 100, NOW, 1)
    assert not v.ok
    assert v.resume_at == NOW + timedelta(microseconds=1)
    assert "2024-05-01 12:00:01 UTC" in v.text  # rounded up, never too early
    # future entries (clock skew between nodes) are ignored
    assert check_daily_limit([(NOW + H, 100)], 100, NOW, 1).ok


def test_resume_time_is_when_enough_expires() -> None:
    history = [(NOW - 20 * H, 40), (NOW - 10 * H, 40), (NOW - 2 * H, 20)]
    v = check_daily_limit(history, 100, NOW, 1)
    assert not v.ok and v.resume_at == NOW + 4 * H  # the 20 h old send expires first
    history = [(NOW - 2 * H, 80), (NOW - 20 * H, 10), (NOW - 21 * H, 10)]  # any order
    v = check_daily_limit(history, 80, NOW, 1)
    assert v.used == 100 and v.resume_at == NOW + 22 * H  # all three must expire
    v = check_daily_limit(history, 81, NOW, 1)
    assert v.resume_at == NOW + 4 * H  # the two old ones suffice


def test_pending_and_float_timestamps() -> None:
    ts = (NOW - H).timestamp()
    v = check_daily_limit([(ts, 8)], 10, NOW.timestamp(), 1, pending=2)
    assert not v.ok and v.used == 10
    assert check_daily_limit([(ts, 8)], 10, NOW.timestamp(), 1, pending=1).ok


def test_pending_only_never_expires() -> None:
    v = check_daily_limit([], 3, NOW, 1, pending=3)
    assert not v.ok and v.resume_at is None and "when this message is done" in v.text


def test_naive_datetimes_are_utc() -> None:
    naive = datetime(2024, 5, 1, 11, 0, 0)
    assert not check_daily_limit([(naive, 5)], 5, NOW, 1).ok
    assert format_utc(datetime(2024, 5, 1, 1, 2, 3)) == "2024-05-01 01:02:03 UTC"


def test_zero_limit() -> None:
    v = check_daily_limit([], 0, NOW, 1)
    assert not v.ok and v.code == 450


# --- connection cap ------------------------------------------------------------------


def test_connection_cap() -> None:
    c = ConnectionCounter(2)
    assert c.acquire("192.0.2.1").allowed
    assert c.acquire("192.0.2.1").allowed
    v = c.acquire("192.0.2.1")
    assert (v.allowed, v.code, v.enhanced) == (False, 421, "4.7.0")
    assert c.count("192.0.2.1") == 2  # a refusal takes no slot
    assert c.acquire("192.0.2.2").allowed  # other clients unaffected
    c.release("192.0.2.1")
    assert c.acquire("192.0.2.1").allowed


def test_connection_release_is_bounded() -> None:
    c = ConnectionCounter(1)
    c.release("192.0.2.9")  # never acquired: no negative counts
    assert c.count("192.0.2.9") == 0
    c.acquire("192.0.2.9")
    c.release("192.0.2.9")
    c.release("192.0.2.9")
    assert len(c) == 0
    assert c.acquire("192.0.2.9").allowed


def test_ipv6_grouped_by_prefix_and_mapped_v4() -> None:
    c = ConnectionCounter(1)
    assert c.acquire("2001:db8:1:2::1").allowed
    assert not c.acquire("2001:db8:1:2::ffff").allowed  # same /64
    assert c.acquire("2001:db8:1:3::1").allowed
    assert c.acquire("192.0.2.5").allowed
    assert not c.acquire("::ffff:192.0.2.5").allowed
    c128 = ConnectionCounter(1, ipv6_prefix=128)
    assert c128.acquire("2001:db8::1").allowed and c128.acquire("2001:db8::2").allowed

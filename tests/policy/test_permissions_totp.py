"""Pure decisions of the accounts layer: what a grant allows, when unification is
offered (docs/behaviour.md §2), and RFC 6238 code checks with a clock passed in."""

from __future__ import annotations

import pyotp
import pytest

from mailstack.policy import totp
from mailstack.policy.permissions import PERMISSIONS, REQUIRED, allowed, unification


@pytest.mark.parametrize(("action", "needs"), sorted(REQUIRED.items()))
def test_each_action_needs_exactly_its_permission(action: str, needs: str) -> None:
    assert allowed({needs}, action)
    assert not allowed(set(PERMISSIONS) - {needs}, action)
    assert not allowed(None, action)


def test_unknown_actions_are_refused() -> None:
    assert not allowed(set(PERMISSIONS), "delete-everything")


def test_unification_rule() -> None:
    me = 7
    ok = unification("Anna@Example.com", "anna@example.com", me, [(me, {"passwd"})])
    assert ok.allowed
    assert unification("carol@elsewhere.org", "anna@example.com", me,
                       [(me, {"passwd"})]).reason == "your login is not this address"
    assert unification("anna@example.com", "anna@example.com", me,
                       [(me, {"passwd"}), (8, {"read"})]).reason == (
        "other users also have access to this address")
    assert unification("anna@example.com", "anna@example.com", me,
                       [(me, {"read", "send"})]).reason == (
        "you may not change this address's password")
    assert not unification("anna@example.com", "anna@example.com", me, []).allowed


SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_800_000_015.0  # 15 s into step 60_000_000


def code(step_offset: int) -> str:
    return str(pyotp.TOTP(SECRET).at(NOW + 30 * step_offset))


def test_rfc6238_window_is_one_step_each_way() -> None:
    step = totp.step_at(NOW)
    assert step == 60_000_000
    for offset in (-1, 0, 1):
        assert totp.matching_step(SECRET, code(offset), NOW, 0) == step + offset
    for offset in (-2, 2):
        assert totp.matching_step(SECRET, code(offset), NOW, 0) is None


def test_a_code_is_never_accepted_twice() -> None:
    step = totp.step_at(NOW)
    assert totp.matching_step(SECRET, code(0), NOW, last_step=step) is None
    assert totp.matching_step(SECRET, code(-1), NOW, last_step=step) is None
    assert totp.matching_step(SECRET, code(1), NOW, last_step=step) == step + 1


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "12a456", "１２３４５６"])
def test_malformed_codes_are_refused(bad: str) -> None:
    assert totp.matching_step(SECRET, bad, NOW, 0) is None


def test_emergency_codes() -> None:
    codes = totp.new_emergency_codes()
    assert len(codes) == 10 and len(set(codes)) == 10
    for c in codes:
        assert totp.looks_like_emergency_code(c)
        assert totp.hash_emergency_code(c.upper().replace("-", " ")) == \
            totp.hash_emergency_code(c)
    assert not totp.looks_like_emergency_code("123456")


def test_provisioning_uri_names_the_issuer_and_login() -> None:
    uri = totp.provisioning_uri(SECRET, "carol@elsewhere.org", "mail.example.net")
    assert uri.startswith("otpauth://totp/mail.example.net:carol%40elsewhere.org?")
    assert f"secret={SECRET}" in uri

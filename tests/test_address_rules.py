"""Local-part rules of docs/behaviour.md §3, exactly: a table of every refused character
and shape."""

from __future__ import annotations

import pytest

from mailstack.policy.addresses import (
    AddressRuleError,
    address_key,
    check_domain,
    check_local_part,
    parse_new_address,
)

FORBIDDEN = [*" @!#$%^&*()=[]<>,\"/;?", "+", "'", "`", "{", "}", "|", "~", ":", "\\"]


@pytest.mark.parametrize("good", [
    "anna", "anna.alpha", "a", "A-b_c.d9", "x" * 64, "0", "first.middle.last", "_-_",
])
def test_allowed(good: str) -> None:
    check_local_part(good)


@pytest.mark.parametrize("ch", FORBIDDEN)
def test_each_forbidden_character_named_with_position(ch: str) -> None:
    with pytest.raises(AddressRuleError) as err:
        check_local_part(f"ab{ch}cd")
    text = str(err.value)
    assert "position 3" in text
    assert ("space" in text) if ch == " " else (repr(ch) in text)


@pytest.mark.parametrize("ch", ["\x00", "\t", "\n", "\r", "\x1b", "\x7f"])
def test_control_characters(ch: str) -> None:
    with pytest.raises(AddressRuleError) as err:
        check_local_part(f"a{ch}")
    assert "control character" in str(err.value) and "position 2" in str(err.value)


@pytest.mark.parametrize("local,pos", [("josé", 4), ("ünï", 1), ("anna\u200b", 5),
                                        ("a\u00a0b", 2), ("日本", 1)])
def test_non_ascii(local: str, pos: int) -> None:
    with pytest.raises(AddressRuleError) as err:
        check_local_part(local)
    assert "non-ASCII" in str(err.value) and f"position {pos}" in str(err.value)


@pytest.mark.parametrize("local,pos", [(".anna", 1), ("anna.", 5), ("anna..alpha", 6),
                                        ("a...b", 3), (".", 1)])
def test_dots(local: str, pos: int) -> None:
    with pytest.raises(AddressRuleError) as err:
        check_local_part(local)
    assert f"position {pos}" in str(err.value)


def test_length_64_ok_65_refused() -> None:
    check_local_part("a" * 64)
    with pytest.raises(AddressRuleError, match="65 characters"):
        check_local_part("a" * 65)
    with pytest.raises(AddressRuleError, match="empty"):
        check_local_part("")


def test_full_address() -> None:
    a = parse_new_address("Anna.Alpha@Example.COM")
    assert (a.local_part, a.domain) == ("Anna.Alpha", "example.com")
    with pytest.raises(AddressRuleError, match="'@' at position 2"):
        parse_new_address("a@b@example.com")
    with pytest.raises(AddressRuleError, match="no '@'"):
        parse_new_address("anna")
    assert address_key("Anna.Alpha@Example.COM") == "anna.alpha@example.com"


@pytest.mark.parametrize("bad", ["localhost", "-a.com", "a..com", "a_b.com", "exa mple.com",
                                 "a." + "b" * 64 + ".com"])
def test_bad_domains(bad: str) -> None:
    with pytest.raises(AddressRuleError):
        check_domain(bad)


def test_domain_normalised() -> None:
    assert check_domain("Example.COM.") == "example.com"
    assert check_domain("bücher.example") == "xn--bcher-kva.example"

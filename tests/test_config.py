"""The settings model: validation errors name key, value and problem; the annotated
example config is exactly what the model generates."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.config import (
    ConfigError,
    dev_settings,
    load_settings,
    render_example,
    settings_from_dict,
)

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_matches_model() -> None:
    example = (ROOT / "config" / "mailstack.toml").read_text()
    assert example == render_example(), (
        "config/mailstack.toml drifted: regenerate with `mailstack config-example`")


def test_example_config_loads_to_defaults() -> None:
    assert load_settings(ROOT / "config" / "mailstack.toml") == settings_from_dict({})


def test_defaults() -> None:
    s = settings_from_dict({})
    assert s.plan("free").max_recipients_per_message == 10
    assert s.plan("starter").max_recipients_per_message == 100
    assert s.plan("standard").max_recipients_per_message == 100
    assert s.listeners.submissions.port == 465 and s.listeners.submissions.tls == "implicit"
    assert s.listeners.imap.tls == "starttls"
    assert s.database_url.endswith("/mailstack.db")
    assert s.plan("unknown") == s.plan("standard")


@pytest.mark.parametrize("data,key,fragment", [
    ({"listeners": {"imap": {"port": "143"}}}, "listeners.imap.port", "integer"),
    ({"listeners": {"imap": {"port": 70000}}}, "listeners.imap.port", "at most 65535"),
    ({"listeners": {"imap": {"tls": "yes"}}}, "listeners.imap.tls", "one of"),
    ({"server": {"hostnme": "x"}}, "server.hostnme", "unknown setting"),
    ({"server": {"allow_plaintext_auth_on_loopback": "true"}},
     "server.allow_plaintext_auth_on_loopback", "true or false"),
    ({"plans": {"free": {"max_recipients_per_message": 0}}},
     "plans.free.max_recipients_per_message", "at least 1"),
    ({"smtp": {"default_plan": "gold"}}, "smtp.default_plan", "no such plan"),
    ({"server": {"database_url": "mysql://x"}}, "server.database_url", "must start with"),
    ({"server": "x"}, "server", "must be a table"),
])
def test_errors_name_key_value_problem(data: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from_dict(data)
    assert err.value.key == key
    assert fragment in str(err.value)
    assert key in str(err.value)


def test_partial_plan_override_keeps_other_defaults() -> None:
    s = settings_from_dict({"plans": {"free": {"daily_recipients": 7},
                                      "gold": {"max_recipients_per_message": 500}}})
    assert s.plan("free").daily_recipients == 7
    assert s.plan("free").max_recipients_per_message == 10
    assert s.plan("gold").max_recipients_per_message == 500


def test_bad_toml_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[server\nhostname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml")


def test_dev_settings_move_to_loopback_plus_10000() -> None:
    s = dev_settings(settings_from_dict({}))
    ports = {name: getattr(s.listeners, name).port for name in
             ("smtp", "submissions", "submission", "imap", "imaps", "pop3", "pop3s")}
    assert ports == {"smtp": 10025, "submissions": 10465, "submission": 10587,
                     "imap": 10143, "imaps": 10993, "pop3": 10110, "pop3s": 10995}
    assert s.listeners.imaps.address == "127.0.0.1"

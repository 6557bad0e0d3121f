"""Settings of the HTTP side: defaults, dev ports, refusals naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from mailstack.config import ConfigError, acme_methods, dev_settings, settings_from_dict


def test_defaults_and_dev_ports() -> None:
    s = settings_from_dict({})
    ls = s.listeners
    assert (ls.https.port, ls.https.tls, ls.http.port, ls.http.tls) == (443, "implicit", 80,
                                                                          "none")
    assert (ls.metrics.address, ls.metrics.port) == ("127.0.0.1", 8010)
    assert s.client_hostname == "mail.example.net"
    d = dev_settings(s)
    assert (d.listeners.https.port, d.listeners.http.port, d.listeners.metrics.port) == (
        10443, 10080, 18010)
    assert d.client_hostname == "localhost"  # what the dev certificate names
    kept = dev_settings(settings_from_dict({"web": {"advertised_hostname": "mx.example"}}))
    assert kept.client_hostname == "mx.example"
    acme = settings_from_dict({"tls": {"acme": True}})
    assert acme.cert_path == acme.data_dir / "acme" / "cert.pem"
    # auto: HTTP-01 first, TLS-ALPN-01 (RFC 8737) next; without port 80 only TLS-ALPN-01
    assert acme_methods(acme) == ["http-01", "tls-alpn-01"]
    no80 = settings_from_dict({"tls": {"acme": True}, "listeners": {"http": {"enabled": False}}})
    assert acme_methods(no80) == ["tls-alpn-01"]
    only = settings_from_dict({"tls": {"acme": True, "acme_challenge": "tls-alpn-01"}})
    assert acme_methods(only) == ["tls-alpn-01"]


@pytest.mark.parametrize("data,key", [
    ({"tls": {"acme": True, "acme_challenge": "http-01"},
      "listeners": {"http": {"enabled": False}}}, "tls.acme_challenge"),
    ({"tls": {"acme": True, "acme_challenge": "tls-alpn-01"},
      "listeners": {"https": {"enabled": False}}}, "tls.acme_challenge"),
    ({"tls": {"acme": True}, "listeners": {"http": {"enabled": False},
                                           "https": {"enabled": False}}},
     "tls.acme_challenge"),
    ({"tls": {"acme": True, "acme_challenge": "dns-01"}}, "tls.acme_challenge"),
    ({"listeners": {"http": {"tls": "implicit"}}}, "listeners.http.tls"),
    ({"listeners": {"metrics": {"tls": "starttls"}}}, "listeners.metrics.tls"),
    ({"listeners": {"https": {"tls": "none"}}}, "listeners.https.tls"),
    ({"web": {"mta_sts_mode": "strict"}}, "web.mta_sts_mode"),
    ({"web": {"mta_sts_max_age": 0}}, "web.mta_sts_max_age"),
    ({"web": {"metrics_tokn": "x"}}, "web.metrics_tokn"),
])
def test_bad_web_settings_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        settings_from_dict(data)
    assert exc.value.key == key

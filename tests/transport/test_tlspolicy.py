"""The pure transport-security decision (RFC 7672 §2.2, RFC 8461 §4-5) and the MTA-STS
parsers (RFC 8461 §3.1-3.2, §4.1), without sockets."""

from __future__ import annotations

import datetime as dt
import ssl
from typing import Any

import pytest

from mailstack.outbound.dane import TlsaRecord, record_for
from mailstack.outbound.dnssec import TlsaLookup, parse_resolver
from mailstack.outbound.mtasts import (
    StsError,
    StsPolicy,
    mx_matches,
    parse_policy,
    parse_txt,
)
from mailstack.outbound.tlspolicy import PolicyFacts, decide, pkix_problem, trust_store
from tests.transport.certs import NOW, Pki, issue, make_pki

CLOCK = NOW.timestamp


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki("Policy")


def sink_list() -> tuple[list[tuple[str, ...]], Any]:
    seen: list[tuple[str, ...]] = []
    return seen, lambda *args: seen.append(args)


EE = TlsaRecord(3, 1, 1, b"\1" * 32)
ENFORCE = StsPolicy("enforce", ("mx.d.test", "*.pool.d.test"), 86400)


def test_insecure_mx_without_policy_is_opportunistic() -> None:
    req = decide(PolicyFacts("d.test", "mx.d.test", False), clock=CLOCK)
    assert (req.policy, req.require_tls, req.verify, req.defer_reason) == (
        "opportunistic", False, None, "")


def test_failed_tlsa_lookup_defers_the_host_never_downgrades() -> None:
    seen, sink = sink_list()
    req = decide(PolicyFacts("d.test", "mx.d.test", True, TlsaLookup("failed", detail="SERVFAIL"),
                             ENFORCE), clock=CLOCK, sink=sink)
    assert req.defer_reason and "SERVFAIL" in req.defer_reason and req.require_tls
    assert req.verify is not None and req.verify([b"x"], "mx.d.test")  # always refuses
    assert seen == [("d.test", "tlsa", "dnssec-invalid", "mx.d.test", "SERVFAIL")]


def test_usable_tlsa_means_dane_and_wins_over_mta_sts() -> None:
    req = decide(PolicyFacts("d.test", "mx.d.test", True, TlsaLookup("secure", (EE,), "mx.d.test"),
                             ENFORCE), clock=CLOCK)
    assert (req.policy, req.require_tls, req.ssl_context) == ("dane", True, None)
    assert req.verify is not None and "DANE" in (req.verify([], "mx.d.test") or "")


def test_unusable_tlsa_means_mandatory_unauthenticated_tls() -> None:
    pkix = TlsaRecord(1, 1, 1, b"\1" * 32)
    req = decide(PolicyFacts("d.test", "mx.d.test", True, TlsaLookup("secure", (pkix,), "mx")),
                 clock=CLOCK)
    assert (req.policy, req.require_tls, req.verify) == ("dane-unusable", True, None)


@pytest.mark.parametrize("status", ["denied", "insecure"])
def test_no_dane_falls_to_mta_sts_enforce(status: str) -> None:
    made: list[ssl.SSLContext] = []

    def ctx() -> ssl.SSLContext:
        made.append(ssl.create_default_context())
        return made[-1]

    req = decide(PolicyFacts("d.test", "a.pool.d.test", True, TlsaLookup(status), ENFORCE),  # type: ignore[arg-type]
                 clock=CLOCK, pkix_context=ctx)
    assert (req.policy, req.require_tls) == ("mta-sts", True)
    assert req.ssl_context is made[0] and req.ssl_context.check_hostname


def test_enforce_policy_not_listing_the_mx_defers() -> None:
    seen, sink = sink_list()
    req = decide(PolicyFacts("d.test", "other.example", False, None, ENFORCE), clock=CLOCK,
                 sink=sink)
    assert req.defer_reason and "RFC 8461" in req.defer_reason
    assert seen[0][1:3] == ("sts", "validation-failure")


def test_testing_mode_delivers_but_reports(pki: Pki) -> None:
    seen, sink = sink_list()
    testing = StsPolicy("testing", ("mx.d.test",), 60)
    req = decide(PolicyFacts("d.test", "mx.d.test", False, None, testing), clock=CLOCK,
                 trust=trust_store([pki.root.pem]), sink=sink)
    assert (req.policy, req.require_tls, req.ssl_context) == ("mta-sts-testing", False, None)
    wrong = pki.leaf("elsewhere.test")
    assert req.verify is not None
    assert req.verify([wrong.der, pki.inter.der], "mx.d.test") is None  # never blocks
    assert seen[-1][2] == "certificate-host-mismatch"
    good = pki.leaf("mx.d.test")
    assert req.verify([good.der, pki.inter.der], "mx.d.test") is None
    assert seen[-1][2] == "success"


def test_none_mode_is_opportunistic() -> None:
    req = decide(PolicyFacts("d.test", "x", False, None, StsPolicy("none", (), 60)),
                 clock=CLOCK)
    assert req.policy == "opportunistic"


def test_enforce_verifier_refuses_untrusted_expired_and_misnamed(pki: Pki) -> None:
    trust = trust_store([pki.root.pem])
    now = NOW
    good = pki.leaf("mx.d.test")
    assert pkix_problem([good.der, pki.inter.der], "mx.d.test", trust, now) is None
    assert pkix_problem([good.der, pki.inter.der], "mx2.d.test", trust, now)[0] == (  # type: ignore[index]
        "certificate-host-mismatch")
    stranger = make_pki("Stranger")
    other = stranger.leaf("mx.d.test")
    assert pkix_problem([other.der, stranger.inter.der], "mx.d.test", trust, now)[0] == (  # type: ignore[index]
        "certificate-not-trusted")
    old = pki.leaf("mx.d.test", not_before=now - dt.timedelta(days=9),
                   not_after=now - dt.timedelta(days=1))
    assert pkix_problem([old.der, pki.inter.der], "mx.d.test", trust, now)[0] == (  # type: ignore[index]
        "certificate-expired")
    req = decide(PolicyFacts("d.test", "mx.d.test", False, None, ENFORCE), clock=CLOCK,
                 trust=trust)
    assert req.verify is not None
    assert req.verify([good.der, pki.inter.der], "mx.d.test") is None
    assert "MTA-STS" in (req.verify([other.der, stranger.inter.der], "mx.d.test") or "")


def test_dane_verifier_reports_success_and_failure() -> None:
    leaf = issue("mx.r.test", names=("mx.r.test",))
    seen, sink = sink_list()
    req = decide(PolicyFacts("r.test", "mx.r.test", True,
                             TlsaLookup("secure", (record_for(leaf.cert),), "mx.r.test")),
                 clock=CLOCK, sink=sink)
    assert req.verify is not None
    assert req.verify([leaf.der], "mx.r.test") is None
    assert req.verify([issue("z").der], "mx.r.test")
    assert [s[2] for s in seen] == ["success", "validation-failure"]


# --- MTA-STS parsing -----------------------------------------------------------------


@pytest.mark.parametrize("records,expected", [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1;id=abc"], "abc"),
    (["something else", "v=STSv1; id=x1"], "x1"),
    (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # more than one: no policy (§3.1)
    (["v=STSv1;"], None),
    (["v=STSv1; id=" + "a" * 33], None),
    (["v=STSv1; id=bad-char"], None),
    (["v=STSv10; id=a"], None),
    ([], None),
])
def test_parse_txt(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


def test_parse_policy_valid_and_lenient_about_unknown_keys() -> None:
    p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
                     "mx: *.example.net\r\nmax_age: 604800\r\nfuture: thing\r\n", "id1")
    assert (p.mode, p.mx, p.max_age, p.policy_id) == (
        "enforce", ("mail.example.com", "*.example.net"), 604800, "id1")
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").mode == "none"


@pytest.mark.parametrize("text", [
    "mode: enforce\nmx: a\nmax_age: 1\n",
    "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
    "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
    "version: STSv1\nmode: enforce\nmx: a\nmax_age: 31557601\n",
    "version: STSv1\nmode: enforce\nmax_age: 10\n",
    "version: STSv1\nmode enforce\n",
])
def test_parse_policy_refuses_invalid(text: str) -> None:
    with pytest.raises(StsError) as info:
        parse_policy(text)
    assert info.value.result_type == "sts-policy-invalid"


def test_mx_patterns() -> None:
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert mx_matches("*.example.com", "mx1.example.com")
    assert not mx_matches("*.example.com", "a.b.example.com")
    assert not mx_matches("*.example.com", "example.com")
    assert not mx_matches("mail.example.com", "mail.example.org")


def test_resolver_setting() -> None:
    assert parse_resolver("127.0.0.1:5353, [::1]:53,192.0.2.1") == [
        ("127.0.0.1", 5353), ("::1", 53), ("192.0.2.1", 53)]
    assert parse_resolver("")  # the system's

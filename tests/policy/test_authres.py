"""The sender checks without the network: the SPF evaluator (RFC 7208) over a fake
resolver (the internet is what is faked: answers are real dnspython rdata), DMARC
record parsing and alignment (RFC 7489), and the Authentication-Results handling
(RFC 8601). The same code runs over the wire against the DNS rig in
tests/smtp/test_sender_auth.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest

from mailstack.policy.authres import dmarc as dm
from mailstack.policy.authres import spf
from mailstack.policy.authres.dkimcheck import DkimSignature
from mailstack.policy.authres.lookups import Lookups
from mailstack.policy.authres.results import authserv_id, remove_forged


@dataclass
class FakeAnswer:
    status: str
    rdata: tuple[Any, ...] = ()
    detail: str = ""


@dataclass
class FakeDns:
    """name -> {type: [rdata text]}; ``fail`` names answer SERVFAIL; every query is
    recorded."""

    records: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    fail: set[str] = field(default_factory=set)
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def query(self, name: str, rdtype: str) -> FakeAnswer:
        self.asked.append((name, rdtype))
        if name in self.fail:
            return FakeAnswer("failure", detail="SERVFAIL")
        at = self.records.get(name)
        if at is None:
            return FakeAnswer("nxdomain")
        texts = at.get(rdtype, [])
        if not texts:
            return FakeAnswer("nodata")
        kind = dns.rdatatype.from_text(rdtype)
        return FakeAnswer("records", tuple(
            dns.rdata.from_text(dns.rdataclass.IN, kind, t) for t in texts))


def txt(*values: str) -> dict[str, list[str]]:
    return {"TXT": [f'"{v}"' for v in values]}


async def check(records: dict[str, dict[str, list[str]]], ip: str = "192.0.2.3",
                domain: str = "example.com", sender: str = "user@example.com",
                fail: set[str] | None = None) -> spf.SpfOutcome:
    lookups = Lookups(FakeDns(records, fail or set()), 5.0)
    return await spf.check_host(lookups, ip, domain, sender, "helo.example", "mx.test")


# --- SPF results -----------------------------------------------------------------------


@pytest.mark.parametrize(("record", "result"), [
    ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
    ("v=spf1 ip4:198.51.100.1 -all", "fail"),
    ("v=spf1 ip4:198.51.100.1 ~all", "softfail"),
    ("v=spf1 ip4:198.51.100.1 ?all", "neutral"),
    ("v=spf1 ip4:198.51.100.1", "neutral"),  # §4.7: no match, no redirect
    ("v=spf1 -ip4:192.0.2.3 +all", "fail"),
    ("v=spf1 ip6:2001:db8::/32 -all", "fail"),  # an IPv4 client never matches ip6
    ("v=spf1 a -all", "pass"),
    ("v=spf1 a:other.example/24 -all", "pass"),
    ("v=spf1 mx -all", "pass"),
    ("v=spf1 mx:nomx.example -all", "fail"),
    ("v=spf1 exists:%{ir}.bl.example -all", "pass"),
    ("v=spf1 bogus:x -all", "permerror"),  # unknown mechanism
    ("v=spf1 ip4:192.0.2.300 -all", "permerror"),
    ("v=spf1 a/33 -all", "permerror"),
    ("v=spf1 foo=bar -all", "fail"),  # unknown modifiers are ignored (§6)
    ("v=spf1 redirect=other.example redirect=x.example", "permerror"),
    ("v=spf10 -all", "none"),  # not an SPF record
])
async def test_spf_mechanisms(record: str, result: str) -> None:
    records = {
        "example.com": {**txt(record), "A": ["192.0.2.3"], "MX": ["10 mx.example.com."]},
        "mx.example.com": {"A": ["192.0.2.3"]},
        "other.example": {"A": ["192.0.2.200"]},
        "nomx.example": {"A": ["192.0.2.3"]},
        "3.2.0.192.bl.example": {"A": ["127.0.0.2"]},
    }
    assert (await check(records)).result == result


async def test_spf_none_and_two_records() -> None:
    assert (await check({"example.com": {"A": ["192.0.2.3"]}})).result == "none"
    assert (await check({})).result == "none"
    two = await check({"example.com": txt("v=spf1 -all", "v=spf1 +all")})
    assert two.result == "permerror" and "2 SPF records" in two.problem
    assert (await check({}, domain="nodot")).result == "none"  # §4.3


async def test_spf_include_and_redirect() -> None:
    base = {"inc.example": txt("v=spf1 ip4:192.0.2.3 -all"),
            "no.example": txt("v=spf1 -all")}
    assert (await check({**base, "example.com": txt("v=spf1 include:inc.example -all")})
            ).result == "pass"
    # include of a fail is "no match": evaluation goes on (§5.2)
    assert (await check({**base, "example.com": txt("v=spf1 include:no.example ~all")})
            ).result == "softfail"
    # include of a domain without a record is permerror (§5.2)
    assert (await check({**base, "example.com": txt("v=spf1 include:none.example -all")})
            ).result == "permerror"
    # redirect only applies when nothing matched, and takes the target's result
    assert (await check({**base, "example.com": txt("v=spf1 redirect=inc.example")})
            ).result == "pass"
    assert (await check({**base, "example.com": txt("v=spf1 +all redirect=no.example")})
            ).result == "pass"
    assert (await check({**base, "example.com": txt("v=spf1 redirect=none.example")})
            ).result == "permerror"


async def test_spf_lookup_limits() -> None:
    many = " ".join(f"a:h{i}.example" for i in range(11))
    hosts = {f"h{i}.example": {"A": ["198.51.100.1"]} for i in range(11)}
    out = await check({"example.com": txt(f"v=spf1 {many} -all"), **hosts})
    assert out.result == "permerror" and "10 DNS-querying terms" in out.problem
    ten = " ".join(f"a:h{i}.example" for i in range(10))
    assert (await check({"example.com": txt(f"v=spf1 {ten} -all"), **hosts})
            ).result == "fail"
    # a third void lookup (no such name) is a permerror (§4.6.4)
    voids = "a:v1.example a:v2.example a:v3.example"
    out = await check({"example.com": txt(f"v=spf1 {voids} -all")})
    assert out.result == "permerror" and "void" in out.problem
    two = "a:v1.example a:v2.example"
    assert (await check({"example.com": txt(f"v=spf1 {two} -all")})).result == "fail"
    # more than 10 MX names
    mx = {"MX": [f"{i} m{i}.example." for i in range(11)]}
    out = await check({"example.com": {**txt("v=spf1 mx -all"), **mx}})
    assert out.result == "permerror" and "MX" in out.problem


async def test_spf_dns_failure_is_temperror() -> None:
    out = await check({}, fail={"example.com"})
    assert out.result == "temperror"
    out = await check({"example.com": txt("v=spf1 a:broken.example -all")},
                      fail={"broken.example"})
    assert out.result == "temperror"


async def test_spf_ipv6_client_and_mapped_ipv4() -> None:
    records = {"example.com": {**txt("v=spf1 a//64 ip4:192.0.2.3 -all"),
                               "AAAA": ["2001:db8::1"]}}
    assert (await check(records, ip="2001:db8::abcd")).result == "pass"
    assert (await check(records, ip="2001:db9::1")).result == "fail"
    assert (await check(records, ip="::ffff:192.0.2.3")).result == "pass"  # §5


async def test_spf_ptr_mechanism() -> None:
    records = {"example.com": txt("v=spf1 ptr -all"),
               "3.2.0.192.in-addr.arpa": {"PTR": ["mail.example.com."]},
               "mail.example.com": {"A": ["192.0.2.3"]}}
    assert (await check(records)).result == "pass"
    records["mail.example.com"] = {"A": ["192.0.2.4"]}  # not forward-confirmed
    assert (await check(records)).result == "fail"


async def test_spf_exp_explanation() -> None:
    records = {"example.com": txt("v=spf1 -all exp=why.example.com"),
               "why.example.com": txt("%{i} is not one of %{d}'s designated mail servers")}
    out = await check(records)
    assert out.result == "fail"
    assert out.explanation == "192.0.2.3 is not one of example.com's designated mail servers"
    out = await check({"example.com": txt("v=spf1 -all")})
    assert out.explanation.startswith("SPF record of example.com does not designate")


# --- SPF macros (RFC 7208 §7.4, the RFC's own examples) ----------------------------------


@pytest.mark.parametrize(("macro", "expanded"), [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}",
     "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%%%_%-", "% %20"),
    ("%{L}", "strong-bad"),
])
async def test_spf_macro_examples(macro: str, expanded: str) -> None:
    state = spf._State(spf.normalize_ip("192.0.2.3"), "strong-bad@email.example.com",
                       "helo.example", Lookups(FakeDns(), 1.0), "mx.test")
    assert await spf._expand(state, macro, "email.example.com") == expanded


async def test_spf_macro_ipv6_and_errors() -> None:
    state = spf._State(spf.normalize_ip("2001:db8::cb01"), "strong-bad@email.example.com",
                       "helo.example", Lookups(FakeDns(), 1.0), "mx.test")
    assert await spf._expand(state, "%{ir}.%{v}._spf.%{d2}", "email.example.com") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")
    with pytest.raises(spf._Perm):
        await spf._expand(state, "%{c}", "example.com")  # c only in exp= (§7.2)
    with pytest.raises(spf._Perm):
        await spf._expand(state, "%x", "example.com")


# --- DMARC ------------------------------------------------------------------------------


def test_dmarc_record_parsing() -> None:
    r = dm.parse_record("v=DMARC1; p=quarantine; sp=reject; pct=50; adkim=s")
    assert r == dm.DmarcRecord("quarantine", "reject", 50, "s", "r")
    assert dm.parse_record("v=DMARC1; p=reject").sp == "reject"  # type: ignore[union-attr]
    assert dm.parse_record("v=DMARC1; p=bogus") is None
    assert dm.parse_record("v=DMARC1; p=bogus; rua=mailto:x@y").p == "none"  # type: ignore[union-attr]
    assert dm.parse_record("v=spf1 -all") is None
    assert dm.parse_record("p=reject; v=DMARC1") is None  # v must come first


def test_organizational_domain_from_the_bundled_list() -> None:
    assert dm.organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert dm.organizational_domain("a.b.example.com") == "example.com"
    assert dm.organizational_domain("co.uk") == "co.uk"
    assert dm.aligned("news.example.com", "example.com", "r")
    assert not dm.aligned("news.example.com", "example.com", "s")
    assert not dm.aligned("example.co.uk", "other.co.uk", "r")


def test_dmarc_evaluation() -> None:
    found = dm.Discovery("found", dm.parse_record("v=DMARC1; p=reject; pct=20"),
                         "example.com")
    fail = spf.SpfOutcome("fail", "example.com")
    ok = spf.SpfOutcome("pass", "example.com")
    out = dm.evaluate("example.com", found, fail, "example.com", [], lambda: 0.1)
    assert (out.result, out.disposition) == ("fail", "reject")
    out = dm.evaluate("example.com", found, fail, "example.com", [], lambda: 0.5)
    assert (out.result, out.disposition) == ("fail", "quarantine")  # outside pct (§6.6.4)
    assert dm.evaluate("example.com", found, ok, "example.com", [], lambda: 0).result == "pass"
    limited = DkimSignature("policy", "example.com", "s", "abc")
    assert dm.evaluate("example.com", found, fail, "example.com", [limited],
                       lambda: 0).result == "fail"
    temp = spf.SpfOutcome("temperror", "example.com")
    assert dm.evaluate("example.com", found, temp, "example.com", [],
                       lambda: 0).result == "temperror"


# --- Authentication-Results -------------------------------------------------------------


def test_authserv_id_skips_comments() -> None:
    assert authserv_id(b" mx.example; spf=pass") == "mx.example"
    assert authserv_id(b" (nested (comment)) MX.Example 1; none") == "mx.example"
    assert authserv_id(b"\r\n\tmx.example;\r\n\tdkim=pass") == "mx.example"


def test_remove_forged_keeps_other_admds_and_the_body() -> None:
    msg = (b"Authentication-Results: mx.test; dkim=pass\r\n"
           b"X-Other: 1\r\n"
           b"Authentication-Results: (c) MX.TEST;\r\n\tspf=pass\r\n"
           b"Authentication-Results: elsewhere.example; spf=pass\r\n"
           b"Subject: s\r\n\r\nAuthentication-Results: mx.test; in the body\r\n")
    out, n = remove_forged(msg, "mx.test")
    assert n == 2
    assert out == (b"X-Other: 1\r\nAuthentication-Results: elsewhere.example; spf=pass\r\n"
                   b"Subject: s\r\n\r\nAuthentication-Results: mx.test; in the body\r\n")


# --- DKIM bounds (hostile input) ----------------------------------------------------------


def test_at_most_ten_signatures_are_verified_and_twenty_keys_fetched() -> None:
    from mailstack.policy.authres.dkimcheck import (
        MAX_KEY_NAMES,
        key_names,
        verify_dkim,
    )
    sigs = b"".join(f"DKIM-Signature: v=1; a=rsa-sha256; d=d{i}.example; s=s; h=from; "
                    f"bh=AAAA; b=BBBB\r\n".encode() for i in range(30))
    seals = b"".join(f"ARC-Seal: i={i}; a=rsa-sha256; cv=pass; d=a{i}.example; s=s; "
                     f"b=CCCC\r\n".encode() for i in range(1, 40))
    msg = sigs + seals + b"From: a@d0.example\r\n\r\nbody\r\n"
    names = key_names(msg)
    assert len(names) == MAX_KEY_NAMES
    assert names[:10] == [f"s._domainkey.d{i}.example" for i in range(10)]
    results = verify_dkim(msg, {})
    assert len(results) == 30
    assert {r.result for r in results[10:]} == {"neutral"}
    assert {r.result for r in results[:10]} == {"permerror"}  # no key fetched


# --- the answer cache in front of the resolver ---------------------------------------------


async def test_caching_resolver_keeps_answers_for_their_ttl_never_failures() -> None:
    import asyncio

    from mailstack.policy.authres.lookups import CachingResolver

    now = [0.0]
    fake = FakeDns({"example.com": txt("v=spf1 -all")}, fail={"broken.example"})
    cache = CachingResolver(fake, max_ttl=300, negative_ttl=30, monotonic=lambda: now[0])
    # concurrent askers of one name share one query
    got = await asyncio.gather(*(cache.query("example.com", "TXT") for _ in range(5)))
    assert {a.status for a in got} == {"records"} and len(fake.asked) == 1
    await cache.query("EXAMPLE.com.", "txt")
    assert len(fake.asked) == 1
    now[0] = 299.0  # dnspython's default TTL of a from_text rdata set is 0 -> negative_ttl
    await cache.query("example.com", "TXT")
    assert len(fake.asked) == 2  # expired after 30 s
    await cache.query("nothing.example", "A")
    await cache.query("nothing.example", "A")
    assert fake.asked.count(("nothing.example", "A")) == 1  # negative answers kept
    await cache.query("broken.example", "TXT")
    await cache.query("broken.example", "TXT")
    assert fake.asked.count(("broken.example", "TXT")) == 2  # failures never kept

"""DANE on the real DNSSEC rig (nsd + unbound) against a real TLS-speaking remote MX:
every DNS case of RFC 7672 §2.2 from the validating resolver's real answers, and the
verifier against the real peer chain of a real handshake."""

from __future__ import annotations

import hashlib
from typing import Any

from mailstack.outbound.dane import record_for
from mailstack.outbound.dnssec import (
    SecureResolver,
    check_validating,
    lookup_mx,
    lookup_tlsa,
)
from mailstack.outbound.security import TransportSecurity
from tests.dnsrig import DnsRig
from tests.transport.certs import Pki, issue, write_chain
from tests.transport.conftest import execute


def security(rig: DnsRig, store: Any, **kw: Any) -> TransportSecurity:
    return TransportSecurity(SecureResolver([rig.resolver], timeout=5), store,
                             mta_sts=False, **kw)


def zone_records(tlsa: list[str], mx: str = "mx") -> list[str]:
    return ["@ IN MX 10 " + mx, "mx IN A 127.0.0.1",
            *(f"_25._tcp.mx IN TLSA {t}" for t in tlsa)]


async def route(sec: TransportSecurity, domain: str) -> tuple[str, bool, Any]:
    """What routing does: MX lookup through the same resolver, then tls_policy."""
    mx = await lookup_mx(sec.resolver, domain)
    assert mx.status == "records", mx
    host = mx.records[0].split()[1].rstrip(".")
    return host, mx.secure, await sec(domain, host, mx.secure)


async def test_matching_dane_ee_delivers_authenticated(dns_rig: DnsRig, pki: Pki,
                                                       remote_mx: Any, sqlite_store: Any,
                                                       tmp_path: Any) -> None:
    # DANE-EE ignores names: the certificate names some other host (RFC 7672 §3.1.1).
    leaf = issue("unrelated.example", names=("unrelated.example",))
    server = await remote_mx(*write_chain(tmp_path, "ee", leaf))
    dns_rig.publish("ee.test", zone_records([record_for(leaf.cert).text()]))
    sec = security(dns_rig, sqlite_store)
    host, secure, req = await route(sec, "ee.test")
    assert (host, secure, req.policy, req.require_tls) == ("mx.ee.test", True, "dane", True)
    out = await execute(req, server.port, host)
    assert out.delivered and out.tls and out.authenticated, out
    assert server.received and server.received[0][1] is True  # arrived over TLS
    assert sec.results.counts and {k.result_type for k in sec.results.counts} == {"success"}


async def test_mismatching_tlsa_defers_and_sends_nothing(dns_rig: DnsRig, remote_mx: Any,
                                                         sqlite_store: Any,
                                                         tmp_path: Any) -> None:
    leaf = issue("mx.bad.test", names=("mx.bad.test",))
    server = await remote_mx(*write_chain(tmp_path, "bad", leaf))
    other = issue("mx.bad.test", names=("mx.bad.test",))  # another key
    dns_rig.publish("bad.test", zone_records([record_for(other.cert).text()]))
    sec = security(dns_rig, sqlite_store)
    host, _, req = await route(sec, "bad.test")
    assert req.policy == "dane"
    out = await execute(req, server.port, host)
    assert not out.delivered and out.tls and "DANE" in out.reason
    assert server.received == []  # no DATA reached the remote server
    assert any(k.result_type == "validation-failure" for k in sec.results.counts)


async def test_dane_ta_with_test_ca(dns_rig: DnsRig, pki: Pki, remote_mx: Any,
                                    sqlite_store: Any, tmp_path: Any) -> None:
    ta = f"2 0 1 {hashlib.sha256(pki.inter.der).hexdigest()}"
    good = pki.leaf("mx.ta.test")
    server = await remote_mx(*write_chain(tmp_path, "ta", good, pki.inter))
    dns_rig.publish("ta.test", zone_records([ta]))
    sec = security(dns_rig, sqlite_store)
    host, _, req = await route(sec, "ta.test")
    out = await execute(req, server.port, host)
    assert out.delivered and out.authenticated, out

    # Same TA, but the leaf names neither the MX host nor the domain (§3.2.2).
    wrong = pki.leaf("elsewhere.example")
    server2 = await remote_mx(*write_chain(tmp_path, "ta2", wrong, pki.inter))
    out = await execute(req, server2.port, host)
    assert not out.delivered and "do not match" in out.reason
    assert server2.received == []

    # The chain must really lead to the TA: a leaf from another CA is refused.
    stranger = issue("mx.ta.test", names=("mx.ta.test",))
    server3 = await remote_mx(*write_chain(tmp_path, "ta3", stranger, pki.inter))
    out = await execute(req, server3.port, host)
    assert not out.delivered and "not issued and signed" in out.reason


async def test_unusable_only_tlsa_means_tls_without_authentication(
        dns_rig: DnsRig, remote_mx: Any, sqlite_store: Any, tmp_path: Any) -> None:
    leaf = issue("mx.unusable.test", names=("mx.unusable.test",))
    server = await remote_mx(*write_chain(tmp_path, "u", leaf))
    pkix_ee = f"1 1 1 {record_for(leaf.cert).data.hex()}"  # PKIX-EE: unusable (§3.1.3)
    dns_rig.publish("unusable.test", zone_records([pkix_ee, "0 0 1 " + "00" * 32]))
    sec = security(dns_rig, sqlite_store)
    host, _, req = await route(sec, "unusable.test")
    assert (req.policy, req.require_tls, req.verify) == ("dane-unusable", True, None)
    out = await execute(req, server.port, host)
    assert out.delivered and out.tls and not out.authenticated


async def test_starttls_withheld_while_tlsa_exists_defers(dns_rig: DnsRig, remote_mx: Any,
                                                          sqlite_store: Any) -> None:
    leaf = issue("mx.plain.test", names=("mx.plain.test",))
    server = await remote_mx(None)  # no STARTTLS offered
    dns_rig.publish("plain.test", zone_records([record_for(leaf.cert).text()]))
    sec = security(dns_rig, sqlite_store)
    host, _, req = await route(sec, "plain.test")
    out = await execute(req, server.port, host)
    assert not out.delivered and "STARTTLS" in out.reason
    assert server.received == []
    assert any(k.result_type == "starttls-not-supported" for k in sec.results.counts)


async def test_bogus_signature_defers(dns_rig: DnsRig, remote_mx: Any, sqlite_store: Any,
                                      tmp_path: Any) -> None:
    leaf = issue("mx.bogus.test", names=("mx.bogus.test",))
    records = zone_records([record_for(leaf.cert).text()])
    dns_rig.publish("bogus.test", records)
    sec = security(dns_rig, sqlite_store)
    _, _, req = await route(sec, "bogus.test")
    assert req.policy == "dane" and not req.defer_reason
    # Re-signed with a key the parent's DS does not name: unbound answers SERVFAIL.
    dns_rig.publish("bogus.test", records, mode="bogus")
    assert (await lookup_mx(sec.resolver, "bogus.test")).status == "failure"
    tlsa = await lookup_tlsa(sec.resolver, "mx.bogus.test")
    assert tlsa.status == "failed"
    # Routing that still had the MX host (e.g. from an earlier answer) must defer it.
    req = await sec("bogus.test", "mx.bogus.test", True)
    assert req.defer_reason and req.require_tls
    server = await remote_mx(*write_chain(tmp_path, "bg", leaf))
    out = await execute(req, server.port, "mx.bogus.test")
    assert not out.delivered and server.received == []
    assert any(k.result_type == "dnssec-invalid" for k in sec.results.counts)


async def test_bogus_tlsa_behind_cname_defers_host(dns_rig: DnsRig,
                                                   sqlite_store: Any) -> None:
    """Only the TLSA RRset is bogus (a CNAME into a badly signed zone): the MX and the
    address are fine, yet the host is deferred, never downgraded (RFC 7672 §2.2)."""
    dns_rig.publish("badtlsa-target.test", ["x IN TXT filler",
                                            "_25._tcp.mx IN TLSA 3 1 1 " + "11" * 32],
                    mode="bogus")
    dns_rig.publish("badtlsa.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                     "_25._tcp.mx IN CNAME _25._tcp.mx.badtlsa-target.test."])
    sec = security(dns_rig, sqlite_store)
    _host, secure, req = await route(sec, "badtlsa.test")
    assert secure and req.defer_reason and "TLSA" in req.defer_reason


async def test_unsigned_zone_is_opportunistic(dns_rig: DnsRig, remote_mx: Any,
                                              sqlite_store: Any, tmp_path: Any) -> None:
    leaf = issue("mx.unsigned.test", names=("mx.unsigned.test",))
    server = await remote_mx(*write_chain(tmp_path, "us", leaf))
    other = issue("x", names=("x",))
    # TLSA published but unsigned: it must be ignored (RFC 7672 §2.1).
    dns_rig.publish("unsigned.test", zone_records([record_for(other.cert).text()]),
                    mode="unsigned")
    sec = security(dns_rig, sqlite_store)
    host, secure, req = await route(sec, "unsigned.test")
    assert (secure, req.policy, req.require_tls, req.verify) == (
        False, "opportunistic", False, None)
    out = await execute(req, server.port, host)
    assert out.delivered and out.tls and not out.authenticated


async def test_secure_denial_is_opportunistic(dns_rig: DnsRig, sqlite_store: Any) -> None:
    dns_rig.publish("notlsa.test", zone_records([]))
    sec = security(dns_rig, sqlite_store)
    tlsa = await lookup_tlsa(sec.resolver, "mx.notlsa.test")
    assert tlsa.status == "denied"
    _, secure, req = await route(sec, "notlsa.test")
    assert secure and req.policy == "opportunistic" and not req.require_tls


async def test_insecure_mx_host_address_skips_dane(dns_rig: DnsRig,
                                                   sqlite_store: Any) -> None:
    """Signed MX pointing at a host in an unsigned zone: no DANE (RFC 7672 §2.2.2)."""
    dns_rig.publish("insecurehost.test", ["mx IN A 127.0.0.1",
                                          "_25._tcp.mx IN TLSA 3 1 1 " + "22" * 32],
                    mode="unsigned")
    dns_rig.publish("securemx.test", ["@ IN MX 10 mx.insecurehost.test."])
    sec = security(dns_rig, sqlite_store)
    host, secure, req = await route(sec, "securemx.test")
    assert host == "mx.insecurehost.test" and secure
    assert (await lookup_tlsa(sec.resolver, host)).status == "insecure"
    assert req.policy == "opportunistic"


async def test_secure_cname_mx_host_uses_expanded_name_then_original(
        dns_rig: DnsRig, sqlite_store: Any) -> None:
    """RFC 7672 §2.2.2: TLSA first at the CNAME-expanded name, then the original."""
    dns_rig.publish("cnametarget.test", ["real IN A 127.0.0.1",
                                         "_25._tcp.real IN TLSA 3 1 1 " + "33" * 32])
    dns_rig.publish("cname.test", ["@ IN MX 10 mx", "mx IN CNAME real.cnametarget.test.",
                                   "alias IN CNAME other.cnametarget.test.",
                                   "_25._tcp.alias IN TLSA 3 1 1 " + "44" * 32])
    dns_rig.publish("cnametarget.test", ["real IN A 127.0.0.1", "other IN A 127.0.0.1",
                                         "_25._tcp.real IN TLSA 3 1 1 " + "33" * 32])
    sec = security(dns_rig, sqlite_store)
    first = await lookup_tlsa(sec.resolver, "mx.cname.test")
    assert (first.status, first.base) == ("secure", "real.cnametarget.test")
    assert first.records[0].data == bytes.fromhex("33" * 32)
    second = await lookup_tlsa(sec.resolver, "alias.cname.test")
    assert (second.status, second.base) == ("secure", "alias.cname.test")


async def test_startup_check_warns_when_resolver_does_not_validate(
        dns_rig: DnsRig, caplog: Any) -> None:
    resolver = SecureResolver([dns_rig.resolver], timeout=5)
    assert await check_validating(resolver, "test.") is None
    dns_rig.publish("plainprobe.test", ["x IN TXT y"], mode="unsigned")
    warning = await check_validating(resolver, "plainprobe.test.")
    assert warning and "AD bit" in warning
    assert "AD bit" in caplog.text


async def test_unreachable_resolver_is_a_failure_not_a_downgrade(
        dns_rig: DnsRig, sqlite_store: Any) -> None:
    from tests.dnsrig import free_port

    dead = SecureResolver([("127.0.0.1", free_port())], timeout=0.5)
    assert (await lookup_tlsa(dead, "mx.ee.test")).status == "failed"
    sec = TransportSecurity(dead, sqlite_store, mta_sts=False)
    req = await sec("ee.test", "mx.ee.test", True)
    assert req.defer_reason and req.require_tls


async def test_dnspython_resolver_for_routing_sees_the_ad_bit(dns_rig: DnsRig) -> None:
    import dns.flags

    from mailstack.outbound.dnssec import dnspython_resolver

    dns_rig.publish("routing.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1"])
    dns_rig.publish("routing-plain.test", ["@ IN MX 10 mx"], mode="unsigned")
    host, port = dns_rig.resolver
    resolver = dnspython_resolver(f"{host}:{port}", lifetime=5)
    signed = await resolver.resolve("routing.test", "MX", search=False)
    assert signed.response.flags & dns.flags.AD
    plain = await resolver.resolve("routing-plain.test", "MX", search=False)
    assert not plain.response.flags & dns.flags.AD


async def test_from_settings_uses_the_configured_resolver(dns_rig: DnsRig, tmp_path: Any,
                                                          sqlite_store: Any) -> None:
    from mailstack.config import settings_from_dict

    host, port = dns_rig.resolver
    dns_rig.publish("cfg.test", zone_records(["3 1 1 " + "55" * 32]))
    settings = settings_from_dict({"outbound_tls": {
        "dns_resolver": f"{host}:{port}", "dnssec_probe_name": "test.",
        "dns_timeout_seconds": 5}})
    sec = TransportSecurity.from_settings(settings, sqlite_store)
    assert await sec.start() is None  # the resolver validates: no warning
    _, _, req = await route(sec, "cfg.test")
    assert req.policy == "dane"
    off = TransportSecurity.from_settings(settings_from_dict({"outbound_tls": {
        "dns_resolver": f"{host}:{port}", "dane": False, "mta_sts": False}}), sqlite_store)
    _, _, req = await route(off, "cfg.test")
    assert req.policy == "opportunistic"

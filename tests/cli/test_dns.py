"""``mailstack dkim`` and ``mailstack dns`` through the real command (exit codes, output,
stored state), on SQLite and PostgreSQL."""

from __future__ import annotations

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from mailstack.store import Store
from tests.outbound.zone import parse_zone, txt_values

from .conftest import Cli


def keys(cli: Cli, domain: str | None = None) -> list[tuple[str, str, str]]:
    async def q(store: Store) -> list[tuple[str, str, str]]:
        return [(k.selector, k.algorithm, k.status) for k in await store.dkim_keys(domain)]
    return cli.query(q)


def test_generate_refuses_unhosted_domain(cli_both: Cli) -> None:
    """Both backends: the store refuses keys for an unhosted domain the same way."""
    r = cli_both("dkim", "generate", "nothosted.example")
    assert r.code == 1 and "no domain nothosted.example is hosted here" in r.err
    assert keys(cli_both) == []
    r = cli_both("dns", "nothosted.example")
    assert r.code == 1 and "nothosted.example" in r.err and r.out == ""


def test_generate_rotate_activate(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    r = cli.ok("dkim", "generate", "Example.COM")
    lines = [line.split("\t") for line in r.out.splitlines()]
    assert [(d, a, s) for d, _, a, s in lines] == [
        ("example.com", "rsa-sha256", "active"), ("example.com", "ed25519-sha256", "active")]
    sel_r, sel_e = lines[0][1], lines[1][1]
    assert sel_r.startswith("ms") and sel_r.endswith("r") and sel_e.endswith("e")
    assert "mailstack dns example.com" in r.err
    # again without --rotate: refused, nothing changed
    r = cli("dkim", "generate", "example.com")
    assert r.code == 1 and "--rotate" in r.err and sel_r in r.err
    assert len(keys(cli)) == 2
    # a rotation waits for activation; the old keys sign meanwhile
    r = cli.ok("dkim", "generate", "example.com", "--rotate")
    new_r, new_e = (line.split("\t")[1] for line in r.out.splitlines())
    assert "dkim activate example.com" in r.err
    assert keys(cli) == [(sel_r, "rsa-sha256", "active"), (sel_e, "ed25519-sha256", "active"),
                         (new_r, "rsa-sha256", "pending"),
                         (new_e, "ed25519-sha256", "pending")]
    out = cli.ok("dns", "example.com").out
    assert f"{new_r}._domainkey.example.com." in out and "dkim activate" in out
    cli.ok("dkim", "activate", "example.com")
    assert [s for _, _, s in keys(cli)] == ["retired", "retired", "active", "active"]
    r = cli("dkim", "activate", "example.com")
    assert r.code == 1 and "no new DKIM keys" in r.err
    listed = cli.ok("dkim", "list").out.splitlines()
    assert [line.split("\t")[:4] for line in listed] == [
        ["example.com", sel_r, "rsa-sha256", "retired"],
        ["example.com", sel_e, "ed25519-sha256", "retired"],
        ["example.com", new_r, "rsa-sha256", "active"],
        ["example.com", new_e, "ed25519-sha256", "active"]]
    out = cli.ok("dns", "example.com").out
    records = [line for line in out.splitlines() if not line.startswith(";")]
    assert not any(line.startswith(f"{sel_r}._domainkey") for line in records)
    assert any(line.startswith(f"{new_r}._domainkey") for line in records)
    assert "retired selectors" in out and sel_r in out


def test_dns_records_parse_as_a_zone(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    out = cli.ok("dns", "example.com").out
    assert "dkim generate example.com" in out  # no keys yet: says how to make them
    r = cli("dkim", "generate", "not a domain")
    assert r.code == 1 and "not a valid host name" in r.err
    generated = cli.ok("dkim", "generate", "example.com")
    listing = cli.ok("dkim", "list")
    out = cli.ok("dns", "example.com").out
    zone = parse_zone(out, "example.com")

    def rr(name: str, rtype: str) -> list[str]:
        rds = zone.get_rdataset(dns.name.from_text(name), dns.rdatatype.from_text(rtype))
        return sorted(r.to_text() for r in rds) if rds is not None else []

    assert rr("example.com.", "MX") == ["10 mail.example.net."]
    assert txt_values(zone, "example.com.") == [b"v=spf1 mx -all"]
    assert txt_values(zone, "_dmarc.example.com.") == [
        b"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"]
    assert rr("autoconfig.example.com.", "CNAME") == ["mail.example.net."]
    assert rr("autodiscover.example.com.", "CNAME") == ["mail.example.net."]
    assert rr("_submissions._tcp.example.com.", "SRV") == ["0 1 465 mail.example.net."]
    assert rr("mta-sts.example.com.", "CNAME") == ["mail.example.net."]
    [sts] = txt_values(zone, "_mta-sts.example.com.")
    assert sts.startswith(b"v=STSv1; id=") and len(sts) > len(b"v=STSv1; id=")
    assert "mode: enforce" in out and "mx: mail.example.net" in out
    assert txt_values(zone, "_smtp._tls.example.com.") == [
        b"v=TLSRPTv1; rua=mailto:postmaster@example.com"]
    listed = [line.split("\t") for line in listing.out.splitlines()]
    for _, selector, algorithm, _, _ in listed:
        [value] = txt_values(zone, f"{selector}._domainkey.example.com.")
        k = b"rsa" if algorithm == "rsa-sha256" else b"ed25519"
        assert value.startswith(b"v=DKIM1; k=" + k + b"; p=")
    # every character-string fits (RFC 1035 §3.3.14)
    for node in zone.values():
        for rds in node:
            if rds.rdtype == dns.rdatatype.TXT:
                assert all(len(s) <= 255 for r in rds for s in r.strings)

    async def q(store: Store) -> list[str]:
        return [k.private_key for k in await store.dkim_keys("example.com")]
    printed = generated.both + listing.both + out
    privs = cli.query(q)
    assert len(privs) == 2
    for p in privs:  # the private keys are never printed
        body = "".join(line for line in p.splitlines() if not line.startswith("-----"))
        assert body[:40] not in printed


def test_dns_rua_option(cli: Cli) -> None:
    cli.ok("domain", "add", "example.com")
    out = cli.ok("dns", "example.com", "--rua", "dmarc@example.com").out
    assert txt_values(parse_zone(out, "example.com"), "_dmarc.example.com.") == [
        b"v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"]
    r = cli("dns", "example.com", "--rua", "a@b; p=none")
    assert r.code == 1 and r.out == ""


def test_dns_prints_the_tlsa_record_of_the_certificate(cli: Cli) -> None:
    """With a certificate in place, the MX host's `3 1 1` record, the same as
    `mailstack tlsa` prints; without one, a note saying how to get it."""
    from mailstack.tls import ensure_self_signed

    cli.ok("domain", "add", "example.com")
    assert "no certificate at" in cli.ok("dns", "example.com").out
    tls = cli.data_dir / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    ensure_self_signed(tls / "cert.pem", tls / "key.pem", "mail.example.net")
    out = cli.ok("dns", "example.com").out
    # the MX host's name lies outside the domain's zone: parse the line on its own
    [line] = [x for x in out.splitlines() if x.startswith("_25._tcp.mail.example.net.")]
    _name, ttl, klass, rtype, rdata = line.split("\t")
    assert (klass, rtype) == ("IN", "TLSA") and int(ttl) > 0
    tlsa = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, rdata).to_text()
    printed = cli.ok("tlsa").out
    assert tlsa.split()[3].lower() in printed.lower() and tlsa.startswith("3 1 1 ")

"""DNS lookups whose answers say whether they were DNSSEC-validated (RFC 7672 §2.1),
and the TLSA lookup of an MX host (RFC 7672 §2.2). docs/behaviour.md §6.

Invariants:
- We never validate DNSSEC ourselves. Every query goes to the resolver the operator
  configured (``[outbound_tls] dns_resolver``, default the system's) with the DO bit
  (and AD, RFC 6840 §5.7) set; an answer is ``secure`` only when that server set AD in
  the response. dnspython checks that the response came from the address we asked, so
  AD from any other server is never seen, let alone trusted.
- SERVFAIL (which a validating resolver answers for bogus data), REFUSED, timeouts and
  malformed answers are ``failure``: callers defer, never downgrade (RFC 7672 §2.2:
  a failed TLSA lookup must not become "no DANE").
- CNAME chains in answers are followed to the end; ``canonical`` is the last name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from .dane import TlsaRecord

log = logging.getLogger("mailstack.outbound.dnssec")

Status = Literal["records", "nodata", "nxdomain", "failure"]
MAX_CNAME_CHAIN = 16


@dataclass(frozen=True)
class DnsAnswer:
    """One lookup's outcome. ``records`` are rdata texts for the queried type at
    ``canonical``; ``secure`` is the AD bit of the configured resolver's response."""

    name: str
    rdtype: str
    status: Status
    secure: bool = False
    records: tuple[str, ...] = ()
    canonical: str = ""
    detail: str = ""
    rdata: tuple[object, ...] = ()
    ttl: int = 0  # of the answer RRset (0: unknown, e.g. for negative answers)


def parse_resolver(setting: str) -> list[tuple[str, int]]:
    """``"127.0.0.1:5353"``, ``"[::1]:53"``, ``"192.0.2.1"`` (port 53), several
    separated by commas; ``""`` -> the system's resolvers (/etc/resolv.conf)."""
    out: list[tuple[str, int]] = []
    for item in (p.strip() for p in setting.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:
            host, _, p = item.partition(":")
            port = int(p)
        else:
            host, port = item, 53
        out.append((host, port))
    if not out:
        try:
            system = dns.resolver.Resolver(configure=True)
            out = [(str(ns), 53) for ns in system.nameservers]
        except dns.exception.DNSException:  # no /etc/resolv.conf
            out = []
        out = out or [("127.0.0.1", 53)]
    return out


def dnspython_resolver(setting: str, lifetime: float = 20.0) -> dns.asyncresolver.Resolver:
    """A dnspython async resolver asking only the configured validating resolver(s)
    (``[outbound_tls] dns_resolver``, ports allowed) with DO and AD set, for code that
    uses dnspython's resolver API (MX and address lookups in routing): its answers'
    ``response.flags & AD`` are then trustworthy in the sense of RFC 7672 §2.1."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)
                            for host, port in parse_resolver(setting)]
    resolver.use_edns(0, dns.flags.DO, 1232)
    resolver.flags = dns.flags.RD | dns.flags.AD
    resolver.lifetime = lifetime
    resolver.search = []
    return resolver


class SecureResolver:
    """Queries the configured validating resolver(s) in order; the next one is tried only
    when one does not answer (timeout, network error), never after a real answer."""

    def __init__(self, servers: Sequence[tuple[str, int]], timeout: float = 5.0) -> None:
        if not servers:
            raise ValueError("no DNS resolver configured")
        self.servers = list(servers)
        self.timeout = timeout

    @classmethod
    def from_setting(cls, setting: str, timeout: float = 5.0) -> SecureResolver:
        return cls(parse_resolver(setting), timeout)

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        qname = dns.name.from_text(name)
        request = dns.message.make_query(qname, rdtype, want_dnssec=True)
        request.flags |= dns.flags.AD | dns.flags.RD
        last = "no answer"
        for host, port in self.servers:
            try:
                response = await dns.asyncquery.udp_with_fallback(
                    request, host, timeout=self.timeout, port=port)
            except (dns.exception.DNSException, OSError, ValueError) as exc:
                last = f"{host}:{port}: {type(exc).__name__} {exc}".strip()
                continue
            return _interpret(name, rdtype, qname, response[0])
        return DnsAnswer(name, rdtype, "failure", detail=last)


def _interpret(name: str, rdtype: str, qname: dns.name.Name,
               response: dns.message.Message) -> DnsAnswer:
    secure = bool(response.flags & dns.flags.AD)
    rcode = response.rcode()
    current = qname
    want = dns.rdatatype.from_text(rdtype)
    for _ in range(MAX_CNAME_CHAIN):
        rrset = _find(response, current, want)
        if rrset is not None:
            return DnsAnswer(name, rdtype, "records", secure,
                             tuple(r.to_text() for r in rrset), _text(current),
                             rdata=tuple(rrset), ttl=int(rrset.ttl))
        alias = _find(response, current, dns.rdatatype.CNAME)
        if alias is None:
            break
        current = alias[0].target
    else:
        return DnsAnswer(name, rdtype, "failure", detail="CNAME chain too long")
    if rcode == dns.rcode.NXDOMAIN:
        return DnsAnswer(name, rdtype, "nxdomain", secure, canonical=_text(current))
    if rcode == dns.rcode.NOERROR:
        return DnsAnswer(name, rdtype, "nodata", secure, canonical=_text(current))
    return DnsAnswer(name, rdtype, "failure", canonical=_text(current),
                     detail=f"{dns.rcode.to_text(rcode)} from the resolver")


def _find(response: dns.message.Message, name: dns.name.Name, rdtype: int
          ) -> dns.rrset.RRset | None:
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype:
            return rrset
    return None


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


# --- MX and TLSA ---------------------------------------------------------------------


@dataclass(frozen=True)
class TlsaLookup:
    """The TLSA facts for one MX host (RFC 7672 §2.2):
    - ``secure``: validated TLSA records found at ``_25._tcp.<base>`` (maybe none usable);
    - ``denied``: validated denial of existence (NXDOMAIN/NODATA) at every base name;
    - ``insecure``: the host's address records or the TLSA answer are not validated;
    - ``failed``: a lookup failed (SERVFAIL, bogus, timeout): defer this host.
    """

    status: Literal["secure", "denied", "insecure", "failed"]
    records: tuple[TlsaRecord, ...] = ()
    base: str = ""
    detail: str = ""


async def lookup_mx(resolver: SecureResolver, domain: str) -> DnsAnswer:
    """The MX RRset of ``domain``; ``secure`` tells routing whether DANE may apply."""
    return await resolver.query(domain, "MX")


async def lookup_tlsa(resolver: SecureResolver, mx_host: str, port: int = 25) -> TlsaLookup:
    """TLSA records for ``mx_host`` per RFC 7672 §2.2.2.

    The host's address records come first: when they are insecure, DANE does not apply
    (no TLSA lookup). When the address lookup followed a secure CNAME chain, TLSA is
    looked up at the expanded name first, then at the original name.
    """
    host = mx_host.rstrip(".").lower()
    addr = await resolver.query(host, "A")
    if addr.status == "nodata":
        addr = await resolver.query(host, "AAAA")
    if addr.status == "failure":
        return TlsaLookup("failed", detail=f"address lookup of {host}: {addr.detail}")
    if not addr.secure:
        return TlsaLookup("insecure", detail=f"address records of {host} are not signed")
    bases = [addr.canonical or host]
    if host not in bases:
        bases.append(host)
    for base in bases:
        qname = f"_{port}._tcp.{base}"
        ans = await resolver.query(qname, "TLSA")
        if ans.status == "failure":
            return TlsaLookup("failed", base=base, detail=f"TLSA {qname}: {ans.detail}")
        if not ans.secure:
            return TlsaLookup("insecure", base=base, detail=f"TLSA {qname} is not signed")
        if ans.status == "records":
            recs = tuple(TlsaRecord(r.usage, r.selector, r.mtype, bytes(r.cert))  # type: ignore[attr-defined]
                         for r in ans.rdata)
            return TlsaLookup("secure", recs, base=base)
    return TlsaLookup("denied", base=bases[0])


async def check_validating(resolver: SecureResolver, probe_name: str = ".") -> str | None:
    """Start-up check: does the configured resolver validate? Returns None when a
    query for ``probe_name`` (a name known to be signed) comes back with AD, else a
    warning (also logged). A resolver that does not validate makes every answer
    insecure, so DANE never applies: mail still flows, unauthenticated."""
    ans = await resolver.query(probe_name, "SOA")
    if ans.status in ("records", "nodata") and ans.secure:
        return None
    servers = ", ".join(f"{h}:{p}" for h, p in resolver.servers)
    warning = (f"DNS resolver {servers} did not set the AD bit for {probe_name} "
               f"({ans.status}{': ' + ans.detail if ans.detail else ''}): it does not "
               "validate DNSSEC, so DANE (RFC 7672) cannot protect outbound mail; "
               "configure [outbound_tls] dns_resolver with a validating resolver")
    log.warning("%s", warning)
    return warning

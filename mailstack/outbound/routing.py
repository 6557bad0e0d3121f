"""Where mail for a domain goes (docs/behaviour.md §6): the transport map, MX records
(RFC 5321 §5.1), implicit MX, null MX (RFC 7505).

The decision (``route_from_mx``, ``transport_route``) is pure; DNS comes in through the
``Resolver`` protocol (``DnsResolver`` wraps dnspython's async resolver; tests give a
fake). Invariants:
- NXDOMAIN for the recipient domain is permanent (5.1.2); SERVFAIL, timeouts and
  other resolver trouble are temporary: the row waits, it never bounces for them.
- A null MX (``0 .``) bounces at once with 5.1.10 (RFC 7505 §3).
- No MX records but the name exists: the domain itself is the one host (implicit MX,
  RFC 5321 §5.1).
- MX hosts are tried in preference order; hosts of equal preference are shuffled with
  the injected random source (RFC 5321 §5.1 "SHOULD ... randomize").
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol

from ..config import TransportRoute
from .hostport import parse_host_port


class DnsTemporary(Exception):
    """SERVFAIL, timeout, no answer from any server: try again later."""


class DnsNoDomain(Exception):
    """NXDOMAIN: the name does not exist."""


@dataclass(frozen=True)
class MxAnswer:
    records: tuple[tuple[int, str], ...]  # (preference, host without trailing dot)
    secure: bool = False  # DNSSEC-validated (AD bit from a validating resolver)


class Resolver(Protocol):
    async def mx(self, domain: str) -> MxAnswer:
        """MX records (empty when the name exists without MX). Raises DnsNoDomain,
        DnsTemporary."""
        ...

    async def addresses(self, host: str) -> list[str]:
        """IPv6 and IPv4 addresses of ``host`` ([] when it has none). Raises
        DnsNoDomain, DnsTemporary."""
        ...


class DnsResolver:
    """dnspython's async resolver asking only the configured validating resolver
    (``[outbound_tls] dns_resolver``; empty: the system's), DO and AD set, so the AD bit
    of its answers is what ``MxAnswer.secure`` means (RFC 7672 §2.1)."""

    def __init__(self, lifetime: float = 20.0, servers: str = "") -> None:
        from .dnssec import dnspython_resolver

        self._resolver = dnspython_resolver(servers, lifetime)

    async def _query(self, name: str, rdtype: str) -> tuple[list[object], bool]:
        import dns.exception
        import dns.flags
        import dns.resolver

        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            raise DnsNoDomain(f"{name}: no such domain") from exc
        except dns.resolver.NoAnswer:
            return [], False
        except (dns.resolver.NoNameservers, dns.exception.Timeout,
                dns.resolver.LifetimeTimeout) as exc:
            raise DnsTemporary(f"{name} {rdtype}: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise DnsTemporary(f"{name} {rdtype}: {exc}") from exc
        secure = bool(answer.response.flags & dns.flags.AD)
        return list(answer), secure

    async def mx(self, domain: str) -> MxAnswer:
        records, secure = await self._query(domain, "MX")
        out = []
        for r in records:
            host = str(r.exchange).rstrip(".").lower()  # type: ignore[attr-defined]
            out.append((int(r.preference), host))  # type: ignore[attr-defined]
        return MxAnswer(tuple(out), secure)

    async def addresses(self, host: str) -> list[str]:
        found: list[str] = []
        nxdomain = 0
        for rdtype in ("AAAA", "A"):
            try:
                records, _ = await self._query(host, rdtype)
            except DnsNoDomain:
                nxdomain += 1
                continue
            found += [str(r) for r in records]
        if nxdomain == 2:
            raise DnsNoDomain(f"{host}: no such host")
        return found


@dataclass(frozen=True)
class Hop:
    """One server to try: a host name (or address literal) and port."""

    host: str
    port: int = 25
    mx_secure: bool = False  # the MX answer naming it was DNSSEC-validated


@dataclass(frozen=True)
class Route:
    """The servers for a destination, in the order to try them."""

    key: str  # destination for connection reuse: the domain or "transport:host:port"
    hops: tuple[Hop, ...]
    implicit: bool = False  # no MX: the domain's own address records (RFC 5321 §5.1)
    auth_user: str = ""
    auth_password_file: str = ""
    require_tls: bool = False
    via_transport: bool = False


@dataclass(frozen=True)
class RouteFailure:
    permanent: bool
    status: str  # RFC 3463
    text: str


def transport_route(domain: str, transport: Mapping[str, TransportRoute]
                    ) -> tuple[str, TransportRoute] | None:
    """The transport map entry for ``domain`` (exact, then "*"), if it names a host."""
    domain = domain.lower().rstrip(".")
    for key in (domain, "*"):
        entry = transport.get(key)
        if entry is not None:
            return (key, entry) if entry.host else None
    return None


def route_for_transport(entry: TransportRoute) -> Route:
    host, port = parse_host_port(entry.host)
    return Route(f"transport:{host}:{port}", (Hop(host, port),),
                 auth_user=entry.auth_user, auth_password_file=entry.auth_password_file,
                 require_tls=entry.require_tls or bool(entry.auth_user), via_transport=True)


def route_from_mx(domain: str, answer: MxAnswer, rand: random.Random, port: int = 25
                  ) -> Route | RouteFailure:
    """The hops for ``domain`` from its MX answer (see the module notes)."""
    if any(host in ("", ".") for _, host in answer.records):
        return RouteFailure(True, "5.1.10", f"{domain} accepts no mail (null MX, RFC 7505)")
    if not answer.records:
        return Route(domain, (Hop(domain, port, answer.secure),), implicit=True)
    hops: list[Hop] = []
    ordered = sorted(answer.records)
    for _, group in groupby(ordered, key=lambda r: r[0]):
        hosts = sorted({h for _, h in group})
        rand.shuffle(hosts)
        hops += [Hop(h, port, answer.secure) for h in hosts
                 if h not in {x.host for x in hops}]
    return Route(domain, tuple(hops))


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve_route(domain: str, transport: Mapping[str, TransportRoute],
                        resolver: Resolver, rand: random.Random, port: int = 25
                        ) -> Route | RouteFailure:
    entry = transport_route(domain, transport)
    if entry is not None:
        return route_for_transport(entry[1])
    try:
        answer = await resolver.mx(domain)
    except DnsNoDomain:
        return RouteFailure(True, "5.1.2", f"{domain}: no such domain (NXDOMAIN)")
    except DnsTemporary as exc:
        return RouteFailure(False, "4.4.3", f"DNS lookup failed, will retry: {exc}")
    return route_from_mx(domain, answer, rand, port)


async def addresses_of(hop: Hop, resolver: Resolver) -> list[str]:
    """The addresses to connect to for ``hop`` (IPv6 first, then IPv4, as the
    resolver lists them). Raises DnsNoDomain / DnsTemporary."""
    if is_ip_literal(hop.host):
        return [hop.host]
    return await resolver.addresses(hop.host)


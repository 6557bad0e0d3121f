"""Inbound sender authentication on the MX (docs/behaviour.md §5 "sender
authentication"): SPF (RFC 7208), DKIM (RFC 6376, RFC 8463), DMARC (RFC 7489), ARC
(RFC 8617), reverse DNS, and the ``Authentication-Results`` (RFC 8601) and
``Received-SPF`` fields that report them.

``check_sender`` runs every check of one message concurrently over one ``Lookups``
(the injected resolver and the per-message DNS budget); ``decide`` turns the DMARC
outcome and the action setting into deliver / junk / reject. Invariants:
- A temperror anywhere never rejects: DMARC with a DNS failure is ``temperror``,
  delivered and marked.
- The message handed back has every forged ``Authentication-Results`` of ours removed
  (RFC 8601 §5); ``trace`` holds ours (and ``Received-SPF``) to prepend.
- A DMARC failure is overridden (delivered, marked) when the newest ARC set validates
  and was sealed by a trusted forwarder (RFC 8617 §7.2, RFC 7489 §6.7 local policy).
- No sockets, no SQL: DNS comes in through ``Lookups``, crypto runs in a thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

from ..headers import HeaderError, extract_from_addresses
from . import dmarc as dm
from .dkimcheck import (
    ArcOutcome,
    DkimSignature,
    fetch_keys,
    has_signatures,
    verify_arc,
    verify_dkim,
)
from .lookups import DnsResolver, Lookups
from .results import authentication_results, received_spf, remove_forged
from .spf import SpfOutcome, check_host, valid_domain

__all__ = ["AuthReport", "DnsResolver", "Lookups", "check_sender", "decide"]

Action = Literal["reject", "quarantine", "mark"]
Decision = Literal["deliver", "junk", "reject"]
MAX_PTR_NAMES = 10


@dataclass(frozen=True)
class AuthReport:
    spf: SpfOutcome
    spf_identity: str  # the MAIL FROM, or postmaster@<helo> (RFC 7208 §2.3)
    spf_scope: Literal["mailfrom", "helo"]
    dkim: tuple[DkimSignature, ...]
    dmarc: dm.DmarcOutcome
    arc: ArcOutcome
    iprev: str  # pass / fail / temperror (RFC 8601 §3)
    client_host: str | None  # forward-confirmed reverse DNS name, for Received:
    overridden: str = ""  # why a DMARC failure is not acted on (trusted ARC)
    content: bytes = b""  # the message with forged results removed
    trace: bytes = b""  # Authentication-Results + Received-SPF to prepend
    forged_removed: int = 0
    dns_queries: int = field(default=0, compare=False)


async def reverse_dns(lookups: Lookups, ip: str) -> tuple[str, str | None]:
    """(iprev result, forward-confirmed name): RFC 8601 §3 / RFC 8601 §2.7.3."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "permerror", None
    ptr = await lookups.query(addr.reverse_pointer, "PTR")
    if ptr.failed:
        return "temperror", None
    names = [str(getattr(r, "target", "")).rstrip(".").lower() for r in ptr.rdata]
    rdtype = "A" if addr.version == 4 else "AAAA"
    names = [n for n in names if n][:MAX_PTR_NAMES]
    answers = await asyncio.gather(*(lookups.query(n, rdtype) for n in names))
    failed = False
    for name, ans in zip(names, answers, strict=True):
        failed = failed or ans.failed
        if any(str(getattr(r, "address", "")) == str(addr) for r in ans.rdata):
            return "pass", name
    return ("temperror" if failed else "fail"), None


async def check_sender(lookups: Lookups, *, content: bytes, client_ip: str,
                       helo: str | None, mail_from: str, authserv_id: str,
                       trusted_sealers: Collection[str] = (),
                       draw: Callable[[], float] = random.random,
                       now: float = 0.0) -> AuthReport:
    """Every check of one MX message. ``mail_from`` is "" for the null sender."""
    helo_name = (helo or "").strip().rstrip(".").lower()
    if mail_from:
        scope: Literal["mailfrom", "helo"] = "mailfrom"
        identity, spf_domain = mail_from, mail_from.rpartition("@")[2]
    else:  # RFC 7208 §2.4: an empty MAIL FROM is checked as postmaster@<HELO>
        scope, identity, spf_domain = "helo", f"postmaster@{helo_name}", helo_name

    async def spf_check() -> SpfOutcome:
        if scope == "helo" and not valid_domain(helo_name):
            return SpfOutcome("none", helo_name, problem="HELO is not a domain name")
        return await check_host(lookups, client_ip, spf_domain, identity, helo_name,
                                authserv_id, now)

    try:
        from_domain, from_problem = dm.from_domain_of(
            [f.address for f in extract_from_addresses(content)])
    except HeaderError:
        from_domain, from_problem = None, "malformed From field"

    async def dmarc_discovery() -> dm.Discovery | None:
        return await dm.discover(lookups, from_domain) if from_domain else None

    async def crypto() -> tuple[list[DkimSignature], ArcOutcome]:
        keys = await fetch_keys(lookups, content)
        if not keys and not has_signatures(content):  # nothing to verify: no thread hop
            return [], ArcOutcome("none")

        def run() -> tuple[list[DkimSignature], ArcOutcome]:
            return verify_dkim(content, keys), verify_arc(content, keys)
        return await asyncio.to_thread(run)

    try:
        spf, (iprev, host), (sigs, arc), discovery = await asyncio.gather(
            spf_check(), reverse_dns(lookups, client_ip), crypto(), dmarc_discovery())
    finally:
        lookups.close()
    if discovery is None:
        dmarc = dm.DmarcOutcome("permerror" if from_problem != "no From address" else "none",
                                reason=from_problem)
    else:
        assert from_domain is not None
        dmarc = dm.evaluate(from_domain, discovery, spf, spf_domain, sigs, draw)
    overridden = ""
    trusted = {s.rstrip(".").lower() for s in trusted_sealers}
    if dmarc.result == "fail" and arc.result == "pass" and arc.sealer in trusted:
        overridden = f"policy not applied: valid ARC chain sealed by trusted {arc.sealer}"
    stripped, removed = remove_forged(content, authserv_id)
    ar = authentication_results(
        authserv=authserv_id, client_ip=client_ip, iprev=iprev, client_host=host,
        spf=spf, spf_identity=identity, spf_scope=scope, dkim=sigs, dmarc=dmarc, arc=arc,
        override=overridden)
    rspf = received_spf(receiver=authserv_id, spf=spf, client_ip=client_ip,
                        identity=identity, scope=scope, mail_from=mail_from, helo=helo)
    return AuthReport(spf, identity, scope, tuple(sigs), dmarc, arc, iprev, host,
                      overridden, stripped, ar + rspf, removed, lookups.queries)


def decide(report: AuthReport, action: Action) -> Decision:
    """What to do for a recipient whose DMARC action setting is ``action``:
    ``reject`` follows the published policy (p=reject -> 550, p=quarantine -> Junk),
    ``quarantine`` files both in Junk, ``mark`` only adds the results."""
    d = report.dmarc
    if d.result != "fail" or report.overridden or action == "mark":
        return "deliver"
    if d.disposition == "reject":
        return "reject" if action == "reject" else "junk"
    if d.disposition == "quarantine":
        return "junk"
    return "deliver"


def reject_reply(report: AuthReport) -> str:
    """RFC 7489 §6.6.2 / §10.3 suggestion: 550 5.7.1 after DATA."""
    domain = re.sub(r"[^A-Za-z0-9.-]", "", report.dmarc.from_domain)[:253]
    return (f"550 5.7.1 Message refused: DMARC policy of {domain} "
            "(p=reject) failed: no aligned SPF or DKIM pass")

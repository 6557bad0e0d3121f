"""DMARC (RFC 7489): policy discovery, identifier alignment and the disposition.

Invariants:
- The organizational domain comes from the Public Suffix List bundled with the
  ``publicsuffixlist`` package (RFC 7489 §3.2); nothing is downloaded at run time.
- Policy discovery (§6.6.3): ``_dmarc.<From domain>``, else ``_dmarc.<organizational
  domain>`` whose ``sp=`` (default ``p=``) then applies. A DNS failure is a
  ``temperror`` and never leads to a rejection.
- A DMARC pass needs an aligned SPF pass or an aligned DKIM pass (§3.1, relaxed or
  strict per ``aspf``/``adkim``). DKIM signatures with ``l=`` never count (they are
  reported as ``policy`` by dkimcheck).
- ``pct`` (§6.6.4): a message outside the sample gets the next weaker policy
  (reject -> quarantine -> none); the random draw is a parameter.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from publicsuffixlist import PublicSuffixList

from .dkimcheck import DkimSignature
from .lookups import Lookups
from .spf import SpfOutcome

DmarcResult = Literal["none", "pass", "fail", "temperror", "permerror"]
Policy = Literal["none", "quarantine", "reject"]
WEAKER: dict[str, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the list shipped inside the package


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the name itself if it is a
    public suffix or shorter)."""
    d = domain.rstrip(".").lower()
    return _psl().privatesuffix(d) or d


def aligned(a: str, b: str, mode: str) -> bool:
    """RFC 7489 §3.1.1/§3.1.2: strict = same name; relaxed = same organizational domain."""
    a, b = a.rstrip(".").lower(), b.rstrip(".").lower()
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True)
class DmarcRecord:
    p: Policy
    sp: Policy
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"


def parse_record(text: str) -> DmarcRecord | None:
    """RFC 7489 §6.3 tag list; None when it is not a usable DMARC record. A bad ``p``
    with a valid ``rua`` counts as ``p=none`` (§6.6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if "=" not in part:
            if part.strip():
                return None
            continue
        k, _, v = part.partition("=")
        tags.setdefault(k.strip().lower(), v.strip())
    if tags.get("v") != "DMARC1" or not text.lstrip().startswith("v"):
        return None
    p = tags.get("p", "").lower()
    if p not in ("none", "quarantine", "reject"):
        if "rua" in tags:
            p = "none"
        else:
            return None
    sp = tags.get("sp", p).lower()
    if sp not in ("none", "quarantine", "reject"):
        sp = p
    try:
        pct = min(100, max(0, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    return DmarcRecord(p, sp, pct,  # type: ignore[arg-type]
                       adkim if adkim in ("r", "s") else "r",
                       aspf if aspf in ("r", "s") else "r")


@dataclass(frozen=True)
class Discovery:
    status: Literal["found", "none", "temperror"]
    record: DmarcRecord | None = None
    record_domain: str = ""


async def discover(lookups: Lookups, from_domain: str) -> Discovery:
    """RFC 7489 §6.6.3."""
    for name in dict.fromkeys([from_domain, organizational_domain(from_domain)]):
        ans = await lookups.query(f"_dmarc.{name}", "TXT")
        if ans.failed:
            return Discovery("temperror")
        records = [r for t in ans.texts() if (r := parse_record(t)) is not None]
        # §6.6.3 step 5: more than one record -> as if none at this name.
        if len(records) == 1:
            return Discovery("found", records[0], name)
    return Discovery("none")


@dataclass(frozen=True)
class DmarcOutcome:
    result: DmarcResult
    from_domain: str = ""
    policy: Policy = "none"  # the policy published (p, or sp for a subdomain)
    disposition: Policy = "none"  # what the policy asks for this message (after pct)
    reason: str = ""


def evaluate(from_domain: str, discovery: Discovery, spf: SpfOutcome, spf_identity: str,
             dkim: Sequence[DkimSignature], draw: Callable[[], float]) -> DmarcOutcome:
    """The DMARC result and requested disposition for one message (RFC 7489 §6.6.2)."""
    if discovery.status == "temperror":
        return DmarcOutcome("temperror", from_domain, reason="DMARC record lookup failed")
    rec = discovery.record
    if discovery.status == "none" or rec is None:
        return DmarcOutcome("none", from_domain)
    policy = rec.p if discovery.record_domain == from_domain else rec.sp
    spf_ok = spf.result == "pass" and aligned(spf_identity, from_domain, rec.aspf)
    dkim_ok = any(s.counts_for_dmarc and aligned(s.domain, from_domain, rec.adkim)
                  for s in dkim)
    if spf_ok or dkim_ok:
        return DmarcOutcome("pass", from_domain, policy)
    if spf.result == "temperror" or any(s.result == "temperror" for s in dkim):
        # an underlying check could not finish: no verdict, never a rejection
        return DmarcOutcome("temperror", from_domain, policy,
                            reason="SPF or DKIM could not be checked (DNS)")
    disposition = policy
    if rec.pct < 100 and draw() * 100 >= rec.pct:
        disposition = WEAKER[policy]  # §6.6.4: outside the sampled percentage
    return DmarcOutcome("fail", from_domain, policy, disposition)


ADDR = re.compile(r"@([^@>\s]+)>?\s*$")


def from_domain_of(addresses: Sequence[str]) -> tuple[str | None, str]:
    """RFC 7489 §6.6.1: the one RFC5322.From domain, or (None, why not)."""
    domains = {a.rpartition("@")[2].rstrip(".").lower() for a in addresses if "@" in a}
    if not addresses:
        return None, "no From address"
    if len(domains) != 1:
        return None, "not exactly one From domain"
    domain = domains.pop()
    if not domain or "." not in domain:
        return None, "From domain is not a domain name"
    return domain, ""

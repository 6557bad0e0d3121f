"""``TransportSecurity``: the ``tls_policy`` callable outbound routing calls for every
MX host it is about to try (``await tls_policy(domain, mx_host, mx_secure)``, see
``transport``). It gathers the facts (TLSA via ``dnssec``, the MTA-STS policy via
``mtasts``) and hands them to the pure decision (``tlspolicy.decide``).
docs/behaviour.md §6.

Invariants:
- ``mx_secure`` must come from the same validating resolver (``dnssec.lookup_mx``);
  routing that looked up MX elsewhere must pass False, which disables DANE for the host.
- TLSA is looked up only for secure MX RRsets (RFC 7672 §2.2); MTA-STS only when DANE
  does not apply (RFC 8461 §2). A DNS failure never weakens the requirement.
- MTA-STS lookups are remembered per domain for ``STS_MEMO_SECONDS`` so the MX hosts of
  one delivery share one TXT lookup; the policy itself is cached in the store.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.x509.verification import Store as TrustStore

from ..config import Settings
from ..store.transport import CachedStsPolicy, TlsResultKey
from .dnssec import SecureResolver, TlsaLookup, check_validating, lookup_tlsa
from .mtasts import MtaSts, StsLookup, load_ca_certs, pkix_context, split_files
from .tlspolicy import PolicyFacts, decide, trust_store
from .tlsrpt import DailyReports, DayStore, Enqueue, TlsResults
from .transport import TlsRequirement

log = logging.getLogger("mailstack.outbound.security")

STS_MEMO_SECONDS = 60.0
STS_MEMO_MAX = 10_000


class SecurityStore(Protocol):
    async def get_mta_sts_policy(self, domain: str) -> CachedStsPolicy | None: ...

    async def put_mta_sts_policy(self, policy: CachedStsPolicy) -> None: ...

    async def add_tls_results(self, counts: Mapping[TlsResultKey, int]) -> None: ...


@dataclass
class TransportSecurity:
    resolver: SecureResolver
    store: SecurityStore
    dane: bool = True
    mta_sts: bool = True
    extra_ca_files: tuple[str, ...] = ()
    sts_timeout: float = 20.0
    reporting: bool = True
    probe_name: str = "."
    clock: Callable[[], float] = field(default=time.time)
    https_port: int = 443  # tests serve MTA-STS policies on an ephemeral port
    results: TlsResults = field(init=False)
    _sts: MtaSts = field(init=False)
    _pkix: ssl.SSLContext = field(init=False)
    _trust: TrustStore | None = field(init=False, default=None)
    _memo: dict[str, tuple[float, StsLookup]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.results = TlsResults(self.clock)
        # One PKIX context (loading the CA store takes milliseconds: never per delivery).
        self._pkix = pkix_context(self.extra_ca_files)
        self._sts = MtaSts(self.resolver, self.store, self._pkix, timeout=self.sts_timeout,
                           clock=self.clock, https_port=self.https_port)

    @classmethod
    def from_settings(cls, settings: Settings, store: SecurityStore,
                      clock: Callable[[], float] = time.time) -> TransportSecurity:
        o = settings.outbound_tls
        return cls(SecureResolver.from_setting(o.dns_resolver, o.dns_timeout_seconds), store,
                   dane=o.dane, mta_sts=o.mta_sts,
                   extra_ca_files=tuple(split_files(o.extra_ca_files)),
                   sts_timeout=o.mta_sts_fetch_timeout_seconds, reporting=o.tls_reporting,
                   probe_name=o.dnssec_probe_name, clock=clock)

    async def start(self) -> str | None:
        """Start-up check of the resolver (a warning is logged and returned)."""
        return await check_validating(self.resolver, self.probe_name)

    def pkix_context(self) -> ssl.SSLContext:
        return self._pkix

    async def trust(self) -> TrustStore:
        """The CA store of the MTA-STS verifier, loaded once, off the event loop."""
        if self._trust is None:
            self._trust = await asyncio.to_thread(
                lambda: trust_store(load_ca_certs(self.extra_ca_files)))
        return self._trust

    async def facts(self, domain: str, mx_host: str, mx_secure: bool) -> PolicyFacts:
        tlsa: TlsaLookup | None = None
        if self.dane and mx_secure:
            tlsa = await lookup_tlsa(self.resolver, mx_host)
            if tlsa.status in ("secure", "failed"):
                return PolicyFacts(domain, mx_host, mx_secure, tlsa)
        sts = await self.sts_lookup(domain) if self.mta_sts else None
        return PolicyFacts(domain, mx_host, mx_secure, tlsa, sts.policy if sts else None)

    async def sts_lookup(self, domain: str) -> StsLookup:
        key = domain.lower().rstrip(".")
        now = self.clock()
        memo = self._memo.get(key)
        if memo is not None and memo[0] > now:
            return memo[1]
        found = await self._sts.lookup(key)
        if found.error is not None and self.reporting:
            self.results.record(key, "sts", found.error.result_type, "", str(found.error))
        if len(self._memo) >= STS_MEMO_MAX:  # bounded: drop what has expired
            self._memo = {k: v for k, v in self._memo.items() if v[0] > now}
            if len(self._memo) >= STS_MEMO_MAX:
                self._memo.clear()
        self._memo[key] = (now + STS_MEMO_SECONDS, found)
        return found

    async def __call__(self, domain: str, mx_host: str, mx_secure: bool) -> TlsRequirement:
        facts = await self.facts(domain, mx_host, mx_secure)
        requirement = decide(
            facts, clock=self.clock, pkix_context=self.pkix_context,
            trust=await self.trust() if facts.sts is not None else None,
            sink=self.results.record if self.reporting else None)
        log.debug("TLS policy for %s MX %s: %s", domain, mx_host, requirement.policy)
        return requirement

    async def flush_results(self) -> None:
        """Move the TLS-RPT counts into the store (call periodically)."""
        await self.results.flush(self.store)

    def daily_reports(self, settings: Settings, store: DayStore, holder: str,
                      deliver: Enqueue) -> DailyReports:
        """The once-a-day sender of our TLS reports (RFC 8460 §4.1, §5), sharing this
        object's validating resolver and PKIX context (extra CA files included)."""
        o, host = settings.outbound_tls, settings.server.hostname
        return DailyReports(store, self.resolver, deliver,
                            organization=o.tls_report_organization or host,
                            submitter=host,
                            from_addr=o.tls_report_from or f"tls-reports@{host}",
                            contact=o.tls_report_contact or f"postmaster@{host}",
                            holder=holder, https_context=self._pkix, clock=self.clock)

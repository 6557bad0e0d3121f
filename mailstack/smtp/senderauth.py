"""The MX listener's call into inbound sender authentication (``policy.authres``):
built once per MX front-end, called once per message at the end of DATA/BDAT.

Kept apart from the session code on purpose: ``protocol._finish_data`` makes one call
(``SenderAuth.check``) and uses its ``AuthOutcome`` (a refusal reply, or the content
with forged results removed, the trace fields to prepend, the reverse DNS name for
``Received:``, and which mailboxes get the message in Junk). Submission (an
authenticated sender) is never checked; local deliveries never come through here.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..outbound.dnssec import SecureResolver
from ..policy.authres import (
    AuthReport,
    DnsResolver,
    Lookups,
    check_sender,
    decide,
    reject_reply,
)
from ..policy.authres.lookups import CachingResolver
from ..policy.authres.results import remove_forged
from ..policy.envelope import EnvelopeAddress
from ..policy.relay import RcptVerdict, merge_destinations
from ..services import Services

log = logging.getLogger("mailstack.smtp.auth")


@dataclass(frozen=True)
class AuthOutcome:
    reply: str | None  # a refusal (550 5.7.1, DMARC p=reject), else None
    content: bytes = b""
    trace: bytes = b""  # Authentication-Results + Received-SPF, above our Received:
    client_host: str | None = None  # forward-confirmed reverse DNS name
    junk: frozenset[str] = frozenset()  # mailbox keys whose copy goes to Junk
    report: AuthReport | None = None


class SenderAuth:
    def __init__(self, services: Services, *, resolver: DnsResolver | None = None,
                 draw: Callable[[], float] = random.random) -> None:
        self.services = services
        s = services.settings
        self.settings = s.sender_auth
        # The resolver outbound uses ([outbound_tls] dns_resolver): one DNS setting,
        # behind a cache shared by every MX session of this process.
        self.resolver = CachingResolver(resolver or SecureResolver.from_setting(
            s.outbound_tls.dns_resolver, s.outbound_tls.dns_timeout_seconds))
        self.trusted = tuple(x.strip().lower() for x in
                             self.settings.trusted_arc_sealers.split(",") if x.strip())
        self.draw = draw

    async def check(self, *, content: bytes, client_ip: str, helo: str | None,
                    sender: EnvelopeAddress | None, verdicts: Sequence[RcptVerdict],
                    queue_id: str) -> AuthOutcome:
        lookups = Lookups(self.resolver, self.settings.dns_budget_seconds)
        try:
            report = await check_sender(
                lookups, content=content, client_ip=client_ip, helo=helo,
                mail_from=str(sender) if sender else "", authserv_id=self.services.hostname,
                trusted_sealers=self.trusted, draw=self.draw, now=self.services.clock())
        except Exception:  # a bug of ours must not stop mail; forged results still go
            log.exception("smtp %s: sender authentication failed; delivered unchecked",
                          queue_id)
            return AuthOutcome(None, remove_forged(content, self.services.hostname)[0])
        log.info("smtp %s: spf=%s dkim=%s dmarc=%s arc=%s iprev=%s%s (%d DNS queries)",
                 queue_id, report.spf.result,
                 ",".join(s.result for s in report.dkim) or "none", report.dmarc.result,
                 report.arc.result, report.iprev,
                 f"; {report.forged_removed} forged results removed"
                 if report.forged_removed else "", report.dns_queries)
        junk: set[str] = set()
        if report.dmarc.result == "fail" and not report.overridden:
            dest = merge_destinations(verdicts)
            default = self.settings.dmarc_action
            overrides = await self.services.store.dmarc_actions(
                {k.rpartition("@")[2] for k in dest.mailboxes})
            decisions = {k: decide(report, overrides.get(k.rpartition("@")[2], default))  # type: ignore[arg-type]
                         for k in dest.mailboxes}
            every = list(decisions.values())
            if dest.remote:  # forwarded copies follow the operator's default
                every.append(decide(report, default))
            if every and all(d == "reject" for d in every):
                log.info("smtp %s: refused, DMARC p=reject of %s failed", queue_id,
                         report.dmarc.from_domain)
                return AuthOutcome(reject_reply(report), report=report)
            junk = {k for k, d in decisions.items() if d in ("junk", "reject")}
        return AuthOutcome(None, report.content, report.trace, report.client_host,
                           frozenset(junk), report)

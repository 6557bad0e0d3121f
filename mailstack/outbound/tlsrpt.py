"""SMTP TLS reporting (RFC 8460): outcome counts, the daily JSON report, its mail
form, and the ``_smtp._tls`` TXT records (ours to publish, theirs to parse).
docs/behaviour.md §6.

Invariants:
- ``TlsResults.record`` is synchronous and cheap (a dict increment): it is called from
  certificate verifiers on the delivery path. ``flush`` moves the counts into the store
  (shared by every node) and forgets them only after the store accepted them.
- One report per policy domain and UTC day (RFC 8460 §4.1); the report lists each policy
  type seen with its session counts and failure details (§4.4).
- The mail form is multipart/report; report-type="tlsrpt" with the gzip JSON as
  ``application/tlsrpt+gzip`` and the subject of RFC 8460 §5.3.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any, Protocol

import aiohttp

from ..store.transport import TlsResultKey
from .dnssec import SecureResolver
from .mtasts import HttpResolver

REPORT_MEDIA_TYPE = "application/tlsrpt+gzip"
JSON_MEDIA_TYPE = "application/tlsrpt+json"
SUCCESS = "success"


def day_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


class ResultStore(Protocol):
    async def add_tls_results(self, counts: Mapping[TlsResultKey, int]) -> None: ...


class TlsResults:
    """Counts of TLS outcomes kept in memory until ``flush``; the sink the policy
    decision (``tlspolicy.ResultSink``) writes to."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.counts: dict[TlsResultKey, int] = {}

    def record(self, domain: str, policy_type: str, result: str, mx_host: str,
               _detail: str = "") -> None:
        key = TlsResultKey(day_of(self.clock()), domain.lower(), policy_type, result,
                           mx_host.lower())
        self.counts[key] = self.counts.get(key, 0) + 1

    async def flush(self, store: ResultStore) -> None:
        pending, self.counts = self.counts, {}
        try:
            await store.add_tls_results(pending)
        except BaseException:
            for k, n in pending.items():  # keep them for the next flush
                self.counts[k] = self.counts.get(k, 0) + n
            raise


def build_report(domain: str, day: str, counts: Mapping[TlsResultKey, int], *,
                 organization: str, contact: str, report_id: str = "",
                 policy_strings: Mapping[str, Sequence[str]] | None = None,
                 sts_mx: Sequence[str] = ()) -> dict[str, Any]:
    """The RFC 8460 §4.4 JSON object for ``domain`` on ``day`` (YYYY-MM-DD, UTC)."""
    start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1)
    policies: dict[str, dict[str, Any]] = {}
    for key, n in sorted(counts.items(), key=lambda kv: (kv[0].policy_type,
                                                         kv[0].result_type, kv[0].mx_host)):
        if key.policy_domain != domain or key.day != day:
            continue
        entry = policies.setdefault(key.policy_type, {
            "policy": {"policy-type": key.policy_type,
                       "policy-string": list((policy_strings or {}).get(key.policy_type, [])),
                       "policy-domain": domain},
            "summary": {"total-successful-session-count": 0,
                        "total-failure-session-count": 0},
            "failure-details": []})
        if key.policy_type == "sts" and sts_mx:
            entry["policy"]["mx-host"] = list(sts_mx)
        if key.result_type == SUCCESS:
            entry["summary"]["total-successful-session-count"] += n
        else:
            entry["summary"]["total-failure-session-count"] += n
            detail: dict[str, Any] = {"result-type": key.result_type,
                                      "failed-session-count": n}
            if key.mx_host:
                detail["receiving-mx-hostname"] = key.mx_host
            entry["failure-details"].append(detail)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "end-datetime": (end - dt.timedelta(seconds=1))
                       .strftime("%Y-%m-%dT%H:%M:%SZ")},
        "contact-info": contact,
        "report-id": report_id or f"{day}_{domain}_{uuid.uuid4().hex[:12]}",
        "policies": list(policies.values()),
    }


def report_gzip(report: Mapping[str, Any]) -> bytes:
    return gzip.compress(json.dumps(report, indent=1).encode("utf-8"), mtime=0)


def report_message(report: Mapping[str, Any], *, domain: str, submitter: str,
                   from_addr: str, to_addr: str, now: dt.datetime) -> bytes:
    """The report as mail (RFC 8460 §5.3), ready for our own outbound queue."""
    report_id = str(report["report-id"])
    start = dt.datetime.strptime(report["date-range"]["start-datetime"],
                                 "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    end = start + dt.timedelta(days=1)
    filename = (f"{submitter}!{domain}!{int(start.timestamp())}!{int(end.timestamp())}!"
                f"{re.sub(r'[^A-Za-z0-9._-]', '_', report_id)}.json.gz")
    msg = MIMEMultipart("report", report_type="tlsrpt")
    msg["From"] = from_addr
    msg["To"] = to_addr
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain=submitter)
    msg["Subject"] = f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>"
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter
    msg.attach(MIMEText(f"This is an aggregate TLS report from {submitter} for {domain} "
                        f"({report['date-range']['start-datetime']} to "
                        f"{report['date-range']['end-datetime']}).\n", "plain", "utf-8"))
    part = MIMEApplication(report_gzip(report), "tlsrpt+gzip")
    part.add_header("Content-Disposition", "attachment", filename=filename)
    msg.attach(part)
    return msg.as_bytes(policy=SMTP)


def parse_record(strings: Sequence[str]) -> list[str]:
    """The ``rua`` URIs of an ``_smtp._tls`` TXT RRset (RFC 8460 §3): exactly one record
    starting ``v=TLSRPTv1``; only mailto: and https: URIs are kept."""
    found = [s for s in strings if re.match(r"^v=TLSRPTv1\s*(;|$)", s)]
    if len(found) != 1:
        return []
    for part in found[0].split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key.strip() == "rua":
            return [u.strip() for u in value.split(",")
                    if u.strip().lower().startswith(("mailto:", "https:"))]
    return []


def record_text(domain: str, rua: str) -> str:
    """The ``_smtp._tls`` record to publish for one of our domains, e.g. with
    ``rua="mailto:tls-reports@example.org"``."""
    return f'_smtp._tls.{domain.rstrip(".")}. IN TXT "v=TLSRPTv1; rua={rua}"'


# --- sending the daily reports (RFC 8460 §3, §5) ----------------------------------------

Enqueue = Callable[[str, str, bytes], Awaitable[None]]


class ReportSource(Protocol):
    async def tls_results(self, day: str) -> dict[TlsResultKey, int]: ...


@dataclass(frozen=True)
class SentReport:
    domain: str
    uri: str
    error: str = ""


async def send_daily_reports(day: str, *, source: ReportSource, resolver: SecureResolver,
                             enqueue: Enqueue, organization: str, submitter: str,
                             from_addr: str, contact: str,
                             https_context: ssl.SSLContext | None = None,
                             timeout: float = 30.0,
                             now: dt.datetime | None = None) -> list[SentReport]:
    """Send ``day``'s report of every policy domain with counts to the ``rua`` URIs of
    its ``_smtp._tls`` record: mailto: through ``enqueue(from, to, message)`` (our own
    queue, empty return path is the caller's choice), https: by POST of the gzip JSON
    (RFC 8460 §5.2). Domains without a record get nothing. Returns what was tried."""
    counts = await source.tls_results(day)
    sent: list[SentReport] = []
    for domain in sorted({k.policy_domain for k in counts}):
        ans = await resolver.query(f"_smtp._tls.{domain}", "TXT")
        if ans.status != "records":
            continue
        uris = parse_record([b"".join(getattr(r, "strings", ())).decode("utf-8", "replace")
                             for r in ans.rdata])
        if not uris:
            continue
        report = build_report(domain, day, counts, organization=organization,
                              contact=contact)
        for uri in uris:
            try:
                if uri.lower().startswith("mailto:"):
                    rcpt = uri[len("mailto:"):].split("?")[0]
                    await enqueue(from_addr, rcpt, report_message(
                        report, domain=domain, submitter=submitter, from_addr=from_addr,
                        to_addr=rcpt, now=now or dt.datetime.now(dt.UTC)))
                else:
                    await _post(uri, report_gzip(report), https_context, timeout, resolver)
                sent.append(SentReport(domain, uri))
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                sent.append(SentReport(domain, uri, f"{type(exc).__name__}: {exc}"))
    return sent


async def _post(uri: str, body: bytes, ctx: ssl.SSLContext | None, timeout: float,
                resolver: SecureResolver) -> None:
    connector = aiohttp.TCPConnector(ssl=ctx or ssl.create_default_context(),
                                     resolver=HttpResolver(resolver), use_dns_cache=False)
    async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                     timeout=aiohttp.ClientTimeout(total=timeout)
                                     ) as session, session.post(
            uri, data=body, allow_redirects=False,
            headers={"Content-Type": REPORT_MEDIA_TYPE}) as resp:
        if resp.status // 100 != 2:
            raise ValueError(f"{uri}: HTTP {resp.status}")

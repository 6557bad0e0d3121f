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
- ``DailyReports`` sends the previous UTC day's reports once, from one node: the day is
  claimed in the store (a lock with a lease) and marked sent when done. It waits
  ``REPORT_DELAY_SECONDS`` after midnight so every node has flushed its last counts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email
import email.policy
import gzip
import json
import logging
import re
import ssl
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
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

log = logging.getLogger("mailstack.outbound.tlsrpt")

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
        strings, sts_mx = await _sts_policy_of(source, domain)
        report = build_report(domain, day, counts, organization=organization,
                              contact=contact, policy_strings=strings, sts_mx=sts_mx)
        for uri in uris:
            try:
                if uri.lower().startswith("mailto:"):
                    # RFC 6068: the address is percent-encoded; no header fields taken
                    rcpt = urllib.parse.unquote(uri[len("mailto:"):].split("?")[0]).strip()
                    if "@" not in rcpt or any(c.isspace() or not c.isprintable()
                                              for c in rcpt):
                        raise ValueError(f"{uri}: not a mail address")
                    await enqueue(from_addr, rcpt, report_message(
                        report, domain=domain, submitter=submitter, from_addr=from_addr,
                        to_addr=rcpt, now=now or dt.datetime.now(dt.UTC)))
                else:
                    await _post(uri, report_gzip(report), https_context, timeout, resolver)
                sent.append(SentReport(domain, uri))
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                sent.append(SentReport(domain, uri, f"{type(exc).__name__}: {exc}"))
    return sent


async def _sts_policy_of(source: ReportSource, domain: str
                         ) -> tuple[dict[str, list[str]], list[str]]:
    """The cached MTA-STS policy of ``domain`` as RFC 8460 §4.4 ``policy-string`` lines
    and ``mx-host`` patterns (empty when the source keeps no policy cache)."""
    get = getattr(source, "get_mta_sts_policy", None)
    cached = await get(domain) if get is not None else None
    if cached is None:
        return {}, []
    lines = [ln.strip() for ln in cached.policy_text.splitlines() if ln.strip()]
    mx = [ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("mx:")]
    return {"sts": lines}, mx


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


# --- once a day, from one node ----------------------------------------------------------

REPORT_DELAY_SECONDS = 900.0  # after 00:00 UTC; counts are flushed once a minute
SEND_LOCK_SECONDS = 900.0  # a node that died while sending lets another take over


class DayStore(ReportSource, Protocol):
    async def claim_tls_report_day(self, day: str, holder: str, ttl: float) -> bool: ...

    async def finish_tls_report_day(self, day: str, holder: str, summary: str) -> None: ...

    async def release_tls_report_day(self, day: str, holder: str) -> None: ...

    async def tls_report_day(self, day: str) -> tuple[float, str] | None: ...


@dataclass
class DailyReports:
    """The daily sending of TLS reports inside ``mailstack serve`` (RFC 8460 §4.1: one
    report per policy domain per UTC day). ``run_once`` is called every minute by every
    node; the store lets one node send each day, once."""

    store: DayStore
    resolver: SecureResolver
    deliver: Enqueue
    organization: str
    submitter: str
    from_addr: str
    contact: str
    holder: str
    https_context: ssl.SSLContext | None = None
    clock: Callable[[], float] = time.time
    _sent_day: str = field(default="", init=False)  # known sent: no store write per minute

    def due_day(self) -> str | None:
        """Yesterday (UTC) once ``REPORT_DELAY_SECONDS`` of today have passed."""
        now = self.clock()
        midnight = now - now % 86400
        if now - midnight < REPORT_DELAY_SECONDS:
            return None
        return day_of(midnight - 1)

    async def run_once(self) -> list[SentReport] | None:
        """Send the due day's reports if no node did; None when there was nothing to do
        (not due, sent already, another node sending)."""
        day = self.due_day()
        if day is None or day == self._sent_day:
            return None
        if not await self.store.claim_tls_report_day(day, self.holder, SEND_LOCK_SECONDS):
            done = await self.store.tls_report_day(day)
            if done is not None and done[0] > 0:  # another node sent it
                self._sent_day = day
            return None
        try:
            sent = await send_daily_reports(
                day, source=self.store, resolver=self.resolver, enqueue=self.deliver,
                organization=self.organization, submitter=self.submitter,
                from_addr=self.from_addr, contact=self.contact,
                https_context=self.https_context,
                now=dt.datetime.fromtimestamp(self.clock(), dt.UTC))
        except BaseException:
            with contextlib.suppress(Exception):  # another node (or we) may try again
                await self.store.release_tls_report_day(day, self.holder)
            raise
        for r in sent:
            if r.error:
                log.warning("tlsrpt: report for %s (%s) to %s failed: %s", r.domain, day,
                            r.uri, r.error)
            else:
                log.info("tlsrpt: report for %s (%s) sent to %s", r.domain, day, r.uri)
        summary = "; ".join(f"{r.domain} -> {r.uri}: {r.error or 'sent'}" for r in sent)
        await self.store.finish_tls_report_day(day, self.holder,
                                               summary or "no report owed")
        self._sent_day = day
        return sent


# --- reports we received (``mailstack tlsrpt list``) -------------------------------------

MAX_REPORT_JSON = 16 * 1024 * 1024  # decompressed; a gzip bomb stops here


class ReportError(ValueError):
    pass


def _gunzip_capped(data: bytes, cap: int = MAX_REPORT_JSON) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error as exc:
        raise ReportError(f"the gzip data is damaged: {exc}") from exc
    if len(out) > cap or d.unconsumed_tail:
        raise ReportError(f"the report is larger than {cap} octets uncompressed")
    return out


def reports_in_message(raw: bytes) -> list[dict[str, Any]]:
    """The TLS reports attached to one received message (RFC 8460 §5.3: parts of type
    application/tlsrpt+gzip or application/tlsrpt+json; also a .json.gz/.json file
    attachment, as some senders label them application/gzip). Raises ``ReportError``
    for a report part that cannot be read; [] when the message carries none."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    found: list[dict[str, Any]] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        name = (part.get_filename() or "").lower()
        gz = ctype == REPORT_MEDIA_TYPE or (ctype != JSON_MEDIA_TYPE
                                             and name.endswith(".json.gz"))
        if not (gz or ctype == JSON_MEDIA_TYPE or name.endswith(".json")):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        data = _gunzip_capped(payload) if gz else payload[:MAX_REPORT_JSON + 1]
        try:
            report = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReportError(f"the report is not JSON: {exc}") from exc
        if not isinstance(report, dict) or not isinstance(report.get("policies"), list):
            raise ReportError("the JSON is not an RFC 8460 report (no policies)")
        found.append(report)
    return found


def summarize(report: Mapping[str, Any]) -> list[str]:
    """Readable lines for one report: who sent it, for which period, and per policy the
    session counts and the failures (RFC 8460 §4.4 fields)."""
    def text(value: Any) -> str:
        return "".join(c if c.isprintable() else "?" for c in str(value))[:200]

    def obj(value: Any) -> Mapping[str, Any]:
        return value if isinstance(value, dict) else {}

    rng = obj(report.get("date-range"))
    lines = [f"{text(rng.get('start-datetime', '?'))} .. {text(rng.get('end-datetime', '?'))}"
             f"  from {text(report.get('organization-name', '?'))}"
             f" <{text(report.get('contact-info', ''))}>"
             f"  report-id {text(report.get('report-id', '?'))}"]
    for pol in report.get("policies") or []:
        if not isinstance(pol, dict):
            continue
        p, s = obj(pol.get("policy")), obj(pol.get("summary"))
        lines.append(f"  {text(p.get('policy-domain', '?'))}  policy "
                     f"{text(p.get('policy-type', '?'))}:"
                     f" {text(s.get('total-successful-session-count', 0))} successful,"
                     f" {text(s.get('total-failure-session-count', 0))} failed sessions")
        for d in pol.get("failure-details") or []:
            if not isinstance(d, dict):
                continue
            where = d.get("receiving-mx-hostname") or d.get("receiving-ip") or ""
            lines.append(f"    {text(d.get('failed-session-count', '?'))} x "
                         f"{text(d.get('result-type', '?'))}"
                         + (f" at {text(where)}" if where else "")
                         + (f" ({text(d['failure-reason-code'])})"
                            if d.get("failure-reason-code") else ""))
    return lines

"""The daily TLS reports (RFC 8460 §4.1, §5) as the running server sends them: one node
per day (the lock in the store, both backends), the destination's ``_smtp._tls`` record
from the DNS rig, mailto: through our own queue to a real SMTP server on loopback,
https: POSTed to a real HTTPS receiver; and `mailstack tlsrpt list` reading the reports
that reached one of our own addresses."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import gzip
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mailstack.app import App
from mailstack.config import settings_from_dict
from mailstack.outbound.reports import deliver_report
from mailstack.outbound.runner import QueueRunner
from mailstack.outbound.security import TransportSecurity
from mailstack.outbound.tlsrpt import (
    REPORT_DELAY_SECONDS,
    REPORT_MEDIA_TYPE,
    TlsResults,
    day_of,
)
from mailstack.store import Store
from mailstack.store.transport import CachedStsPolicy
from tests.cli.conftest import make_cli
from tests.dnsrig import DnsRig
from tests.transport.certs import Pki, write_chain

# A clock half an hour into a UTC day: the reports of the day before are due.
MIDNIGHT = time.time() - time.time() % 86400
DUE_AT = MIDNIGHT + REPORT_DELAY_SECONDS + 1800
YESTERDAY = day_of(MIDNIGHT - 1)


class Receiver:
    """A real HTTPS server on loopback recording what is POSTed to /tlsrpt."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, bytes]] = []
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def start(self, cert: Path, key: Path) -> None:
        async def receive(request: web.Request) -> web.Response:
            self.posted.append((request.headers.get("Content-Type", ""),
                                await request.read()))
            return web.Response(status=201)

        app = web.Application()
        app.router.add_post("/tlsrpt", receive)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def receiver(pki: Pki, tmp_path: Path) -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start(*write_chain(tmp_path, "recv", pki.leaf("reports.rpt.test"), pki.inter))
    yield r
    assert r.runner is not None
    await r.runner.cleanup()


def ca_file(pki: Pki, tmp_path: Path) -> str:
    path = tmp_path / "test-ca.pem"
    path.write_bytes(pki.root.pem)
    return str(path)


async def add_counts(store: Any, at: float) -> None:
    results = TlsResults(lambda: at)
    for _ in range(4):
        results.record("rpt.test", "tlsa", "success", "mx.rpt.test")
    results.record("rpt.test", "tlsa", "validation-failure", "mx.rpt.test")
    results.record("quiet.test", "no-policy-found", "success", "mx.quiet.test")  # no record
    await results.flush(store)


async def test_the_day_lock_lets_one_node_send_once(store: Any) -> None:
    clock = [1000.0]
    store.clock = lambda: clock[0]
    assert await store.claim_tls_report_day("2026-01-01", "a", 60)
    assert not await store.claim_tls_report_day("2026-01-01", "b", 60)
    assert await store.claim_tls_report_day("2026-01-02", "b", 60)  # another day: free
    clock[0] += 61  # a died while sending: its claim expires
    assert await store.claim_tls_report_day("2026-01-01", "b", 60)
    await store.release_tls_report_day("2026-01-01", "a")  # not a's any more: no effect
    assert not await store.claim_tls_report_day("2026-01-01", "a", 60)
    await store.finish_tls_report_day("2026-01-01", "b", "x.test -> mailto:r@x.test: sent")
    assert await store.tls_report_day("2026-01-01") == (
        1061.0, "x.test -> mailto:r@x.test: sent")
    clock[0] += 10_000
    for holder in ("a", "b"):  # sent: nobody sends that day again, even after the lease
        assert not await store.claim_tls_report_day("2026-01-01", holder, 60)
    assert await store.tls_report_day("1999-01-01") is None


async def test_daily_reports_through_the_queue_to_smtp_and_by_https(
        dns_rig: DnsRig, store: Any, pki: Pki, receiver: Receiver, remote_mx: Any,
        tmp_path: Path) -> None:
    # The destination publishes its MX (our SMTP sink, offering STARTTLS) and its
    # _smtp._tls record with a mailto: and an https: rua (RFC 8460 §3).
    sink = await remote_mx(*write_chain(tmp_path, "sink", pki.leaf("mx.rpt.test"),
                                        pki.inter))
    dns_rig.publish("rpt.test", [
        "@ IN MX 10 mx", "mx IN A 127.0.0.1", "reports IN A 127.0.0.1",
        f'_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@rpt.test,'
        f'https://reports.rpt.test:{receiver.port}/tlsrpt"'])
    await add_counts(store, MIDNIGHT - 3600)
    sts = TlsResults(lambda: MIDNIGHT - 60)  # and a testing-mode MTA-STS policy seen
    sts.record("rpt.test", "sts", "certificate-host-mismatch", "mx.rpt.test")
    await sts.flush(store)
    await store.put_mta_sts_policy(CachedStsPolicy(
        "rpt.test", "id1", "version: STSv1\r\nmode: testing\r\nmx: mx.rpt.test\r\n"
        "max_age: 86400\r\n", MIDNIGHT - 7200, MIDNIGHT + 86400))
    host, port = dns_rig.resolver
    settings = settings_from_dict({
        "server": {"hostname": "mail.example.net"},
        "outbound": {"mx_port": sink.port, "connect_timeout_seconds": 5,
                     "command_timeout_seconds": 10},
        "outbound_tls": {"dns_resolver": f"{host}:{port}", "mta_sts": False,
                         "extra_ca_files": ca_file(pki, tmp_path),
                         "tls_report_organization": "Example Mail"}})
    security = TransportSecurity.from_settings(settings, store, clock=lambda: DUE_AT)

    async def deliver(_sender: str, rcpt: str, message: bytes) -> None:
        await deliver_report(store, rcpt, message, lifetime=3600)

    # Two nodes at the same moment: one sends, the other finds the day taken.
    nodes = [security.daily_reports(settings, store, holder, deliver)
             for holder in ("node-a", "node-b")]
    early = dataclasses.replace(nodes[0], clock=lambda: MIDNIGHT + 60)
    assert early.due_day() is None and await early.run_once() is None  # not yet due
    results = await asyncio.gather(*(n.run_once() for n in nodes))
    sent = [r for r in results if r is not None]
    assert len(sent) == 1, results
    assert sorted((s.domain, s.uri.split(":")[0], s.error) for s in sent[0]) == [
        ("rpt.test", "https", ""), ("rpt.test", "mailto", "")]
    assert await nodes[0].run_once() is None and await nodes[1].run_once() is None
    sent_at, summary = await store.tls_report_day(YESTERDAY)
    assert sent_at > 0 and "rpt.test -> mailto:tlsrpt@rpt.test: sent" in summary

    # https: the gzip JSON with the RFC's media type (RFC 8460 §5.2)
    ((ctype, body),) = receiver.posted
    assert ctype == REPORT_MEDIA_TYPE
    report = json.loads(gzip.decompress(body))
    assert report["organization-name"] == "Example Mail"
    assert report["date-range"]["start-datetime"] == f"{YESTERDAY}T00:00:00Z"
    sts_policy, tlsa_policy = report["policies"]
    assert tlsa_policy["policy"]["policy-type"] == "tlsa"
    assert tlsa_policy["summary"] == {"total-successful-session-count": 4,
                                      "total-failure-session-count": 1}
    assert sts_policy["policy"] == {  # RFC 8460 §4.4: the policy as it was applied
        "policy-type": "sts", "policy-domain": "rpt.test", "mx-host": ["mx.rpt.test"],
        "policy-string": ["version: STSv1", "mode: testing", "mx: mx.rpt.test",
                          "max_age: 86400"]}
    assert sts_policy["failure-details"] == [{
        "result-type": "certificate-host-mismatch", "failed-session-count": 1,
        "receiving-mx-hostname": "mx.rpt.test"}]

    # mailto: queued with an empty return path, then delivered by the queue runner
    (row,) = [r for r in await store.queue_rows() if r.recipient == "tlsrpt@rpt.test"]
    assert row.sender == "" and row.state == "queued"
    runner = QueueRunner(store, settings, tls_policy=security)
    await runner.run_once()
    row = await store.queue_row_by_id(row.id)
    assert row.state == "delivered", row
    ((data, over_tls),) = sink.received
    assert over_tls
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert " ".join(str(msg["Subject"]).split()).startswith(
        "Report Domain: rpt.test Submitter: mail.example.net Report-ID: <")
    assert msg["TLS-Report-Domain"] == "rpt.test"
    assert msg["TLS-Report-Submitter"] == "mail.example.net"
    (part,) = [p for p in msg.iter_attachments() if p.get_content_type() == REPORT_MEDIA_TYPE]
    assert json.loads(gzip.decompress(part.get_content()))["policies"] == report["policies"]


async def test_the_running_server_sends_and_the_cli_lists(
        app_factory: Callable[..., Any], dns_rig: DnsRig, pki: Pki, receiver: Receiver,
        tmp_path: Path, db_url: str) -> None:
    """``mailstack serve`` (the App) sends yesterday's reports by itself; the destination
    here names one of our own addresses as rua, so the report lands in its INBOX, where
    `mailstack tlsrpt list` finds and summarizes it."""
    dns_rig.publish("rpt.test", [
        "reports IN A 127.0.0.1",
        f'_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tls-reports@example.com,'
        f'https://reports.rpt.test:{receiver.port}/tlsrpt"'])
    host, port = dns_rig.resolver
    # The day's counts and the hosted rua address exist before the server starts (its
    # first round runs at once).
    before = Store(db_url, tmp_path / "data" / "blobs")
    await before.open()
    await add_counts(before, MIDNIGHT - 3600)
    await before.add_domain("example.com", "standard")
    await before.add_address("tls-reports", "example.com", password_hash="x")
    await before.close()
    start = time.time()
    app: App = await app_factory(
        clock=lambda: DUE_AT + (time.time() - start),
        outbound={"enabled": True, "poll_interval_seconds": 3600},
        outbound_tls={"dns_resolver": f"{host}:{port}", "dnssec_probe_name": "test.",
                      "extra_ca_files": ca_file(pki, tmp_path)})
    assert app.store is not None
    for _ in range(300):  # the server's minute loop starts at once
        day = await app.store.tls_report_day(YESTERDAY)
        if day is not None and day[0] > 0 and receiver.posted:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the running server sent no TLS report")
    assert "rpt.test -> mailto:tls-reports@example.com: sent" in day[1]
    assert receiver.posted[0][0] == REPORT_MEDIA_TYPE

    cli = make_cli(tmp_path, db_url=db_url)  # the same data dir and database
    r = await asyncio.to_thread(cli.ok, "tlsrpt", "list", "tls-reports@example.com")
    assert "INBOX UID 1" in r.out, r.out
    assert f"{YESTERDAY}T00:00:00Z .. {YESTERDAY}T23:59:59Z" in r.out
    assert "from mail.example.net <postmaster@mail.example.net>" in r.out
    assert "rpt.test  policy tlsa: 4 successful, 1 failed sessions" in r.out
    assert "1 x validation-failure at mx.rpt.test" in r.out
    r = await asyncio.to_thread(cli, "tlsrpt", "list", "nobody@example.com")
    assert r.code == 1 and "no address nobody@example.com" in r.err

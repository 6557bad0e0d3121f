"""Sending the daily TLS reports (RFC 8460 §3, §5): the destination's ``_smtp._tls``
record from the DNS rig, mailto: into our queue, https: POSTed to a real HTTPS server."""

from __future__ import annotations

import gzip
import json
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from mailstack.outbound.dnssec import SecureResolver
from mailstack.outbound.mtasts import pkix_context
from mailstack.outbound.tlsrpt import REPORT_MEDIA_TYPE, TlsResults, send_daily_reports
from tests.dnsrig import DnsRig
from tests.transport.certs import NOW, Pki, write_chain


async def test_daily_reports_go_to_mailto_and_https(dns_rig: DnsRig, store: Any, pki: Pki,
                                                    tmp_path: Path) -> None:
    posted: list[tuple[str, bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        posted.append((request.headers["Content-Type"], await request.read()))
        return web.Response(status=201)

    app = web.Application()
    app.router.add_post("/tlsrpt", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    cert, key = write_chain(tmp_path, "r", pki.leaf("reports.rpt.test"), pki.inter)
    sctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    sctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        dns_rig.publish("rpt.test", [
            "reports IN A 127.0.0.1",
            # RFC 6068 percent-encoding, and a mailto: that names no address
            f'_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tls%40rpt.test,mailto:nobody,'
            f'https://reports.rpt.test:{port}/tlsrpt"'], mode="unsigned")
        results = TlsResults(NOW.timestamp)
        results.record("rpt.test", "sts", "success", "mx.rpt.test")
        results.record("rpt.test", "sts", "certificate-host-mismatch", "mx.rpt.test")
        results.record("norecord.test", "tlsa", "success", "mx.norecord.test")
        await results.flush(store)
        ca = tmp_path / "ca.pem"
        ca.write_bytes(pki.root.pem)
        queued: list[tuple[str, str, bytes]] = []

        async def enqueue(sender: str, rcpt: str, message: bytes) -> None:
            queued.append((sender, rcpt, message))

        sent = await send_daily_reports(
            NOW.strftime("%Y-%m-%d"), source=store,
            resolver=SecureResolver([dns_rig.resolver]), enqueue=enqueue,
            organization="Example", submitter="mail.example.net",
            from_addr="tls-reports@example.net", contact="postmaster@example.net",
            https_context=pkix_context([str(ca)]), now=NOW)
    finally:
        await runner.cleanup()
    assert [(s.domain, s.error) for s in sent] == [
        ("rpt.test", ""), ("rpt.test", "ValueError: mailto:nobody: not a mail address"),
        ("rpt.test", "")]
    assert [(q[0], q[1]) for q in queued] == [("tls-reports@example.net", "tls@rpt.test")]
    assert b"Report Domain: rpt.test" in queued[0][2]
    ((ctype, body),) = posted
    assert ctype == REPORT_MEDIA_TYPE
    report = json.loads(gzip.decompress(body))
    assert report["policies"][0]["summary"] == {"total-successful-session-count": 1,
                                                "total-failure-session-count": 1}

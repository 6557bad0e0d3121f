"""/metrics scraped with a real HTTP client before and after real logins and a real
delivery: the counters move, and no address or secret shows up anywhere."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mailstack import metrics
from mailstack.app import App
from tests.conftest import add_mailbox

from .conftest import ADDR, url

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: aiohttp.ClientSession, app: App, listener: str = "metrics",
                 token: str | None = None) -> tuple[Samples, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url(app, listener, "/metrics"), headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "text/plain"
        text = await r.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, text


def val(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def imap_login(port: int, ctx: ssl.SSLContext, password: str) -> bool:
    with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx) as imap:
        try:
            imap.login(ADDR, password)
            return True
        except imaplib.IMAP4.error:
            return False


def send_mail(port: int, ctx: ssl.SSLContext) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx) as smtp:
        smtp.login(ADDR, "secret")
        smtp.sendmail(ADDR, [ADDR], b"From: <anna@example.com>\r\nTo: <anna@example.com>\r\n"
                      b"Subject: metrics\r\n\r\nHello\r\n")


async def test_counters_move_with_logins_and_delivery(
        web_app: App, http: aiohttp.ClientSession, client_ssl: ssl.SSLContext) -> None:
    before, _ = await scrape(http, web_app)
    assert await asyncio.to_thread(imap_login, web_app.ports["imaps"], client_ssl, "secret")
    assert not await asyncio.to_thread(imap_login, web_app.ports["imaps"], client_ssl,
                                       "wrong-password")
    await asyncio.to_thread(send_mail, web_app.ports["submissions"], client_ssl)
    after, text = await scrape(http, web_app)

    def moved(name: str, **labels: str) -> float:
        return val(after, name, **labels) - val(before, name, **labels)

    assert moved("mailstack_logins_total", protocol="imap", outcome="ok") >= 1
    assert moved("mailstack_logins_total", protocol="imap", outcome="failed") >= 1
    assert moved("mailstack_logins_total", protocol="smtp", outcome="ok") >= 1
    assert moved("mailstack_connections_total", protocol="imap") >= 2
    assert moved("mailstack_connections_total", protocol="submission") >= 1
    assert moved("mailstack_smtp_replies_total", **{"class": "2xx"}) >= 4
    assert moved("mailstack_smtp_replies_total", **{"class": "3xx"}) >= 1  # 354
    assert moved("mailstack_messages_accepted_total") >= 1
    assert moved("mailstack_message_bytes_accepted_total") > 50
    assert moved("mailstack_store_transaction_seconds_count") >= 1
    assert val(after, "mailstack_blob_store_bytes") > 0
    assert ("mailstack_event_loop_lag_seconds", ()) in after
    assert val(after, "mailstack_tls_certificate_expiry_timestamp_seconds") > 1.7e9
    # no address, no password in any label or anywhere in the page
    for secret in (ADDR, "anna", "secret", "wrong-password", "127.0.0.1"):
        assert secret not in text


async def test_sessions_gauge_counts_open_sessions(
        web_app: App, http: aiohttp.ClientSession, client_ssl: ssl.SSLContext) -> None:
    before, _ = await scrape(http, web_app)
    imap = await asyncio.to_thread(imaplib.IMAP4_SSL, "127.0.0.1", web_app.ports["imaps"],
                                   ssl_context=client_ssl)
    try:
        during, _ = await scrape(http, web_app)
        assert (val(during, "mailstack_sessions", protocol="imap")
                - val(before, "mailstack_sessions", protocol="imap")) >= 1
    finally:
        await asyncio.to_thread(imap.logout)


async def test_registered_gauges_and_deliveries(web_app: App,
                                                http: aiohttp.ClientSession) -> None:
    """The hooks the outbound queue runner uses: gauges computed at scrape time, and
    deliveries by outcome (unknown outcomes fold into "other")."""
    remove = metrics.register_gauge("queue_size", "Messages waiting.", lambda: 7)
    before, _ = await scrape(http, web_app)
    metrics.delivery("delivered")
    metrics.delivery("anna@example.com")  # never a label value
    after, text = await scrape(http, web_app)
    remove()
    gone, _ = await scrape(http, web_app)
    assert val(after, "mailstack_queue_size") == 7
    assert ("mailstack_queue_size", ()) not in gone
    assert (val(after, "mailstack_deliveries_total", outcome="delivered")
            - val(before, "mailstack_deliveries_total", outcome="delivered")) == 1
    assert val(after, "mailstack_deliveries_total", outcome="other") >= 1
    assert "anna@example.com" not in text


async def test_bearer_token(app_factory: Callable[..., Any],
                            http: aiohttp.ClientSession) -> None:
    app: App = await app_factory(web={"metrics_token": "s3cret-token"})
    for listener in ("metrics", "https"):
        async with http.get(url(app, listener, "/metrics")) as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == "Bearer"
        async with http.get(url(app, listener, "/metrics"),
                            headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        _, text = await scrape(http, app, listener, token="s3cret-token")
        assert "mailstack_logins_total" in text or "mailstack_connections" in text
        assert "s3cret-token" not in text


async def test_metrics_not_on_https_without_token(web_app: App,
                                                  http: aiohttp.ClientSession) -> None:
    async with http.get(url(web_app, "https", "/metrics")) as r:
        assert r.status == 404


async def test_deliveries_and_queue_gauges_with_the_real_queue_runner(
        app_factory: Callable[..., Any], http: aiohttp.ClientSession,
        client_ssl: ssl.SSLContext) -> None:
    """A message to the internet goes through the real queue runner (a transport map to
    an SMTP server on loopback: no DNS): mailstack_deliveries_total{outcome="delivered"}
    moves, and the queue gauges are on the page."""
    from aiosmtpd.smtp import SMTP as SmtpServer

    received: list[bytes] = []

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(bytes(envelope.content or b""))
            return "250 2.0.0 OK"

    loop = asyncio.get_running_loop()
    sink = await loop.create_server(lambda: SmtpServer(Sink(), hostname="sink.test"),
                                    "127.0.0.1", 0)
    port = sink.sockets[0].getsockname()[1]
    try:
        app: App = await app_factory(
            web={"metrics_blob_size_interval_seconds": 0},
            outbound={"enabled": True, "transport": {"remote.example": f"127.0.0.1:{port}"}},
            # never a DNS query outside loopback: no DANE/MTA-STS lookups, a dead resolver
            outbound_tls={"dns_resolver": "127.0.0.1:9", "dane": False, "mta_sts": False,
                          "dns_timeout_seconds": 0.5})
        await add_mailbox(app, ADDR)
        before, _ = await scrape(http, app)

        def send() -> None:
            with smtplib.SMTP_SSL("127.0.0.1", app.ports["submissions"],
                                  context=client_ssl) as smtp:
                smtp.login(ADDR, "secret")
                smtp.sendmail(ADDR, ["x@remote.example"],
                              b"From: <anna@example.com>\r\nTo: <x@remote.example>\r\n"
                              b"Subject: out\r\n\r\nHello\r\n")

        await asyncio.to_thread(send)
        for _ in range(200):
            if received:
                break
            await asyncio.sleep(0.05)
        assert received and b"Subject: out" in received[0]
        for _ in range(100):  # the outcome is counted right after the transaction
            after, text = await scrape(http, app)
            if val(after, "mailstack_deliveries_total", outcome="delivered") > val(
                    before, "mailstack_deliveries_total", outcome="delivered"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("mailstack_deliveries_total{outcome=delivered} did not move")
        assert ("mailstack_queue_size", ()) in after
        assert ("mailstack_queue_oldest_age_seconds", ()) in after
        assert "remote.example" not in text and ADDR not in text
    finally:
        sink.close()
        await sink.wait_closed()

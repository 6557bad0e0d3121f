"""MTA-STS (RFC 8461) end to end on loopback: the ``_mta-sts`` TXT from the DNS rig, the
policy from a real HTTPS server (aiohttp) with a test CA given as an extra CA file, the
cache in the store (both backends), and a real TLS remote MX."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mailstack.outbound.dnssec import SecureResolver
from mailstack.outbound.security import TransportSecurity
from tests.dnsrig import DnsRig
from tests.transport.certs import Pki, make_pki, write_chain
from tests.transport.conftest import execute


@dataclass
class PolicyServer:
    """The HTTPS side of ``mta-sts.<domain>``: ``bodies[domain]`` is served; ``mode``
    "ok" | "redirect" | "error" | "huge" | "html"."""

    port: int = 0
    bodies: dict[str, str] = field(default_factory=dict)
    mode: str = "ok"
    hits: int = 0


@pytest.fixture
async def policy_server(pki: Pki, tmp_path: Path) -> AsyncIterator[PolicyServer]:
    ps = PolicyServer()

    async def handle(request: web.Request) -> web.StreamResponse:
        ps.hits += 1
        domain = request.host.split(":")[0].removeprefix("mta-sts.")
        if ps.mode == "redirect":
            raise web.HTTPFound(f"https://elsewhere.test:{ps.port}/policy")
        if ps.mode == "error":
            return web.Response(status=500, text="oops")
        if ps.mode == "huge":
            return web.Response(text="version: STSv1\n" + "x" * (70 * 1024))
        if ps.mode == "html":
            return web.Response(text=ps.bodies[domain], content_type="text/html")
        return web.Response(text=ps.bodies[domain])

    app = web.Application()
    app.router.add_get("/.well-known/mta-sts.txt", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    # One certificate for every test domain's mta-sts host.
    leaf = pki.leaf("mta-sts.sts.test", "mta-sts.sts2.test", "mta-sts.ststest.test")
    cert, key = write_chain(tmp_path / "web", "web", leaf, pki.inter)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    ps.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield ps
    await runner.cleanup()


@pytest.fixture
def ca_file(pki: Pki, tmp_path: Path) -> str:
    path = tmp_path / "test-ca.pem"
    path.write_bytes(pki.root.pem)
    return str(path)


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    mx_lines = "".join(f"mx: {m}\n" for m in mx)
    return f"version: STSv1\nmode: {mode}\n{mx_lines}max_age: {max_age}\n"


def publish(rig: DnsRig, domain: str, policy_id: str | None) -> None:
    records = ["@ IN MX 10 mx", "mx IN A 127.0.0.1", "mta-sts IN A 127.0.0.1"]
    if policy_id is not None:
        records.append(f'_mta-sts IN TXT "v=STSv1; id={policy_id};"')
    rig.publish(domain, records, mode="unsigned")


def security(rig: DnsRig, store: Any, ca_file: str, ps: PolicyServer,
             clock: Any = None) -> TransportSecurity:
    kw = {"clock": clock} if clock else {}
    return TransportSecurity(SecureResolver([rig.resolver], timeout=5), store,
                             extra_ca_files=(ca_file,), https_port=ps.port,
                             sts_timeout=5, **kw)


async def test_enforce_delivers_to_a_listed_mx_with_a_valid_certificate(
        dns_rig: DnsRig, store: Any, ca_file: str, policy_server: PolicyServer,
        remote_mx: Any, pki: Pki, tmp_path: Path) -> None:
    publish(dns_rig, "sts.test", "one")
    policy_server.bodies["sts.test"] = policy("enforce", "mx.sts.test")
    sec = security(dns_rig, store, ca_file, policy_server)
    req = await sec("sts.test", "mx.sts.test", False)
    assert (req.policy, req.require_tls) == ("mta-sts", True)
    server = await remote_mx(*write_chain(tmp_path, "mx", pki.leaf("mx.sts.test"), pki.inter))
    out = await execute(req, server.port, "mx.sts.test")
    assert out.delivered and out.tls and out.authenticated, out
    cached = await store.get_mta_sts_policy("sts.test")
    assert cached.policy_id == "one" and "enforce" in cached.policy_text

    # A certificate from a CA nobody trusts: the handshake fails, nothing is sent.
    stranger = make_pki("Stranger")
    bad = await remote_mx(*write_chain(tmp_path, "bad", stranger.leaf("mx.sts.test"),
                                       stranger.inter))
    out = await execute(req, bad.port, "mx.sts.test")
    assert not out.delivered and bad.received == []

    # A trusted certificate for another name: refused as well.
    other = await remote_mx(*write_chain(tmp_path, "oth", pki.leaf("mx9.sts.test"),
                                         pki.inter))
    out = await execute(req, other.port, "mx.sts.test")
    assert not out.delivered and other.received == []


async def test_enforce_policy_naming_a_different_mx_defers(
        dns_rig: DnsRig, store: Any, ca_file: str, policy_server: PolicyServer) -> None:
    publish(dns_rig, "sts2.test", "p1")
    policy_server.bodies["sts2.test"] = policy("enforce", "mail.elsewhere.test")
    sec = security(dns_rig, store, ca_file, policy_server)
    req = await sec("sts2.test", "mx.sts2.test", False)
    assert req.defer_reason and "not listed" in req.defer_reason


async def test_testing_mode_delivers_and_reports(
        dns_rig: DnsRig, store: Any, ca_file: str, policy_server: PolicyServer,
        remote_mx: Any, tmp_path: Path) -> None:
    publish(dns_rig, "ststest.test", "t1")
    policy_server.bodies["ststest.test"] = policy("testing", "mx.ststest.test")
    sec = security(dns_rig, store, ca_file, policy_server)
    req = await sec("ststest.test", "mx.ststest.test", False)
    assert (req.policy, req.require_tls) == ("mta-sts-testing", False)
    stranger = make_pki("Stranger2")
    server = await remote_mx(*write_chain(tmp_path, "t", stranger.leaf("mx.ststest.test"),
                                          stranger.inter))
    out = await execute(req, server.port, "mx.ststest.test")
    assert out.delivered and out.tls
    assert len(server.received) == 1
    results = {k.result_type for k in sec.results.counts if k.policy_type == "sts"}
    assert results == {"certificate-not-trusted"}
    await sec.flush_results()
    stored = await store.tls_results(_today(sec))
    assert sum(stored.values()) == 1 and not sec.results.counts


def _today(sec: TransportSecurity) -> str:
    from mailstack.outbound.tlsrpt import day_of

    return day_of(sec.clock())


async def test_cache_refetch_on_new_id_and_fallback_on_fetch_failure(
        dns_rig: DnsRig, store: Any, ca_file: str, policy_server: PolicyServer) -> None:
    publish(dns_rig, "sts.test", "v1")
    policy_server.bodies["sts.test"] = policy("enforce", "mx.sts.test")
    sec = security(dns_rig, store, ca_file, policy_server)
    first = await sec._sts.lookup("sts.test")
    assert first.policy and first.policy.mx == ("mx.sts.test",) and policy_server.hits == 1
    again = await sec._sts.lookup("sts.test")  # same id, unexpired: from the store
    assert again.from_cache and policy_server.hits == 1

    publish(dns_rig, "sts.test", "v2")  # new id: fetched again
    policy_server.bodies["sts.test"] = policy("enforce", "mx2.sts.test")
    third = await sec._sts.lookup("sts.test")
    assert third.policy and third.policy.mx == ("mx2.sts.test",) and policy_server.hits == 2

    publish(dns_rig, "sts.test", "v3")  # new id, but the fetch fails: cached policy stays
    for mode, result in (("error", "sts-policy-fetch-error"), ("redirect",
                                                                "sts-policy-fetch-error"),
                         ("huge", "sts-policy-invalid"), ("html", "sts-policy-invalid")):
        policy_server.mode = mode
        found = await sec._sts.lookup("sts.test")
        assert found.policy and found.policy.mx == ("mx2.sts.test",), mode
        assert found.error is not None and found.error.result_type == result, mode
    assert (await store.get_mta_sts_policy("sts.test")).policy_id == "v2"

    publish(dns_rig, "sts.test", None)  # TXT removed: the unexpired policy stays (§3.3)
    assert (await sec._sts.lookup("sts.test")).policy is not None


async def test_expired_cache_and_no_txt_means_no_policy(
        dns_rig: DnsRig, store: Any, ca_file: str, policy_server: PolicyServer) -> None:
    now = [1_000_000.0]
    publish(dns_rig, "sts.test", "e1")
    policy_server.bodies["sts.test"] = policy("enforce", "mx.sts.test", max_age=100)
    sec = security(dns_rig, store, ca_file, policy_server, clock=lambda: now[0])
    assert (await sec._sts.lookup("sts.test")).policy is not None
    publish(dns_rig, "sts.test", None)
    now[0] += 101
    assert (await sec._sts.lookup("sts.test")).policy is None
    req = await sec("sts.test", "mx.sts.test", False)
    assert req.policy == "opportunistic"


async def test_enforce_through_the_queue_runner(
        dns_rig: DnsRig, sqlite_store: Any, ca_file: str, policy_server: PolicyServer,
        remote_mx: Any, pki: Pki, tmp_path: Path) -> None:
    """The queue runner's own SMTP client under an enforce policy: delivered to the
    listed MX with a valid certificate (peer authenticated, in the row's history); a
    certificate nobody trusts defers the message and nothing reaches that server."""
    from mailstack.config import settings_from_dict
    from mailstack.outbound.runner import QueueRunner
    from tests.transport.conftest import MESSAGE

    publish(dns_rig, "sts.test", "run1")
    policy_server.bodies["sts.test"] = policy("enforce", "mx.sts.test")
    sec = security(dns_rig, sqlite_store, ca_file, policy_server)
    good = await remote_mx(*write_chain(tmp_path, "mx", pki.leaf("mx.sts.test"), pki.inter))
    stranger = make_pki("Stranger")
    bad = await remote_mx(*write_chain(tmp_path, "bad", stranger.leaf("mx.sts.test"),
                                       stranger.inter))
    host, port = dns_rig.resolver
    blob = await sqlite_store.put_blob(MESSAGE)
    rows = []
    for server, rcpt in ((good, "a@sts.test"), (bad, "b@sts.test")):
        settings = settings_from_dict({
            "server": {"hostname": "mail.example.net"},
            "outbound": {"mx_port": server.port, "connect_timeout_seconds": 5,
                         "command_timeout_seconds": 10},
            "outbound_tls": {"dns_resolver": f"{host}:{port}"}})
        (row_id,) = await sqlite_store.enqueue("x@example.org", [rcpt], blob, len(MESSAGE))
        await QueueRunner(sqlite_store, settings, tls_policy=sec).run_once()
        rows.append(await sqlite_store.queue_row_by_id(row_id))
    delivered, deferred = rows
    assert delivered.state == "delivered", delivered
    last = delivered.history[-1]
    assert (last["policy"], last["authenticated"]) == ("mta-sts", True), last
    assert len(good.received) == 1 and good.received[0][1]
    assert deferred.state == "queued", deferred
    assert deferred.history[-1]["policy"] == "mta-sts"
    assert bad.received == []

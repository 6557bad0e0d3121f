"""DANE end to end: the queue runner (routing through the validating resolver of the
DNS rig, ``TransportSecurity`` as its ``tls_policy``, the SMTP client) delivering to a
real TLS remote MX on loopback; what the row and the remote server record."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from mailstack.config import settings_from_dict
from mailstack.outbound.dane import record_for
from mailstack.outbound.runner import QueueRunner
from mailstack.outbound.security import TransportSecurity
from tests.cli.conftest import make_cli
from tests.dnsrig import DnsRig
from tests.transport.certs import Pki, issue, write_chain
from tests.transport.conftest import MESSAGE


async def run_one(dns_rig: DnsRig, store: Any, port: int, rcpt: str, *,
                  lifetime: float | None = None, clock: Any = time.time) -> Any:
    host, rport = dns_rig.resolver
    settings = settings_from_dict({
        "server": {"hostname": "mail.example.net"},
        "outbound": {"mx_port": port, "connect_timeout_seconds": 5,
                     "command_timeout_seconds": 10},
        "outbound_tls": {"dns_resolver": f"{host}:{rport}", "mta_sts": False}})
    security = TransportSecurity.from_settings(settings, store)
    runner = QueueRunner(store, settings, tls_policy=security, clock=clock)
    blob = await store.put_blob(MESSAGE)
    (row_id,) = await store.enqueue("a@example.org", [rcpt], blob, len(MESSAGE),
                                    lifetime=lifetime)
    await runner.run_once()
    return await store.queue_row_by_id(row_id), security


async def test_dane_through_the_queue_runner(dns_rig: DnsRig, remote_mx: Any,
                                             sqlite_store: Any, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    leaf = issue("mx.e2e.test", names=("mx.e2e.test",))
    server = await remote_mx(*write_chain(tmp_path, "e2e", leaf))
    dns_rig.publish("e2e.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                 f"_25._tcp.mx IN TLSA {record_for(leaf.cert).text()}"])
    with caplog.at_level(logging.INFO, logger="mailstack.outbound"):
        row, security = await run_one(dns_rig, sqlite_store, server.port, "b@e2e.test")
    assert row.state == "delivered", row
    assert len(server.received) == 1 and server.received[0][1]  # over TLS
    # The attempt names the policy that applied, the TLS version, the authentication:
    # in the row's history (`mailstack queue show`) and in the delivery log.
    last = row.history[-1]
    assert (last["policy"], last["authenticated"]) == ("dane", True), last
    assert last["tls"].startswith("TLSv1.")
    assert any("b@e2e.test" in m and "via mx.e2e.test (policy dane, TLSv1." in m
               and "peer authenticated)" in m for m in caplog.messages), caplog.messages
    cli = make_cli(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    shown = (await asyncio.to_thread(cli.ok, "queue", "show", str(row.id))).out
    assert re.search(r"mx\.e2e\.test  \[policy dane; TLSv1\.[23] \S+; peer authenticated\]",
                     shown), shown

    # The TLSA record no longer matches: deferred, nothing reaches the server.
    other = issue("mx.e2e.test", names=("mx.e2e.test",))
    dns_rig.publish("e2e.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                 f"_25._tcp.mx IN TLSA {record_for(other.cert).text()}"])
    row, security = await run_one(dns_rig, sqlite_store, server.port, "c@e2e.test")
    assert row.state == "queued" and "DANE" in row.last_error, row
    assert len(server.received) == 1
    assert (row.history[-1]["policy"], row.history[-1]["authenticated"]) == ("dane", False)
    shown = (await asyncio.to_thread(cli.ok, "queue", "show", str(row.id))).out
    assert "[policy dane; no TLS]" in shown and "TLS peer not authenticated" in shown

    # STARTTLS withheld while TLSA exists: deferred.
    plain = await remote_mx(None)
    row, security = await run_one(dns_rig, sqlite_store, plain.port, "d@e2e.test")
    assert row.state == "queued" and "STARTTLS" in row.last_error, row
    assert plain.received == []
    assert any(k.result_type == "starttls-not-supported" for k in security.results.counts)

    # Bogus zone: the MX lookup fails, the row waits (never a bounce, never plaintext).
    dns_rig.publish("e2e.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1"], mode="bogus")
    row, security = await run_one(dns_rig, sqlite_store, server.port, "e@e2e.test")
    assert row.state == "queued", row
    assert len(server.received) == 1


async def test_unsigned_destination_is_opportunistic(dns_rig: DnsRig, remote_mx: Any,
                                                     sqlite_store: Any,
                                                     tmp_path: Path) -> None:
    leaf = issue("whatever", names=("whatever",))
    server = await remote_mx(*write_chain(tmp_path, "op", leaf))
    dns_rig.publish("e2eplain.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                      "_25._tcp.mx IN TLSA 3 1 1 " + "77" * 32],
                    mode="unsigned")
    row, _ = await run_one(dns_rig, sqlite_store, server.port, "b@e2eplain.test")
    assert row.state == "delivered", row
    assert server.received[0][1]  # opportunistic STARTTLS was used
    last = row.history[-1]
    assert (last["policy"], last["authenticated"]) == ("opportunistic", False), last
    assert last["tls"].startswith("TLSv1.")
    cli = make_cli(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    shown = (await asyncio.to_thread(cli.ok, "queue", "show", str(row.id))).out
    assert "[policy opportunistic; TLSv1." in shown and "; peer not authenticated]" in shown


async def test_dane_ta_and_unusable_only_through_the_queue_runner(
        dns_rig: DnsRig, pki: Pki, remote_mx: Any, sqlite_store: Any,
        tmp_path: Path) -> None:
    """DANE-TA(2) with a test CA: delivered, peer authenticated; a TLSA RRset with only
    unusable records (PKIX-EE, RFC 7672 §3.1.3): delivered over TLS, not authenticated."""
    ta = f"2 0 1 {hashlib.sha256(pki.inter.der).hexdigest()}"
    server = await remote_mx(*write_chain(tmp_path, "ta", pki.leaf("mx.e2eta.test"),
                                          pki.inter))
    dns_rig.publish("e2eta.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                   f"_25._tcp.mx IN TLSA {ta}"])
    row, _ = await run_one(dns_rig, sqlite_store, server.port, "b@e2eta.test")
    assert row.state == "delivered", row
    assert (row.history[-1]["policy"], row.history[-1]["authenticated"]) == ("dane", True)

    leaf = issue("mx.e2eu.test", names=("mx.e2eu.test",))
    server2 = await remote_mx(*write_chain(tmp_path, "u", leaf))
    dns_rig.publish("e2eu.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                  f"_25._tcp.mx IN TLSA 1 1 1 {record_for(leaf.cert).data.hex()}"])
    row, _ = await run_one(dns_rig, sqlite_store, server2.port, "b@e2eu.test")
    assert row.state == "delivered", row
    assert server2.received[0][1]  # over TLS
    last = row.history[-1]
    assert (last["policy"], last["authenticated"]) == ("dane-unusable", False), last
    assert last["tls"].startswith("TLSv1.")


async def test_dane_failure_bounces_at_the_end_of_the_lifetime_with_the_reason(
        dns_rig: DnsRig, remote_mx: Any, sqlite_store: Any, tmp_path: Path) -> None:
    """STARTTLS withheld where DANE applies: the message waits, and when its lifetime
    ends it is given up; the sender's report names the reason (RFC 7672 §2.2)."""
    leaf = issue("mx.e2eb.test", names=("mx.e2eb.test",))
    plain = await remote_mx(None)
    dns_rig.publish("e2eb.test", ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                                  f"_25._tcp.mx IN TLSA {record_for(leaf.cert).text()}"])
    row, _ = await run_one(dns_rig, sqlite_store, plain.port, "b@e2eb.test", lifetime=60,
                           clock=lambda: time.time() + 120)
    assert row.state == "expired", row
    assert "STARTTLS not offered but TLS is required (dane)" in row.last_error
    assert plain.received == []
    (report,) = [r for r in await sqlite_store.queue_rows() if r.recipient == "a@example.org"]
    assert report.sender == ""  # a report is never answered by a report
    data = b"".join([c async for c in sqlite_store.queue_chunks(report)])
    assert b"report-type=delivery-status" in data and b"Action: failed" in data
    assert b"Final-Recipient: rfc822; b@e2eb.test" in data
    assert b"Status: 4.7.4" in data
    assert b"STARTTLS not offered but TLS is required (dane)" in data

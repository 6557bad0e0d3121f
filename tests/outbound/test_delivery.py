"""Delivery to the internet end to end on loopback (docs/behaviour.md §6): submit on 465,
the queue runner delivers to a remote MX (aiosmtpd) chosen by the transport map or by
(fake) MX records; retries, delay notice, RFC 3464 reports in the sender's INBOX."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

from mailstack.outbound.routing import DnsNoDomain, DnsTemporary, MxAnswer

from .conftest import Outbound, message, start_sink, status_fields

Factory = Callable[..., Awaitable[Outbound]]


async def test_submitted_message_is_delivered_once_bytes_intact(
        outbound_factory: Factory) -> None:
    sink = await start_sink()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"})
    body = ".starts with a dot\r\n..two dots\r\nplain\r\n.\r\nend"
    await ob.submit("anna@example.com", ["x@remote.example", "secret@remote.example"],
                    message("anna@example.com", "x@remote.example", "dots", body,
                            extra="Bcc: secret@remote.example\r\n"))
    await ob.run()
    assert len(sink.messages) == 1  # both recipients in one transaction
    got = sink.messages[0]
    assert got.mail_from == "anna@example.com"
    assert sorted(got.rcpt_tos) == ["secret@remote.example", "x@remote.example"]
    assert body.encode() + b"\r\n" in got.content  # dot-stuffing undone exactly
    assert b"\nBcc:" not in got.content and b"secret@" not in got.content.split(
        b"\r\n\r\n", 1)[1]
    assert b"Received:" in got.content
    rows = await ob.rows()
    assert {r.state for r in rows} == {"delivered"}
    assert all(r.history and r.history[-1]["reply"].startswith("250") for r in rows)
    await ob.run()  # nothing due: not sent again
    assert len(sink.messages) == 1
    assert ob.app.runner is not None and ob.app.runner.counters["delivered"] == 2
    stats = await ob.store.queue_stats()
    assert stats.waiting == 0 and stats.by_state["delivered"] == 2


async def test_mx_lookup_order_and_starttls(outbound_factory: Factory,
                                            server_tls: ssl.SSLContext) -> None:
    sink = await start_sink(server_tls)
    ob = await outbound_factory(mx_port=sink.port)
    ob.resolver.mx_answers["remote.example"] = MxAnswer(
        ((10, "mx1.remote.example"), (20, "mx2.remote.example")))
    ob.resolver.hosts["mx1.remote.example"] = []  # no address: the next host is used
    ob.resolver.hosts["mx2.remote.example"] = ["127.0.0.1"]
    await ob.submit("anna@example.com", ["x@remote.example"],
                    message("anna@example.com", "x@remote.example"))
    await ob.run()
    assert len(sink.messages) == 1
    (row,) = await ob.rows()
    assert row.state == "delivered" and row.remote_mta == "mx2.remote.example"
    assert row.history[-1]["tls"].startswith("TLS")  # opportunistic STARTTLS used
    assert ob.resolver.queries[:3] == [("MX", "remote.example"), ("A", "mx1.remote.example"),
                                       ("A", "mx2.remote.example")]


async def test_ipv6_mx_and_stray_line_ends_normalized(outbound_factory: Factory) -> None:
    sink = await start_sink(host="::1")
    ob = await outbound_factory(mx_port=sink.port)
    ob.resolver.mx_answers["six.example"] = MxAnswer(((10, "mx.six.example"),))
    ob.resolver.hosts["mx.six.example"] = ["::1"]
    data = (b"From: anna@example.com\r\nSubject: stray\r\n\r\nbare lf\nbare cr\rmixed\n\r"
            b".\nend")  # e.g. an autoreply or a forward built with odd line ends
    blob = await ob.store.put_blob(data)
    await ob.store.enqueue("anna@example.com", ["x@six.example"], blob, len(data))
    await ob.run()
    (got,) = sink.messages
    body = got.content.split(b"\r\n\r\n", 1)[1]
    assert body == b"bare lf\r\nbare cr\r\nmixed\r\n\r\n.\r\nend\r\n"
    (row,) = await ob.rows()
    assert row.state == "delivered"


async def test_temporary_failure_then_success(outbound_factory: Factory) -> None:
    sink = await start_sink(rcpt_replies={"x@remote.example": [
        "451 4.3.0 try later", "250 OK"]})
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"})
    await ob.submit("anna@example.com", ["x@remote.example"],
                    message("anna@example.com", "x@remote.example"))
    await ob.run()
    (row,) = await ob.rows()
    assert row.state == "queued" and row.attempts == 1 and "451" in row.last_error
    assert row.next_attempt_at == ob.clock.now + 300  # first step of the schedule
    assert sink.messages == []
    await ob.advance_to_next()
    (row,) = await ob.rows()
    assert row.state == "delivered" and row.attempts == 2
    assert len(sink.messages) == 1
    assert len(await ob.inbox("anna@example.com")) == 0  # no report, no notice


async def test_temporary_failure_forever_one_delay_notice_then_final_report(
        outbound_factory: Factory) -> None:
    sink = await start_sink(rcpt_replies={"x@remote.example": ["450 4.2.1 mailbox busy"]})
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"})
    start = ob.clock.now
    await ob.submit("anna@example.com", ["x@remote.example"],
                    message("anna@example.com", "x@remote.example", "patience"))
    await ob.run()
    (row,) = await ob.rows()
    expires = row.expires_at
    assert expires == start + 5 * 86400
    notices_at = []
    while await ob.advance_to_next():
        inbox = await ob.inbox("anna@example.com")
        if inbox and not notices_at:
            notices_at.append(ob.clock.now)
    assert notices_at and notices_at[0] - start >= 4 * 3600
    inbox = await ob.inbox("anna@example.com")
    assert len(inbox) == 2  # one delay notice, one final report
    delay, final = inbox
    assert delay["Subject"].startswith("Delayed Mail")
    (d,) = status_fields(delay)
    assert d["action"] == "delayed" and d["final-recipient"] == "rfc822; x@remote.example"
    import email.utils

    assert email.utils.parsedate_to_datetime(d["will-retry-until"]).timestamp() == expires
    assert email.utils.formatdate(expires, usegmt=True) in delay.get_body(
        ("plain",)).get_content()  # type: ignore[union-attr]
    (f,) = status_fields(final)
    assert f["action"] == "failed" and f["status"] == "4.2.1"
    assert "450 4.2.1" in f["diagnostic-code"]
    (row,) = [r for r in await ob.rows() if r.recipient == "x@remote.example"]
    assert row.state == "expired" and row.attempts > 10 and row.report_action == ""
    assert ob.clock.now == expires  # the last attempt came when the lifetime ended
    assert sink.messages == []


async def test_permanent_failure_one_report_in_the_senders_inbox(
        outbound_factory: Factory) -> None:
    sink = await start_sink(rcpt_replies={"nobody@remote.example": [
        "550 5.1.1 no such user"]})
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"})
    await ob.submit("anna@example.com", ["nobody@remote.example", "x@remote.example"],
                    message("anna@example.com", "nobody@remote.example", "mixed"))
    await ob.run()
    await ob.run()
    assert [m.rcpt_tos for m in sink.messages] == [["x@remote.example"]]
    (report,) = await ob.inbox("anna@example.com")
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["Auto-Submitted"] == "auto-replied"
    (f,) = status_fields(report)  # only the failed recipient
    assert f["final-recipient"] == "rfc822; nobody@remote.example"
    assert f["action"] == "failed" and f["status"] == "5.1.1"
    assert f["remote-mta"] == "dns; 127.0.0.1"
    parts = [p.get_content_type() for p in report.iter_parts()]
    assert parts[-1] == "text/rfc822-headers"
    assert "Subject: mixed" in str(list(report.iter_parts())[-1].get_content())
    states = {r.recipient: r.state for r in await ob.rows()}
    assert states == {"nobody@remote.example": "failed", "x@remote.example": "delivered"}
    assert ob.app.runner is not None and ob.app.runner.counters["reports"] == 1


async def test_empty_return_path_never_gets_a_report(outbound_factory: Factory) -> None:
    sink = await start_sink(rcpt_replies={"nobody@remote.example": ["550 5.1.1 no"]})
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"})
    blob = await ob.store.put_blob(message("MAILER-DAEMON@x", "nobody@remote.example"))
    await ob.store.enqueue("", ["nobody@remote.example"], blob, 100)  # e.g. an autoreply
    await ob.run()
    await ob.run()
    (row,) = await ob.rows()
    assert row.state == "failed" and row.report_action == ""
    assert len(await ob.rows()) == 1  # nothing new queued
    assert await ob.inbox("anna@example.com") == []


async def test_report_to_a_bouncing_address_is_not_reported_on(
        outbound_factory: Factory) -> None:
    sink = await start_sink(rcpt_replies={
        "nobody@remote.example": ["550 5.1.1 no"], "gone@other.example": ["550 5.1.1 no"]})
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}",
                                 "other.example": f"127.0.0.1:{sink.port}"})
    blob = await ob.store.put_blob(message("gone@other.example", "nobody@remote.example"))
    await ob.store.enqueue("gone@other.example", ["nobody@remote.example"], blob, 100)
    for _ in range(4):
        await ob.run()
    rows = await ob.rows()
    assert [(r.sender, r.recipient, r.state) for r in rows] == [
        ("gone@other.example", "nobody@remote.example", "failed"),
        ("", "gone@other.example", "failed")]  # the report bounced: nothing more
    assert all(r.report_action == "" for r in rows)


async def test_notify_never_and_success(outbound_factory: Factory) -> None:
    sink = await start_sink(rcpt_replies={"nobody@remote.example": ["550 5.1.1 no"]})
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"})
    from mailstack.store import DsnRequest

    blob = await ob.store.put_blob(message("anna@example.com", "x@remote.example", "n"))
    await ob.store.enqueue("anna@example.com", ["nobody@remote.example", "x@remote.example"],
                           blob, 100, dsn=DsnRequest(rcpt={
                               "nobody@remote.example": ("NEVER", ""),
                               "x@remote.example": ("SUCCESS", "rfc822;X@remote.example")}))
    await ob.run()
    await ob.run()
    (report,) = await ob.inbox("anna@example.com")  # no failure report (NEVER)
    (f,) = status_fields(report)
    # aiosmtpd offers no DSN: we report "relayed" ourselves (RFC 3461 §6.2.2)
    assert f["action"] == "relayed" and f["final-recipient"] == "rfc822; x@remote.example"
    assert f["original-recipient"] == "rfc822;X@remote.example"


async def test_dns_verdicts(outbound_factory: Factory) -> None:
    ob = await outbound_factory()
    ob.resolver.mx_answers["null.example"] = MxAnswer(((0, ""),))
    ob.resolver.mx_answers["nx.example"] = DnsNoDomain("nx.example")
    ob.resolver.mx_answers["flaky.example"] = DnsTemporary("SERVFAIL")
    await ob.submit("anna@example.com", ["a@null.example", "b@nx.example", "c@flaky.example"],
                    message("anna@example.com", "a@null.example", "dns"))
    await ob.run()
    await ob.run()
    rows = {r.recipient: r for r in await ob.rows()}
    assert rows["a@null.example"].state == "failed"
    assert rows["a@null.example"].status == "5.1.10"
    assert rows["b@nx.example"].state == "failed" and rows["b@nx.example"].status == "5.1.2"
    assert rows["c@flaky.example"].state == "queued"  # never a bounce for SERVFAIL
    assert "SERVFAIL" in rows["c@flaky.example"].last_error
    (report,) = await ob.inbox("anna@example.com")  # one report naming both failures
    fields = status_fields(report)
    assert sorted((f["final-recipient"], f["status"]) for f in fields) == [
        ("rfc822; a@null.example", "5.1.10"), ("rfc822; b@nx.example", "5.1.2")]


async def test_implicit_mx_without_address_bounces(outbound_factory: Factory) -> None:
    ob = await outbound_factory()
    ob.resolver.mx_answers["bare.example"] = MxAnswer(())
    ob.resolver.hosts["bare.example"] = []
    await ob.submit("anna@example.com", ["a@bare.example"],
                    message("anna@example.com", "a@bare.example"))
    await ob.run()
    (row,) = await ob.rows()
    assert row.state == "failed" and row.status == "5.1.2"
    assert ("A", "bare.example") in ob.resolver.queries  # implicit MX: the domain itself


async def test_smtputf8_needed_but_not_offered_bounces_5_6_7(
        outbound_factory: Factory) -> None:
    plain = await start_sink(smtputf8=False)
    utf8 = await start_sink()
    ob = await outbound_factory({"old.example": f"127.0.0.1:{plain.port}",
                                 "new.example": f"127.0.0.1:{utf8.port}"})
    blob = await ob.store.put_blob(message("anna@example.com", "x@new.example"))
    await ob.store.enqueue("anna@example.com", ["jörg@old.example", "jörg@new.example"],
                           blob, 100)
    await ob.run()
    assert plain.messages == []
    assert [m.rcpt_tos for m in utf8.messages] == [["jörg@new.example"]]
    assert "SMTPUTF8" in utf8.messages[0].mail_options
    rows = {r.recipient: r for r in await ob.rows()}
    assert rows["jörg@old.example"].state == "failed"
    assert rows["jörg@old.example"].status == "5.6.7"
    assert rows["jörg@new.example"].state == "delivered"


async def test_lifetime_setting_applies_to_submitted_mail(outbound_factory: Factory) -> None:
    ob = await outbound_factory(lifetime_seconds=7200.0)
    assert ob.app.runner is not None
    await ob.app.runner.stop()  # only look at the queued row
    ob.resolver.mx_answers["remote.example"] = DnsTemporary("SERVFAIL")
    await ob.submit("anna@example.com", ["x@remote.example"],
                    message("anna@example.com", "x@remote.example"))
    (row,) = await ob.rows()
    assert row.expires_at == ob.clock.now + 7200

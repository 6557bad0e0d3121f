"""TLS reporting (RFC 8460): counts in the store (both backends), the JSON report, its
mail form, and the records for our own domains (``_smtp._tls``, MTA-STS)."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
from typing import Any

from mailstack.outbound.mtasts import our_policy_text, our_txt_record, parse_policy, parse_txt
from mailstack.outbound.tlsrpt import (
    REPORT_MEDIA_TYPE,
    TlsResults,
    build_report,
    parse_record,
    record_text,
    report_message,
)
from tests.transport.certs import NOW

DAY = NOW.strftime("%Y-%m-%d")


async def test_counts_survive_in_the_store_and_add_up(store: Any) -> None:
    results = TlsResults(NOW.timestamp)
    for _ in range(3):
        results.record("d.test", "tlsa", "success", "mx.d.test")
    results.record("d.test", "tlsa", "validation-failure", "MX.d.test")
    results.record("e.test", "sts", "sts-policy-fetch-error", "")
    await results.flush(store)
    assert results.counts == {}
    results.record("d.test", "tlsa", "success", "mx.d.test")
    await results.flush(store)
    stored = {(k.policy_domain, k.result_type, k.mx_host): n
              for k, n in (await store.tls_results(DAY)).items()}
    assert stored == {("d.test", "success", "mx.d.test"): 4,
                      ("d.test", "validation-failure", "mx.d.test"): 1,
                      ("e.test", "sts-policy-fetch-error", ""): 1}
    assert await store.tls_results("1999-01-01") == {}


async def test_failed_flush_keeps_the_counts() -> None:
    class Down:
        async def add_tls_results(self, counts: Any) -> None:
            raise OSError("database down")

    results = TlsResults(NOW.timestamp)
    results.record("d.test", "tlsa", "success", "mx")
    try:
        await results.flush(Down())
    except OSError:
        pass
    assert sum(results.counts.values()) == 1


def test_report_json_and_mail() -> None:
    results = TlsResults(NOW.timestamp)
    for _ in range(5):
        results.record("d.test", "sts", "success", "mx.d.test")
    results.record("d.test", "sts", "certificate-expired", "mx.d.test")
    results.record("other.test", "tlsa", "success", "mx.other.test")
    report = build_report("d.test", DAY, results.counts, organization="Example Mail",
                          contact="postmaster@example.net", report_id="r1",
                          policy_strings={"sts": ["version: STSv1", "mode: enforce"]},
                          sts_mx=["mx.d.test"])
    assert report["date-range"]["start-datetime"] == f"{DAY}T00:00:00Z"
    assert report["date-range"]["end-datetime"] == f"{DAY}T23:59:59Z"
    (pol,) = report["policies"]  # other.test is not in d.test's report
    assert pol["policy"] == {"policy-type": "sts", "policy-domain": "d.test",
                             "policy-string": ["version: STSv1", "mode: enforce"],
                             "mx-host": ["mx.d.test"]}
    assert pol["summary"] == {"total-successful-session-count": 5,
                              "total-failure-session-count": 1}
    assert pol["failure-details"] == [{"result-type": "certificate-expired",
                                       "failed-session-count": 1,
                                       "receiving-mx-hostname": "mx.d.test"}]
    raw = report_message(report, domain="d.test", submitter="mail.example.net",
                         from_addr="tls-reports@example.net", to_addr="rua@d.test", now=NOW)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert " ".join(str(msg["Subject"]).split()) == (
        "Report Domain: d.test Submitter: mail.example.net Report-ID: <r1>")
    assert msg["TLS-Report-Domain"] == "d.test"
    parts = [p for p in msg.iter_attachments() if p.get_content_type() == REPORT_MEDIA_TYPE]
    assert len(parts) == 1
    assert parts[0].get_filename().startswith("mail.example.net!d.test!")
    assert json.loads(gzip.decompress(parts[0].get_content())) == report


def test_tlsrpt_records() -> None:
    assert parse_record(["v=TLSRPTv1; rua=mailto:a@d.test,https://r.d.test/x, ftp://no"]) == [
        "mailto:a@d.test", "https://r.d.test/x"]
    assert parse_record(["v=TLSRPTv1; rua=mailto:a@d.test", "v=TLSRPTv1; rua=mailto:b"]) == []
    assert parse_record(["v=spf1 -all"]) == []
    assert record_text("ours.example.", "mailto:tls@ours.example") == (
        '_smtp._tls.ours.example. IN TXT "v=TLSRPTv1; rua=mailto:tls@ours.example"')


def test_our_mta_sts_records_parse_back() -> None:
    text = our_policy_text(["MX.ours.example."], "enforce", 86400)
    policy = parse_policy(text)
    assert (policy.mode, policy.mx, policy.max_age) == ("enforce", ("mx.ours.example",), 86400)
    record = our_txt_record("ours.example", text)
    assert record.startswith("_mta-sts.ours.example. IN TXT ")
    txt = record.split("TXT ", 1)[1].strip('"')
    assert parse_txt([txt])
    assert our_txt_record("ours.example", our_policy_text(["other.example"])) != record

"""``mailstack queue`` through the real command line (docs/behaviour.md §6, §10): list and
filters, show with the attempt history, retry, delete (needs --yes, no report), bounce
(the RFC 3464 report lands in the hosted sender's INBOX); errors and exit codes."""

from __future__ import annotations

import time

from mailstack.store import Store
from mailstack.store.queue import Outcome

from .conftest import Cli

MSG = b"From: anna@example.com\r\nTo: x@remote.example\r\nSubject: queued\r\n\r\nhi\r\n"


async def setup(store: Store) -> list[int]:
    await store.add_domain("example.com", "standard")
    await store.add_address("anna", "example.com", password_hash="x")
    blob = await store.put_blob(MSG)
    ids = await store.enqueue("anna@example.com", ["x@remote.example", "y@other.example"],
                              blob, len(MSG))
    ids += await store.enqueue("", ["z@remote.example"], blob, len(MSG))
    (row,) = [r for r in await store.claim_due("test", 60, 10) if r.id == ids[0]] or [None]
    await store.release("test", [i for i in ids if i != ids[0]])
    assert row is not None
    await store.finish("test", [Outcome(row.id, "queued", {
        "at": time.time(), "host": "mx.remote.example", "tls": "TLSv1.3",
        "reply": "451 4.3.0 greylisted"}, error="451 4.3.0 greylisted", status="4.3.0",
        next_attempt_at=time.time() + 3600)])
    return ids


def test_queue_commands(cli_both: Cli) -> None:
    cli = cli_both
    ids = cli.query(setup)
    r = cli.ok("queue", "list")
    assert "x@remote.example" in r.out and "y@other.example" in r.out
    assert "451 4.3.0 greylisted" in r.out and "3 waiting" in r.out
    r = cli.ok("queue", "list", "--domain", "other.example")
    assert "y@other.example" in r.out and "x@remote.example" not in r.out
    r = cli.ok("queue", "list", "--failed")
    assert "x@remote.example" in r.out and "y@other.example" not in r.out

    r = cli.ok("queue", "show", str(ids[0]))
    assert "mx.remote.example" in r.out and "TLSv1.3" in r.out
    assert "451 4.3.0 greylisted" in r.out and "attempts:    1" in r.out

    cli.ok("queue", "retry", str(ids[0]))
    row = cli.query(lambda s: s.queue_row_by_id(ids[0]))
    assert row is not None and row.next_attempt_at <= time.time()
    assert "3 waiting entries" in cli.ok("queue", "retry", "--all").out

    r = cli("queue", "delete", str(ids[1]))
    assert r.code == 2 and "--yes" in r.err
    assert cli.query(lambda s: s.queue_row_by_id(ids[1])) is not None
    cli.ok("queue", "delete", str(ids[1]), "--yes")
    assert cli.query(lambda s: s.queue_row_by_id(ids[1])) is None

    r = cli.ok("queue", "bounce", str(ids[0]))
    assert "report sent to <anna@example.com>" in r.out
    row = cli.query(lambda s: s.queue_row_by_id(ids[0]))
    assert row is not None and row.state == "failed" and row.report_action == ""

    async def inbox(store: Store) -> list[bytes]:
        addr = await store.get_address("anna@example.com")
        assert addr is not None
        folder = await store.get_folder(addr.id, "INBOX")
        assert folder is not None
        return [await store.message_bytes(m) for m in await store.list_messages(folder.id)]

    (report,) = cli.query(inbox)
    assert b"report-type=delivery-status" in report
    assert b"Final-Recipient: rfc822; x@remote.example" in report
    assert b"Action: failed" in report and b"Subject: queued" in report

    r = cli.ok("queue", "bounce", str(ids[2]))  # empty return path: no report
    assert "no report" in r.out
    assert len(cli.query(inbox)) == 1


def test_queue_errors(cli_both: Cli) -> None:
    cli = cli_both
    assert "queue is empty" in cli.ok("queue", "list").out
    for args in (("show", "999"), ("bounce", "999"), ("delete", "999", "--yes"),
                 ("retry", "999")):
        r = cli("queue", *args)
        assert r.code == 1 and "no queue entry 999" in r.err, args
    r = cli("queue", "show", "abc")
    assert r.code == 1 and "not a number" in r.err
    r = cli("queue", "retry")
    assert r.code == 2 and "--all" in r.err
    ids = cli.query(setup)
    cli.ok("queue", "bounce", str(ids[0]))
    r = cli("queue", "bounce", str(ids[0]))
    assert r.code == 1 and "failed, not waiting" in r.err

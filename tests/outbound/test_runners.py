"""Several runners on one database (docs/behaviour.md §6, scale-out): claims with a lease
(PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite ``BEGIN IMMEDIATE``) never hand one row
to two runners; a lease whose holder died is taken over; the runner wakes at once
when mail is queued in its process."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from mailstack.store.queue import Outcome

from .conftest import FakeClock, Outbound, message, start_sink

Factory = Callable[..., Awaitable[Outbound]]


async def test_two_runners_never_send_a_row_twice(outbound_factory: Factory) -> None:
    sink = await start_sink()
    transport = {"remote.example": f"127.0.0.1:{sink.port}"}
    clock = FakeClock()
    one = await outbound_factory(transport, clock=clock, batch_size=7)
    two = await outbound_factory(transport, clock=clock, batch_size=7)
    for n in range(40):
        blob = await one.store.put_blob(message("anna@example.com", "x@remote.example",
                                                f"n{n}"))
        await one.store.enqueue("anna@example.com", [f"r{n}@remote.example"], blob, 100)
    await asyncio.gather(one.run(), two.run(), one.run(), two.run())
    got = Counter(r for m in sink.messages for r in m.rcpt_tos)
    assert sorted(got) == sorted(f"r{n}@remote.example" for n in range(40))
    assert set(got.values()) == {1}
    assert {r.state for r in await one.rows()} == {"delivered"}
    assert one.app.runner is not None and two.app.runner is not None
    total = one.app.runner.counters["delivered"] + two.app.runner.counters["delivered"]
    assert total == 40


async def test_expired_lease_is_taken_over(outbound_factory: Factory) -> None:
    sink = await start_sink()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"},
                                lease_seconds=600.0)
    assert ob.app.runner is not None
    await ob.app.runner.stop()  # only the passes below (the loop would claim first)
    blob = await ob.store.put_blob(message("anna@example.com", "x@remote.example"))
    (row_id,) = await ob.store.enqueue("anna@example.com", ["x@remote.example"], blob, 100)
    # a node claims the row and dies (never finishes)
    (claimed,) = await ob.store.claim_due("dead-node", 600.0, 10)
    assert claimed.id == row_id and claimed.claimed_by == "dead-node"
    await ob.run()
    assert sink.messages == []  # its lease still holds
    assert await ob.store.next_due() == ob.clock.now + 600  # due when the lease ends
    ob.clock.now += 601
    await ob.run()
    assert len(sink.messages) == 1
    (row,) = await ob.rows()
    assert row.state == "delivered" and row.claimed_by == ""
    # the dead node coming back late changes nothing
    late = Outcome(row_id, "failed", {"at": ob.clock.now, "error": "late"}, error="late")
    assert await ob.store.finish("dead-node", [late]) == 0
    assert (await ob.rows())[0].state == "delivered"


async def test_runner_wakes_when_mail_is_queued(outbound_factory: Factory) -> None:
    sink = await start_sink()
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{sink.port}"},
                                poll_interval_seconds=3600.0)
    await asyncio.sleep(0.1)  # the background loop did its first pass and now waits
    await ob.submit("anna@example.com", ["x@remote.example"],
                    message("anna@example.com", "x@remote.example"))
    for _ in range(200):  # no run_once here: the background runner must do it
        if sink.messages:
            break
        await asyncio.sleep(0.05)
    assert len(sink.messages) == 1


async def test_shutdown_releases_claimed_rows(outbound_factory: Factory) -> None:
    async def stall(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    from .conftest import start_script
    server, port = await start_script(stall)
    ob = await outbound_factory({"remote.example": f"127.0.0.1:{port}"},
                                poll_interval_seconds=3600.0)
    await ob.submit("anna@example.com", ["x@remote.example"],
                    message("anna@example.com", "x@remote.example"))
    for _ in range(100):
        rows = await ob.rows()
        if rows and rows[0].claimed_by:
            break
        await asyncio.sleep(0.05)
    assert rows[0].claimed_by  # the runner is waiting for the greeting
    store = ob.store
    runner = ob.app.runner
    assert runner is not None
    await runner.stop()
    (row,) = await store.queue_rows()
    assert row.state == "queued" and row.claimed_by == "" and row.attempts == 0
    server.close()

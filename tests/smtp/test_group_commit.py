"""Group commit of SMTP acceptance (store/smtp.py) and grouped blob directory fsyncs
(store/blobs.py): concurrent deliveries share one transaction, every member is stored,
and one bad member costs only its own 451 (the group falls back to one transaction per
message). RFC 5321 §6.1: a 250 still means "everything of this message is durable".

The store-level tests start their calls with ``asyncio.gather``: every call is queued
before the flusher task runs, so they form one group without any timing assumption.
The wire-level tests drive the real listeners with aiosmtplib; there grouping depends
on timing, so they assert only what must hold either way.
"""

from __future__ import annotations

import asyncio
import errno
import os
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import delete

from mailstack.store import NotFound, Store, Unavailable, schema
from mailstack.store import blobs as blobs_module

from .conftest import PASSWORD, Env, message


async def _hosted(store: Store, *locals_: str) -> dict[str, Any]:
    if await store.get_domain("example.com") is None:
        await store.add_domain("example.com", "standard")
    return {lp: await store.add_address(lp, "example.com") for lp in locals_}


async def _inbox(store: Store, email: str) -> list[Any]:
    addr = await store.get_address(email)
    assert addr is not None
    folder = await store.get_folder(addr.id, "INBOX")
    assert folder is not None
    return await store.list_messages(folder.id)


async def _accept_together(store: Store, *calls: tuple[bytes, list[str], dict[str, Any]]
                           ) -> list[Any]:
    """Write the blobs, then start every ``accept_message`` at once (one group);
    returns each call's copies or its exception."""
    blob_ids = await asyncio.gather(*(store.put_blob(body) for body, _, _ in calls))
    return await asyncio.gather(*(
        store.accept_message(
            blob_id, len(body), sender="s@remote.example", remote=kw.pop("remote", []),
            inboxes=keys, inbox_prefix=lambda email: f"Delivered-To: {email}\r\n".encode(),
            **kw)
        for blob_id, (body, keys, kw) in zip(blob_ids, calls, strict=True)),
        return_exceptions=True)


async def test_concurrent_accepts_share_one_commit(store: Store) -> None:
    await _hosted(store, "anna", "bob")
    before = store.accept_stats.groups
    keys = [["anna@example.com"], ["bob@example.com"], ["anna@example.com"],
            ["anna@example.com", "bob@example.com"], ["Anna@example.com"]]
    bodies = [f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode() for i in range(len(keys))]
    # Blobs first, so the accept calls below are queued in the same loop iteration.
    blob_ids = await asyncio.gather(*(store.put_blob(b) for b in bodies))
    results = await asyncio.gather(*(
        store.accept_message(bid, len(b), sender="", remote=[], inboxes=k,
                             inbox_prefix=lambda e: f"Delivered-To: {e}\r\n".encode())
        for bid, b, k in zip(blob_ids, bodies, keys, strict=True)))
    assert store.accept_stats.groups == before + 1  # ONE transaction for all five
    assert store.accept_stats.sizes[-1] == 5
    assert [len(r) for r in results] == [1, 1, 1, 2, 1]
    anna = await _inbox(store, "anna@example.com")
    bob = await _inbox(store, "bob@example.com")
    # UIDs in queue order, each copy its own UID and MODSEQ (as if committed alone).
    assert [m.uid for m in anna] == [1, 2, 3, 4]
    assert len({m.modseq for m in anna}) == 4
    assert [m.blob_id for m in anna] == [blob_ids[i] for i in (0, 2, 3, 4)]
    assert [m.blob_id for m in bob] == [blob_ids[1], blob_ids[3]]
    assert [m.id for m in anna] == sorted(r.id for i in (0, 2, 3, 4) for r in results[i]
                                          if r.folder_id == anna[0].folder_id)
    data = await store.message_bytes(anna[0])
    assert data.startswith(b"Delivered-To: anna@example.com\r\nSubject: m0")


async def test_failing_member_falls_back_and_costs_only_itself(store: Store) -> None:
    hosted = await _hosted(store, "anna", "gone")
    gone = hosted["gone"]
    await store.remove_address(gone.id)  # its send-log row now violates a foreign key
    before_fallbacks = store.accept_stats.fallbacks
    outcomes = await _accept_together(
        store,
        (b"Subject: one\r\n\r\n1\r\n", ["anna@example.com"], {}),
        (b"Subject: bad\r\n\r\nx\r\n", ["anna@example.com"],
         {"sender_address_id": gone.id, "counted_recipients": 1,
          "remote": ["x@remote.example"]}),
        (b"Subject: two\r\n\r\n2\r\n", ["anna@example.com"], {}))
    assert isinstance(outcomes[1], Unavailable)
    assert isinstance(outcomes[0], list) and isinstance(outcomes[2], list)
    assert store.accept_stats.fallbacks == before_fallbacks + 1
    # Nothing of the bad message is stored: no copy, no queue row, no send count.
    stored = [await store.message_bytes(m) for m in await _inbox(store, "anna@example.com")]
    assert [s.split(b"\r\n")[1] for s in stored] == [b"Subject: one", b"Subject: two"]
    assert await store.list_queue() == []
    assert await store.sends_since(gone.id, 0) == []


async def test_member_whose_mailboxes_vanished_stores_nothing(store: Store) -> None:
    await _hosted(store, "anna")
    before_fallbacks = store.accept_stats.fallbacks
    before_groups = store.accept_stats.groups
    outcomes = await _accept_together(
        store,
        (b"Subject: ok\r\n\r\n1\r\n", ["anna@example.com"], {}),
        (b"Subject: lost\r\n\r\n2\r\n", ["nobody@example.com"], {}),
        (b"Subject: both\r\n\r\n3\r\n", ["nobody@example.com", "anna@example.com"], {}))
    assert isinstance(outcomes[1], NotFound)
    assert [len(o) for o in (outcomes[0], outcomes[2])] == [1, 1]
    assert store.accept_stats.fallbacks == before_fallbacks  # not a group failure
    assert store.accept_stats.groups == before_groups + 1
    assert len(await _inbox(store, "anna@example.com")) == 2


async def test_remote_and_send_count_written_with_the_group(store: Store) -> None:
    hosted = await _hosted(store, "anna", "sender")
    sender_id = hosted["sender"].id
    outcomes = await _accept_together(store, *(
        (f"Subject: r{i}\r\n\r\n{i}\r\n".encode(), ["anna@example.com"],
         {"remote": [f"r{i}@remote.example"], "sender_address_id": sender_id,
          "counted_recipients": 2, "at": 1000.0 + i})
        for i in range(3)))
    assert all(isinstance(o, list) for o in outcomes)
    assert sorted(q.recipient for q in await store.list_queue()) == [
        "r0@remote.example", "r1@remote.example", "r2@remote.example"]
    assert await store.sends_since(sender_id, 0) == [(1000.0, 2), (1001.0, 2), (1002.0, 2)]
    assert len(await _inbox(store, "anna@example.com")) == 3


async def test_concurrent_blob_writes_all_durable(store: Store) -> None:
    datas = [os.urandom(64) + bytes([i]) for i in range(40)]
    ids = await asyncio.gather(*(store.put_blob(d) for d in datas))
    assert len(set(ids)) == 40
    for blob_id, d in zip(ids, datas, strict=True):
        assert store.blobs.path_of(blob_id).read_bytes() == d
    assert list(store.blobs.tmp.iterdir()) == []  # every temp file renamed into place
    # Identical bytes: the same id, nothing written twice.
    again = await asyncio.gather(store.put_blob(datas[0]), store.put_blob(datas[0]))
    assert again == [ids[0], ids[0]]
    assert list(store.blobs.tmp.iterdir()) == []


async def test_directory_fsync_failure_fails_the_blobs_it_covers(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(blobs_module, "_fsync_dir", broken)
    results = await asyncio.gather(*(store.put_blob(os.urandom(32)) for _ in range(5)),
                                   return_exceptions=True)
    # Never reported durable: the caller answers 451 and references nothing.
    assert all(isinstance(r, Unavailable) for r in results)


# --- over the wire ----------------------------------------------------------------------


async def _mx_send(env: Env, to: str, subject: str) -> tuple[int, str]:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=env.port("smtp"),
                               start_tls=False, local_hostname="client.example",
                               timeout=30) as c:
        await c.mail("x@remote.example")
        await c.rcpt(to)
        reply = await c.data(message("x@remote.example", to, subject))
        return reply.code, reply.message


async def test_concurrent_sessions_all_stored_once(env: Env) -> None:
    targets = ["anna@example.com", "bob@example.com", "carl@example.com"] * 4
    replies = await asyncio.gather(*(
        _mx_send(env, to, f"c{i}") for i, to in enumerate(targets)))
    assert all(code == 250 for code, _ in replies)
    assert await env.total_stored() == len(targets)
    for who in ("anna@example.com", "bob@example.com", "carl@example.com"):
        subjects = sorted(m.split(b"Subject: ")[1].split(b"\r\n")[0]
                          for m in await env.inbox(who))
        expected = sorted(f"c{i}".encode() for i, to in enumerate(targets) if to == who)
        assert subjects == expected  # each exactly once


async def test_bad_session_gets_451_while_concurrent_ones_are_stored(env: Env) -> None:
    # carl logs in, then his address is removed: his message's send count can no
    # longer be written (foreign key), so his transaction fails whether or not it
    # shares a group with the others. The others must all be stored. The row is
    # deleted behind the store's back (as by another node whose notice has not
    # arrived yet): a notice would end carl's session at once (421 4.7.0).
    carl = await env.store.get_address("carl@example.com")
    c = aiosmtplib.SMTP(hostname="127.0.0.1", port=env.port("submission"),
                        start_tls=True, tls_context=env.client_ssl, timeout=30)
    await c.connect()
    await c.login("carl@example.com", PASSWORD)
    await c.mail("carl@example.com")
    await c.rcpt("anna@example.com")
    async with env.store.engine.begin() as conn:
        await conn.execute(delete(schema.addresses).where(schema.addresses.c.id == carl.id))

    async def carl_data() -> Any:
        with pytest.raises(aiosmtplib.SMTPDataError) as exc:
            await c.data(message("carl@example.com", "anna@example.com", "from carl"))
        return exc.value

    results = await asyncio.gather(
        carl_data(), *(_mx_send(env, "bob@example.com", f"ok{i}") for i in range(5)))
    refused = results[0]
    assert refused.code == 451 and "4.3.0" in refused.message
    assert all(code == 250 for code, _ in results[1:])
    assert len(await env.inbox("bob@example.com")) == 5
    assert await env.inbox("anna@example.com") == []  # nothing of carl's message
    assert await env.total_stored() == 5
    c.close()


async def test_blob_directory_fsync_failure_answers_451(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(blobs_module, "_fsync_dir", broken)
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await _mx_send(env, "anna@example.com", "lost")
    assert exc.value.code == 451 and "4.3.0" in exc.value.message
    monkeypatch.undo()
    assert await env.total_stored() == 0
    assert (await _mx_send(env, "anna@example.com", "later"))[0] == 250
    assert await env.total_stored() == 1


async def test_group_updates_every_quota_counter_in_one_statement(store: Store) -> None:
    """RFC 9208 storage counters: a group to several addresses adds each one's octets
    and messages (one upsert executemany), and ``rcpt_facts`` reads the counter with
    the routing facts (the RCPT quota check needs no read of its own)."""
    hosted = await _hosted(store, "anna", "bob", "carl")
    bodies = [f"Subject: q{i}\r\n\r\n{'x' * (100 * i)}\r\n".encode() for i in range(4)]
    keys = [["anna@example.com"], ["bob@example.com"], ["anna@example.com", "bob@example.com"],
            ["anna@example.com"]]
    results = await _accept_together(store, *((b, k, {}) for b, k in zip(bodies, keys,
                                                                          strict=True)))
    assert all(isinstance(r, list) for r in results), results
    for lp in ("anna", "bob", "carl"):
        msgs = await _inbox(store, f"{lp}@example.com")
        expected = (sum(m.size for m in msgs), len(msgs))
        assert await store.quota_usage(hosted[lp].id) == expected
        domain, address, usage = await store.rcpt_facts("example.com", f"{lp}@example.com")
        assert domain is not None and address is not None and address.id == hosted[lp].id
        assert usage == expected
    assert (await store.quota_usage(hosted["anna"].id))[1] == 3
    assert await store.rcpt_facts("example.com", "nobody@example.com") == (
        await store.get_domain("example.com"), None, (0, 0))
    assert await store.rcpt_facts("elsewhere.example", "x@elsewhere.example") == (
        None, None, (0, 0))
